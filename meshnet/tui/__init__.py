"""`meshnet tui`: a Textual app in its own process, reading snapshots from the daemon's API.

model.py turns snapshots into rows, rates and events (no Textual); source.py fetches them (or
plays a recording); app.py draws them.
"""
