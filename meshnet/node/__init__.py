"""The application layer: the daemon's use cases, each one pipeline over the services.

``Node`` (node.py) owns attach, detach, expose, hide, reset and rmpeer, and the joins of Docker
and CNI: IPAM, then the data plane, then isolation, then DNS, with every completed step undone in
reverse when a later one fails (pipeline.py). The ramps (ramps.py: expose/hide, masquerade and
isolation between subnets) live here too: they are a use case's kernel side, not the data
plane's. The API, the Docker plugin and event watcher and the CNI endpoint are thin adapters that
parse their input, call one ``Node`` method and format what it returns.
"""
