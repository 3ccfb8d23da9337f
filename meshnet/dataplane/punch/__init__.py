"""Hole punching: direct UDP paths between peers behind NATs (issue 19).

- ``core``     decides, with no I/O: reflexive addresses, offers and answers, keys, back-off
- ``service``  the trio shell: the ``punch`` gossip channel, timers, and the punched paths it
               hands to the data plane's service (which runs them as ordinary UDP paths)
"""
