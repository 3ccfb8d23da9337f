"""meshnet: a container overlay network of router daemons that gossip, route and encrypt."""

__version__ = "0.1.0"
