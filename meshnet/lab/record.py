"""What a lab is made of, on disk: its journal of created things and its record (lab.json).

Kept apart from the lab's actions so the Docker and DNS parts of a lab can read the record
without importing the code that builds labs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshnet.errors import UserError
from meshnet.statefile import write_atomically


class Journal:
    """Append-only record of what a lab created, written before each creation and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, kind: str, value: str | int) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({kind: value}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def entries(self) -> Iterator[tuple[str, Any]]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                ((kind, value),) = json.loads(line).items()
            except (ValueError, AttributeError):
                continue  # a line torn by a kill mid-write
            yield kind, value


@dataclass
class LabRecord:
    """What `up` planned and what `link` changed since: lab.json."""

    name: str
    state: str  # building | up | failed
    mtu: int
    hosts: list[dict[str, Any]]
    links: list[dict[str, Any]]
    containers: list[dict[str, Any]]
    created: float
    daemons: bool = True
    encrypted: bool = False
    dns_upstreams: list[str] = field(default_factory=list)  # every router's --dns-upstream
    fastdp: bool = True  # False: every router runs with --no-fastdp
    docker: bool = False  # a dockerd per host; the containers are Docker containers
    overlay: str = "ipv4"  # the containers' address families (topology.OVERLAYS)
    # With NAT hosts: the internet router's namespace, its links to the public hosts
    # ("public", PlannedUplink fields) and the NATs ("nats", PlannedNat fields plus "namespace").
    internet: dict[str, Any] | None = None

    @classmethod
    def load(cls, directory: Path) -> LabRecord:
        try:
            return cls(**json.loads((directory / "lab.json").read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise UserError(f"lab record {directory / 'lab.json'} is unreadable: {e}") from None

    def save(self, directory: Path) -> None:
        write_atomically(directory / "lab.json", json.dumps(asdict(self), indent=2), mode=0o644)

    def find_host(self, name: str) -> dict[str, Any]:
        for host in self.hosts:
            if host["name"] == name:
                return host
        raise UserError(f"no host named {name!r} in lab {self.name}")

    def find_link(self, a: str, b: str) -> dict[str, Any]:
        for link in self.links:
            if {link["a"], link["b"]} == {a, b}:
                return link
        hosts = {h["name"] for h in self.hosts}
        for end in (a, b):
            if end not in hosts:
                raise UserError(f"no host named {end!r} in lab {self.name}")
        raise UserError(f"hosts {a} and {b} are not linked in lab {self.name}")
