"""IP address management: the pure cores that give every container a unique address.

- ``ring``       the ring CRDT dividing the allocation range among the peers: only a range's
                 owner changes it, merges keep the newest token, inconsistent updates are refused
- ``consensus``  who divides the range first, agreed lazily by Paxos carried over gossip
- ``space``      one peer's bookkeeping of the addresses it handed out inside its ranges
- ``allocator``  ties these together as the ``ipam`` gossip channel's ``Gossiper``: events and
                 bytes in, actions and bytes out, ``now`` and randomness passed in
- ``service``    the trio shell: persists ``to_state()``, moves the messages, runs the timers
- ``netcheck``     a range that overlaps the host's routes is refused at launch (Weave's)

It rides on ``meshnet.gossip``; the node (``meshnet.node``) and the Docker IPAM driver ask it
for addresses.
"""
