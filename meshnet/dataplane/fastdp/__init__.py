"""The fast datapath: kernel VXLAN (UDP 6784) to directly reachable peers.

``core.py`` decides, with no I/O: probes and their liveness, advertisements, which entries the
kernel should hold. ``service.py`` is the trio shell that feeds it and programs the kernel.
"""
