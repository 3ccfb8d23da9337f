"""The sleeve: container frames carried over UDP 6783 between peers, relayed and sealed.

Where things are, from the wire up:

- ``header``      the 32-byte datagram header; sealing and opening one datagram or a GRO run
- ``seal``        AEGIS-256 straight through libsodium (the per-datagram crypto)
- ``run_cipher``  a GRO run or a super-frame's datagrams sealed and opened in place (numpy)
- ``replay``      the per-hop replay window over sequence numbers
- ``batcher``     FRAMES bodies: small frames packed per datagram, and split again
- ``segments``    SEGMENT bodies: a TCP super-frame cut at the kernel's segment boundaries
- ``reassembly``  SEGMENT bodies back into super-frames (or the runs that did arrive)
- ``control``     HEARTBEAT / PROBE / PROBE_ACK bodies
- ``wire``        the public names of all the above, for the control plane and tools
- ``vnet``        virtio-net headers, TCP segmentation plans, ICMP "too big"
- ``switch``      the overlay's MAC-learning Ethernet switch (per frame, stateful, pure)
- ``forwarding``  THE forwarding decision: (snapshot, captured frame or received header) ->
                  operations (send, deliver, relay, control, drop); pure, property-tested
- ``superframes`` the bulk path: a super-frame as gathered GSO sends, a GRO run back, no copies
                  (it and ``run_cipher`` use numpy: loaded once bulk traffic crosses the sleeve)
- ``forwarder``   the packet thread (TAP -> UDP and UDP -> TAP): it only executes operations
- ``path``        UDP path liveness and path-MTU search per neighbour (pure)

``meshnet.dataplane.service`` starts the forwarder and hands it snapshots built from the router's
routes and links; the TAP and the UDP socket themselves are in ``meshnet.dataplane.kernel``.
"""
