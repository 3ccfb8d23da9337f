"""`meshnet reset --force` after a router died: remove what it left on the host.

A router killed hard (kill -9, the OOM killer, a crash) cannot stop cleanly, and what it owns
stays: the bridge and its ports (VXLAN devices, containers' host-side veths; the sleeve's TAP
goes with the process unless something kept it open), the nftables tables (which fail closed:
isolation, the fastdp source filter and the DNS firewall keep dropping), its state directory,
its API socket and its Docker plugin socket. Each table goes through the same removal its owner
runs when it stops; the state files are named by their owners' own constants, so nothing here is
a second list to keep in step. The logs stay (they say why it died).

``leftover_links`` is the pure decision of which links are ours; ``clean_up`` does it all.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from meshnet.constants import BRIDGE, SLEEVE_TAP
from meshnet.dataplane.kernel import netlink, nftables, vxlan_filter
from meshnet.dataplane.kernel.netlink import LinkInfo
from meshnet.dns import firewall
from meshnet.dns import service as dns_service
from meshnet.errors import MeshnetError, UserError
from meshnet.gossip import saved_targets
from meshnet.gossip.identity import PEER_NAME_FILE
from meshnet.ipam import service as ipam_service
from meshnet.node import ramps

log = logging.getLogger("meshnet.cleanup")

#: The state directory's files a router owns (its log is kept).
STATE_FILES = (
    PEER_NAME_FILE,
    ipam_service.STATE_FILE,
    ipam_service.STATE_FILE6,
    ramps.STATE_FILE,
    dns_service.STATE_FILE,
    saved_targets.STATE_FILE,
)

#: Each nftables table with the removal its owner runs when it stops.
TABLES: tuple[tuple[str, Callable[[], None]], ...] = (
    (f"bridge+inet {nftables.TABLE}", lambda: nftables.apply(nftables.removal())),
    (f"inet {vxlan_filter.TABLE}", lambda: vxlan_filter.apply(vxlan_filter.removal())),
    (f"inet {firewall.TABLE}", firewall.remove),
)

_VXLAN_NAME = re.compile(r"vxlan6?-\d+")  # fastdp's devices, named after their port


def leftover_links(links: Iterable[LinkInfo]) -> list[str]:
    """Our links, in the order to delete them: the bridge's ports, fastdp's VXLAN devices and
    the sleeve's TAP wherever they are, then the bridge itself."""
    links = list(links)
    bridge = next((link for link in links if link.name == BRIDGE), None)
    ours = [
        link.name
        for link in links
        if (bridge is not None and link.master == bridge.index)
        or link.name == SLEEVE_TAP
        or (link.kind == "vxlan" and _VXLAN_NAME.fullmatch(link.name))
    ]
    return sorted(set(ours)) + ([BRIDGE] if bridge is not None else [])


@dataclass(frozen=True)
class Cleaned:
    links: tuple[str, ...]
    tables: tuple[str, ...]
    files: tuple[str, ...]
    failures: tuple[str, ...]  # what could not be removed, each one line


def listening(path: Path) -> bool:
    """Whether a process listens on the unix socket ``path`` (up, or hung: not dead). A
    socket file nobody listens on refuses the connection: its owner died."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(5)
        try:
            probe.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        except PermissionError:
            raise UserError(f"permission denied on {path} (run as root?)") from None
        except OSError:
            return True  # a timeout: something holds it; never tear down under it
    return True


def clean_up(state_dir: Path, api_socket: Path, plugin_socket: Path | None) -> Cleaned:
    """Remove the dead router's links, tables, state and sockets (the API's, and the Docker
    plugin's if it had one and no other process serves it); every step is tried."""
    links: list[str] = []
    tables: list[str] = []
    files: list[str] = []
    failures: list[str] = []
    try:
        with netlink.namespace(None) as ns:
            for name in leftover_links(ns.links()):
                if ns.delete_link(name):
                    links.append(name)
    except MeshnetError as e:
        failures.append(f"links: {e}")
    for table, remove in TABLES:
        try:
            remove()
        except MeshnetError as e:
            failures.append(f"table {table}: {e}")
        else:
            tables.append(table)
    for name in STATE_FILES:
        try:
            (state_dir / name).unlink()
        except FileNotFoundError:
            continue
        except OSError as e:
            failures.append(f"{state_dir / name}: {e.strerror}")
        else:
            files.append(name)
    for path in (api_socket, *([plugin_socket] if plugin_socket is not None else [])):
        try:
            if listening(path):
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        except (OSError, UserError) as e:
            failures.append(f"{path}: {getattr(e, 'strerror', None) or e}")
        else:
            files.append(str(path))
    return Cleaned(tuple(links), tuple(tables), tuple(files), tuple(failures))
