"""The fast datapath: kernel VXLAN (UDP 6784) to directly reachable peers.

- ``core``     decides, with no I/O: probes and their liveness, advertisements, which entries the
               kernel should hold
- ``service``  the trio shell that feeds it (router, bridge, probes, the ``fastdp`` gossip
               channel) and programs the kernel through ``meshnet.dataplane.kernel.netlink``

Started by the data plane's service, which tells the sleeve which neighbours to skip.
"""
