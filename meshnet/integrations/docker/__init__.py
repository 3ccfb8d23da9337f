"""Docker containers on the overlay.

- ``objects``     what the Engine answers (containers, networks, events), parsed (pure)
- ``engine``      the Docker Engine API client (httpx), imported only when Docker is on
- ``lifecycle``   what a container's life means for meshnet: pure decisions
- ``service``     the daemon's trio shell: attach by id or name, the event watcher, the plugin
- ``netdriver``   libnetwork's remote network driver (``meshnet``)
- ``ipamdriver``  libnetwork's remote IPAM driver, over meshnet's IPAM
- ``plugin``      the plugin endpoint serving both drivers on ``<plugin dir>/meshnet.sock``
- ``settings``    the integration's settings, and where the Engine API is
- ``runargs``     what `meshnet run` passes to `docker run` (pure)

An adapter over ``meshnet.node``; the commands themselves are in ``meshnet.cli.docker``.
"""
