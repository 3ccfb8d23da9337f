"""Simulated hosts in network namespaces: `meshnet lab`, used by people to try meshnet on one
machine and by our own tests.

- ``topology``  what a lab looks like before it is built: hosts, links, containers (pure)
- ``record``    what a lab is made of, on disk: its journal and its record (lab.json)
- ``lab``       build, inspect, change and tear down a lab; link loss and rates
- ``dns``       the lab containers' resolv.conf, pointing at their host's router
- ``docker``    one dockerd per host (`meshnet lab up --docker`) and containers through it

A lab starts real routers in its hosts (unless ``--no-daemons``) and talks to them through the API
(``meshnet.api.client``); its kernel work goes through ``meshnet.dataplane.kernel``. The commands
are in ``meshnet.cli.lab``.
"""
