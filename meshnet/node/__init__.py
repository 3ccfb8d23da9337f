"""The application layer: the daemon's use cases, each one pipeline over the services.

- ``node``         ``Node``: attach, detach, expose, hide, reset, rmpeer and the joins of Docker
                   and CNI: IPAM, then the data plane, then isolation, then DNS
- ``pipeline``     steps undone in reverse when a later one fails: all or nothing
- ``specs``        the user's address arguments: one grammar for attach, run, expose and hide
- ``addresses``    address specs to addresses, through IPAM, keyed by the container's namespace
- ``namespace_owners`` IPAM's keys for namespaces (their cookies), and which ones outlived
                   their namespace (pure)
- ``cleanup``      `reset --force` after a dead router: its links, tables and state files
- ``ramps``        on and off ramps between overlay and host, and isolation between subnets
- ``ramps_state``  what the ramps record and decide, and the nftables script that asks for (pure)

The ramps live here: they are a use case's kernel side, not the data plane's. The API
(``meshnet.api``, whose CNI endpoint the `meshnet-cni` plugin calls) and the Docker integration
are thin adapters that parse their input, call one ``Node`` method and format what it returns.
"""
