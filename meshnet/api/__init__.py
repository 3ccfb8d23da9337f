"""The daemon's HTTP/JSON API on a unix socket (hypercorn + a small ASGI app), and its client.

- ``server``   serves the app on the daemon's unix socket (and optionally on loopback HTTP)
- ``http_gate`` what HTTP clients may do: GET of metrics, status and report, for our Host only
- ``asgi``     ASGI plumbing shared with the Docker plugin: lifespan, serving on a socket or TCP
- ``app``      the routes: each parses a request, calls one method of the node, formats the answer
- ``observe``  the read-only views: `/report`, `/metrics`, `/stream`, `/events`
- ``report``   the whole state of one router as one JSON-ready value
- ``events``   changes between two reports, as events (`/events`, the TUI's log)
- ``stream``   the streaming endpoints: msgpack snapshots and JSON lines
- ``metrics``  Prometheus metrics, read from the services' statistics at scrape time
- ``client``   the CLI's side: JSON over HTTP on the daemon's unix socket

An adapter over ``meshnet.node`` and the services' statistics; the CLI, the TUI and the lab are
its clients (the CNI plugin has a small client of its own in ``meshnet.integrations.cni``).
"""
