"""IP address management: the pure cores that give every container a unique address.

The allocation range is divided among the peers as a ring CRDT (``ring.py``): only a range's
owner changes it, merges keep the newest token, and inconsistent or differently seeded updates
are refused with ``RingMergeError``. Who divides the range first is agreed lazily, by Paxos
carried over gossip (``consensus.py``). Each peer books its own containers' addresses inside the
ranges it owns (``space.py``), and ``allocator.py`` ties these together as the ``ipam`` gossip
channel's ``Gossiper``: events and bytes in, actions and bytes out, ``now`` and randomness
passed in; the trio shell persists ``to_state()`` and moves the messages.
"""
