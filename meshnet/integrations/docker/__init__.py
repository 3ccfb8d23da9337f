"""Docker containers on the overlay: the Engine API client (``engine``), what a container's life
means for meshnet (``lifecycle``), the daemon's service that attaches by id or name and watches
events (``service``), the libnetwork network and IPAM drivers (``netdriver``, ``ipamdriver``)
served as the ``meshnet`` plugin (``plugin``), its settings and launch flags (``settings``,
``options``), and `meshnet run` / `meshnet dns-args` (``commands``)."""
