"""meshnet: a container overlay network of router daemons that gossip, route and encrypt.

Packages, roughly from the bottom up:

- ``gossip``        the mesh: peer identity, handshake, topology, routes, gossip channels, router
- ``ipam``          address management: the ring of ranges, agreeing on it, allocations
- ``dns``           embedded DNS: gossiped records, the server and its firewall
- ``dataplane``     frames between containers: kernel plumbing, the sleeve (UDP), fastdp (VXLAN)
- ``node``          the application layer: attach, expose, reset... each a pipeline over services
- ``api``           the daemon's HTTP/JSON API on a unix socket, and the CLI's client
- ``integrations``  Docker and CNI: adapters over the node and the API
- ``cli``           the `meshnet` command
- ``tui``           `meshnet tui`: a Textual app reading the API
- ``lab``           simulated hosts in network namespaces (`meshnet lab`, and the tests)

Modules:

- ``daemon``        the router daemon: one trio nursery tree that starts every service
- ``config``        the daemon's settings, one frozen dataclass
- ``constants``     names and numbers everyone agrees on (bridge, interface names, ports)
- ``errors``        errors that say whose fault they are: the user's or a remote peer's
- ``statefile``     state files replaced atomically and durably
- ``logfile``       the background router's log in the state directory, rotated and capped
- ``beats``         one clock beat for periodic work, so an idle router wakes once per beat
- ``__main__``      `python -m meshnet`: the CLI
- ``router_process``  what `meshnet launch --foreground` becomes: a fresh interpreter holding
                    only the daemon (the CLI hands it the config)

The daemon starts the services (gossip's router, IPAM, DNS, the data plane) and the node over
them; the API and the Docker integration adapt the node. The CLI, the TUI, the CNI plugin and the
lab reach a running daemon only through the API's unix socket.
"""

__version__ = "0.1.0"
