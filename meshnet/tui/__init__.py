"""`meshnet tui`: a Textual app in its own process, reading snapshots from the daemon's API.

- ``source``  fetches report snapshots from the daemon's `/stream` (or plays a recording)
- ``model``   turns snapshots into rows, rates and events (no Textual)
- ``app``     draws them, and retries when the source fails

It knows the daemon only through ``meshnet.api`` (the stream, the report's shape).
"""
