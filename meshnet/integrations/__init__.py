"""Container runtimes joining meshnet.

- ``docker/``  Docker: attach by id or name, the event watcher, the network and IPAM plugin
- ``cni/``     CNI: the `meshnet-cni` plugin executable

Both are thin adapters: Docker's runs inside the daemon over ``meshnet.node``; the CNI plugin is
a separate executable that asks the daemon through its API socket.
"""
