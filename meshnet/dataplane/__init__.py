"""The data plane: carries the containers' frames between hosts.

- ``service``  the trio shell: the bridge, the sleeve's TAP and UDP socket, the forwarder
               threads, UDP path liveness and attaching containers
- ``kernel/``  kernel plumbing: netlink (the one pyroute2 importer), nftables, TAP, UDP, attach
- ``sleeve/``  frames over UDP between peers, relayed and sealed; the forwarding decision
- ``fastdp/``  kernel VXLAN to directly reachable peers; frames that never enter Python
- ``underlay`` underlay addresses of both families as the dual-stack UDP socket spells them

It follows the router (``meshnet.gossip``): routes and live links come in as immutable values,
path verdicts go back. The node (``meshnet.node``) attaches containers through the service.
"""
