"""The mesh: peer identity, handshake, framing, topology gossip, routes and gossip channels.

- ``identity``          who a peer is: its persistent 48-bit name, nickname and per-start uid
- ``handshake``         the control connection's handshake: version, who the peer is, SPAKE2
                        and X25519 keys
- ``throttle``          per-source token buckets and log throttles (failed password handshakes)
- ``framing``           length-prefixed frames on the TCP control connection
- ``messages``          the messages peers exchange over an established connection
- ``topology``          the topology store: one versioned entry per peer, its connections
- ``payload``           gossip payloads: msgpack arrays of items encoded once, validated once
- ``routes``            routes: a cache derived from the topology, never gossiped
- ``channel``           gossip channels (``Gossiper``, ``GossipOutbox``): how IPAM, DNS and
                        fastdp plug their mergeable state into the mesh
- ``mesh``              the router core: topology gossip, routes and channels, no I/O
- ``connection_maker``  which peers to dial, and when: a reconciler with backoff
- ``saved_targets``     what `connect` and `forget` said, kept for the next start (``--resume``)
- ``events``            what the router publishes (routes, live links) and hears back (paths)
- ``router``            the trio shell: listens, dials, runs connections, feeds the cores
- ``simulation``        a whole mesh of cores in memory on a fake clock (tests, benchmarks)

Everything here except ``router`` is a pure core: bytes and events in, bytes and actions out.
IPAM, DNS, fastdp and the data plane build on it, never the other way round.
"""
