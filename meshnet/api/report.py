"""The whole state of one router as one JSON-ready value: what `meshnet report` prints.

Every part is optional except the router's: a daemon without a data plane, IPAM or DNS simply
reports ``None`` for that part, so consumers (the CLI, the TUI, templates) check before use.
The same value, sent over and over, is the TUI's snapshot stream.
"""

from __future__ import annotations

import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import trio

from meshnet import __version__

if TYPE_CHECKING:
    from meshnet.dataplane.service import DataPlane
    from meshnet.gossip.router import Router

REPORT_VERSION = 1
PROC_NET_DEV = Path("/proc/net/dev")


class _Status(Protocol):
    def status(self) -> dict[str, Any]: ...


class Sources(Protocol):
    """What the report reads: the API app has exactly these (IPAM and DNS may be absent)."""

    router: Router
    dataplane: DataPlane | None


async def collect(sources: Sources, *, now: float | None = None) -> dict[str, Any]:
    """The report; ``containers`` costs a netlink walk (in a thread), the rest reads memory."""
    router = sources.router
    dataplane = sources.dataplane
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "version": __version__,
        "time": time.time() if now is None else now,
        "router": router.status(),
        "peers": router.peers(),
        "connections": router.connections(),
        "targets": router.targets(),
        "gossip": gossip_statistics(router),
        "dataplane": None,
        "containers": [],
        "ipam": _optional_status(getattr(sources, "ipam", None)),
        "dns": _optional_status(getattr(sources, "dns", None)),
    }
    if dataplane is not None and dataplane.forwarder is not None:
        await dataplane.refresh()
        report["dataplane"] = status = dataplane.status()
        containers = await dataplane.containers()
        counters = await trio.to_thread.run_sync(_read_net_dev)
        report["containers"] = _with_counters(containers, counters)
        # Fastdp traffic never passes the router: its devices (one per family) count it.
        vxlan = [counters[d] for d in status["fastdp"].get("devices", ()) if d in counters]
        if vxlan:
            status["fastdp"]["traffic"] = {
                "rx_bytes": sum(rx for rx, _ in vxlan),
                "tx_bytes": sum(tx for _, tx in vxlan),
            }
    return report


def gossip_statistics(router: Router) -> dict[str, Any]:
    stats = router.mesh.statistics()
    out: dict[str, Any] = {f.name: getattr(stats, f.name) for f in fields(stats)}
    out["channels"] = {name: asdict(c) for name, c in stats.channels.items()}  # a mappingproxy
    return out


def _optional_status(service: _Status | None) -> dict[str, Any] | None:
    if service is None:
        return None
    return service.status()


def _read_net_dev() -> dict[str, tuple[int, int]]:
    try:
        return parse_net_dev(PROC_NET_DEV.read_text())
    except OSError:
        return {}


def _with_counters(
    containers: list[dict[str, Any]], counters: dict[str, tuple[int, int]]
) -> list[dict[str, Any]]:
    """Each container with its traffic, read from the host end of its veth.

    The host end counts the other way round: what it receives the container sent.
    """
    out = []
    for c in containers:
        row = counters.get(str(c.get("host_ifname", "")))
        if row is not None:
            rx_bytes, tx_bytes = row
            c = {**c, "tx_bytes": rx_bytes, "rx_bytes": tx_bytes}
        out.append(c)
    return out


def parse_net_dev(text: str) -> dict[str, tuple[int, int]]:
    """``/proc/net/dev`` as {ifname: (rx_bytes, tx_bytes)}.

    /proc/net follows the reading process's network namespace (unlike /sys, which follows the
    mount namespace: a daemon started with ``nsenter --net`` sees the root's /sys/class/net).
    """
    out = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 9:
            continue
        try:
            out[name.strip()] = (int(fields[0]), int(fields[8]))
        except ValueError:
            continue
    return out
