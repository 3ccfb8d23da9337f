"""The daemon's HTTP/JSON API on a unix socket (hypercorn + a small ASGI app), and its client."""
