"""A fake upstream DNS server for tests: run inside a namespace, prints "ready" once bound.

    python tests/net/dns_upstream.py ADDRESS PORT     (an IPv4 or an IPv6 address)

``*.example.`` names get one A record 192.0.2.N (N: the label's length), ``big.example.`` 60
of them (more than fits 512 bytes: over UDP it answers truncated, so the full answer needs TCP),
and ``silent.example.`` nothing at all (a server that times out). Only answers: it never asks
anyone else.
"""

from __future__ import annotations

import socket
import sys
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rrset


def respond(wire: bytes, tcp: bool) -> bytes | None:
    query = dns.message.from_wire(wire)
    name = query.question[0].name
    text = name.to_text().lower()
    if text == "silent.example.":
        return None
    response = dns.message.make_response(query)
    if text == "big.example.":
        addresses = [f"192.0.2.{i}" for i in range(1, 61)]
        if not tcp:
            response.flags |= dns.flags.TC
            return response.to_wire()
    elif text.endswith(".example."):
        addresses = [f"192.0.2.{len(name.labels[0])}"]
    else:
        response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()
    response.answer.append(dns.rrset.from_text_list(name, 60, "IN", "A", addresses))
    return response.to_wire()


def serve_tcp(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            reply = respond(data[2:], tcp=True)
            if reply is not None:
                conn.sendall(len(reply).to_bytes(2, "big") + reply)


def main() -> None:
    address, port = sys.argv[1], int(sys.argv[2])
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    udp = socket.socket(family, socket.SOCK_DGRAM)
    udp.bind((address, port))
    tcp = socket.socket(family, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((address, port))
    tcp.listen(8)
    threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
    print("ready", flush=True)
    while True:
        wire, peer = udp.recvfrom(65535)
        reply = respond(wire, tcp=False)
        if reply is not None:
            udp.sendto(reply, peer)


if __name__ == "__main__":
    main()
