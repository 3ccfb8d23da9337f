"""The CNI plugin `meshnet-cni`: the protocol without I/O (spec), the daemon's API over its
unix socket (daemon) and the executable (plugin)."""
