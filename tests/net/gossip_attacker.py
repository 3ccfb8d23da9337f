"""A modified router for attack tests: it holds the password, completes the real handshake with a
lab router, then sends the gossip messages it is given and keeps the connection alive.

Run inside a lab namespace: ``gossip_attacker.py HOST:PORT SECONDS`` with the password in
``MESHNET_PASSWORD`` and, on stdin, a JSON list of messages, each ``["gossip", channel, hex]`` or
``["unicast", channel, source, destination, hex]``. Prints ``ready`` after the handshake and one
JSON line at the end: how many messages went out and whether the router closed the connection.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import time

from meshnet.gossip.handshake import Handshake
from meshnet.gossip.identity import Identity
from meshnet.gossip.messages import Gossip, Heartbeat, Message, Unicast
from meshnet.gossip.router import PROTOCOL_FEATURES


def messages(spec: list[list[object]]) -> list[Message]:
    out: list[Message] = []
    for item in spec:
        if item[0] == "gossip":
            out.append(Gossip(str(item[1]), bytes.fromhex(str(item[2]))))
        else:
            source, destination = int(str(item[2])), int(str(item[3]))
            out.append(Unicast(str(item[1]), source, destination, bytes.fromhex(str(item[4]))))
    return out


def main() -> None:
    address, seconds = sys.argv[1], float(sys.argv[2])
    attack = messages(json.loads(sys.stdin.read()))
    host, _, port = address.rpartition(":")
    rng = random.Random()
    me = Identity(rng.getrandbits(47) | 2, "mallory", rng.getrandbits(64))
    handshake = Handshake(
        local=me,
        features={**PROTOCOL_FEATURES, "sleeve_port": 6783},
        password=os.environ["MESHNET_PASSWORD"].encode(),
        rng=os.urandom,
    )
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(handshake.initial_bytes())
    while handshake.result is None:
        data = sock.recv(65536)
        if not data:
            raise SystemExit("closed during the handshake")
        reply = handshake.receive_data(data)
        if reply:
            sock.sendall(reply)
    encoder = handshake.result.frame_encoder()
    print("ready", flush=True)
    sock.sendall(b"".join(encoder.encode(m) for m in attack))
    sock.settimeout(0.5)
    closed = False
    deadline = time.monotonic() + seconds
    next_beat = 0.0
    while time.monotonic() < deadline and not closed:
        if time.monotonic() >= next_beat:
            try:
                sock.sendall(encoder.encode(Heartbeat()))
            except OSError:
                closed = True
            next_beat = time.monotonic() + 0.5
        try:
            closed = closed or not sock.recv(65536)
        except TimeoutError:
            pass
        except OSError:
            closed = True
    print(json.dumps({"sent": len(attack), "closed_by_peer": closed}), flush=True)


if __name__ == "__main__":
    main()
