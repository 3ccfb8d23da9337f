"""Docker containers on the overlay: the Engine API client (``engine``), what a container's life
means for meshnet (``lifecycle``), the daemon's service that attaches by id or name and watches
events (``service``), the libnetwork network and IPAM drivers (``netdriver``, ``ipamdriver``)
served as the ``meshnet`` plugin (``plugin``), its settings (``settings``) and what `meshnet run`
passes to `docker run` (``runargs``); the commands themselves are in ``meshnet.cli.docker``."""
