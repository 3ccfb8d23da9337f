"""Embedded DNS: every container resolves every other container by name, on every host.

``records`` is the record store, a CRDT gossiped on the ``dns`` channel (a ``Gossiper``): each
peer states its own containers' names and addresses, removals travel as tombstones, and a
departed peer's records are hidden until it returns. ``answer`` turns a query's bytes into a
decision — an authoritative reply for the domain (A, AAAA, PTR, NXDOMAIN, NODATA, FORMERR), a
query to forward upstream, or nothing — with the helpers the server needs (SERVFAIL, UDP
truncation). Both are pure cores: no sockets, clocks or randomness of their own; the trio
server shell passes in ``now`` and an ``rng`` and owns all I/O.

The shells: ``server`` (UDP and TCP sockets, upstream forwarding with dnspython on trio),
``service`` (the daemon's DNS subsystem: records, persistence, the listen address, the API),
``firewall`` (the nftables table that keeps the listen address for DNS from the overlay only).
``settings`` and ``options`` hold the settings, their pure rules and the launch flags.
"""
