"""The data plane: netlink (the only pyroute2 importer), bridge, attach, switch, sleeve, fastdp."""
