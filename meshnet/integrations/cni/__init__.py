"""The CNI plugin `meshnet-cni`, an executable the container runtime runs per container.

- ``spec``    the CNI protocol without I/O: environment, network configuration, results, errors
- ``daemon``  the daemon's API over its unix socket, with nothing but the standard library
- ``plugin``  the executable: parses, asks the daemon, formats the result

It imports nothing else of meshnet (no trio, pyroute2 or httpx), so it starts fast; the daemon's
API (``meshnet.api``) and the node (``meshnet.node``) do the work.
"""
