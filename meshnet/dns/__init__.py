"""Embedded DNS: every container resolves every other container by name, on every host.

- ``records``   the record store, a CRDT gossiped on the ``dns`` channel (a ``Gossiper``): each
                peer states its own containers' names, removals travel as tombstones, and a
                departed peer's records are hidden until it returns
- ``answer``    a query's bytes to a decision: an authoritative reply for the domain, a query to
                forward upstream, or nothing (with SERVFAIL and UDP truncation helpers)
- ``server``    the server's trio shell: UDP and TCP sockets, upstream forwarding (dnspython)
- ``service``   the daemon's DNS subsystem: records, persistence, the listen address, the API
- ``firewall``  the nftables table that keeps the listen address for DNS from the overlay only
- ``settings``  the settings and their pure rules (names, upstreams, resolv.conf)

``records`` and ``answer`` are pure cores: no sockets, clocks or randomness of their own; the
shells pass in ``now`` and an ``rng`` and own all I/O. The service rides on the router's gossip
(``meshnet.gossip``) and puts its address on the bridge through ``meshnet.dataplane.kernel``.
"""
