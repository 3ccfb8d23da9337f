"""Container runtimes joining meshnet: Docker (attach by id, network and IPAM plugin) and CNI
(the `meshnet-cni` plugin executable)."""
