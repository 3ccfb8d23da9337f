"""Kernel plumbing: the only code that talks to the kernel's netlink, nftables, TAP devices, UDP
sockets and container namespaces.

- ``netlink``   namespaces, links, addresses, routes, qdiscs, FDB; the one module importing pyroute2
- ``nftables``  meshnet's two nftables tables (bridge isolation, the ramps) as scripts, applied
- ``vxlan_filter`` the table letting VXLAN in only from fastdp's peers (a counter of the rest)
- ``nft``       the one runner of the nft binary (also for ``meshnet.dns.firewall`` and the lab)
- ``tap``       the sleeve's TAP device, with virtio-net headers (TCP super-frames)
- ``udp``       the sleeve's UDP socket: segmented sends, GRO receives, path MTU
- ``attach``    containers on the bridge: a veth per container, its addresses inside
- ``namespaces`` which network namespace is which: cookies never reused, every one in sight

Small synchronous typed functions: what to ask the kernel for is decided above them, by the
services that call them in worker threads (``meshnet.dataplane.service``, ``fastdp``,
``meshnet.node``, ``meshnet.dns``, the Docker integration, the lab) or, for the TAP and the UDP
socket, in the sleeve's packet threads.
"""
