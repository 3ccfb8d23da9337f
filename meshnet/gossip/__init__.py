"""The mesh: peer identity, handshake, framing, topology gossip, routes and gossip channels.

Everything here except the trio shells is a pure core: bytes and events in, bytes and actions out.
"""
