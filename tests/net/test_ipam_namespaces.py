"""IPAM's keys for namespaces on the real kernel: a namespace deleted without a detach gives its
addresses back, and a later namespace that gets its inode never gets them."""

from __future__ import annotations

import ipaddress
import itertools
import os
from pathlib import Path
from typing import Any

import msgpack
import pytest

from meshnet.api.client import ApiClient
from meshnet.dataplane.kernel import namespaces, netlink
from meshnet.ipam.service import STATE_FILE
from meshnet.lab import lab as lablib
from meshnet.node.namespace_owners import NamespaceId, owner_id
from tests.conftest import run_meshnet
from tests.net.conftest import take_inode
from tests.net.test_ipam import client_of, new_namespace
from tests.net.test_mesh import wait_for


@pytest.fixture(autouse=True)
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHNET_HEARTBEAT_INTERVAL", "1")


def attach(client: ApiClient, namespace: str, *specs: str) -> list[str]:
    """The namespace's addresses (CIDRs) after an attach with these specs."""
    result = client.post("/attach", {"container": namespace, "addresses": list(specs)})
    return sorted(result["addresses"])


def namespace_keys(client: ApiClient) -> dict[str, list[str]]:
    """What IPAM holds under namespace keys: key → addresses."""
    owners: dict[str, list[str]] = client.post("/ipam/owners", {"prefix": "netns:"})["owners"]
    return {key: sorted(held) for key, held in owners.items()}


def key_of(namespace: str) -> str:
    """The key IPAM must hold a namespace's addresses under: its cookie, this boot."""
    cookie = namespaces.cookie_of(str(netlink.namespace_path(namespace)))
    return owner_id(NamespaceId(cookie, namespaces.boot_id()))


def ips(cidrs: list[str]) -> list[str]:
    return sorted(str(ipaddress.ip_interface(c).ip) for c in cidrs)


def names(client: ApiClient, name: str) -> list[str]:
    found: list[str] = client.post("/dns/lookup", {"name": name})["addresses"]
    return found


def test_a_namespace_deleted_without_detach_gives_its_addresses_back_never_to_its_inode_heir(
    make_lab: Any,
) -> None:
    state = make_lab("line", hosts=1, containers=0)
    h1 = client_of(state["hosts"][0])
    gone_names, counter = [], itertools.count()
    for k in range(8):  # until no other process's namespace takes the inode first
        gone = new_namespace(state, f"gone{k}")
        held = attach(h1, gone, "net:default")  # IPv4 only
        assert names(h1, gone) == ips(held)
        gone_names.append(gone)
        inode = netlink.namespace_inode(gone)
        netlink.remove_namespace(gone)  # no detach
        heir = take_inode(
            inode, lambda: new_namespace(state, f"heir{next(counter)}"), netlink.remove_namespace
        )
        if heir is not None:
            break
    assert heir is not None, "other processes took every inode we freed"

    # An attach without addresses gives both families, as to any new container: nothing of
    # the dead one's (IPv4 only, and its address while IPAM still held it for it).
    given = attach(h1, heir)
    assert {ipaddress.ip_interface(a).version for a in given} == {4, 6}, given
    assert attach(h1, heir) == given  # attaching again gives the same addresses

    # The dead namespaces' ports went with them: their addresses and names come back.
    def only_the_heirs() -> bool:
        return namespace_keys(h1) == {key_of(heir): ips(given)}

    wait_for(only_the_heirs, 20, "IPAM to hold nothing but the heir's addresses")
    for gone in gone_names:
        wait_for(lambda gone=gone: names(h1, gone) == [], 20, f"{gone}'s name to go")

    detached = h1.post("/detach", {"container": heir, "addresses": []})
    assert detached == {"detached": True}
    assert namespace_keys(h1) == {}


def rename_keys(state_file: Path, renames: dict[str, str]) -> None:
    """Rewrite the keys of IPAM's allocations in a stopped router's state file."""
    state = msgpack.unpackb(state_file.read_bytes(), raw=False)
    state[6] = [[address, renames.get(key, key)] for address, key in state[6]]
    state_file.write_bytes(msgpack.packb(state, use_bin_type=True))


def test_keys_survive_a_restart_and_inode_keys_from_before_cookies_are_moved_or_released(
    make_lab: Any,
) -> None:
    """A router's state from before cookies holds ``netns:DEV:INO`` keys; at start it moves
    each to its namespace's cookie key if the namespace with that inode carries its addresses
    on the bridge, and releases it otherwise. Keys of namespaces gone while it was down go."""
    state = make_lab("line", hosts=1, containers=0)
    host = state["hosts"][0]
    h1 = client_of(host)
    kept, migrated, gone, reused, gone_by_cookie, other = (
        new_namespace(state, suffix)
        for suffix in ("kept", "migrated", "gone", "reused", "gone2", "other")
    )
    held = {ns: attach(h1, ns, "net:default") for ns in (kept, migrated, gone, reused)}
    held[gone_by_cookie] = attach(h1, gone_by_cookie, "net:default")

    def legacy(namespace: str) -> str:
        dev, ino = netlink.namespace_inode(namespace)
        return f"netns:{dev}:{ino}"

    env = {**os.environ, **lablib.host_environment(host)}
    stopped = run_meshnet("stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    rename_keys(
        Path(host["dir"]) / STATE_FILE,
        {
            key_of(migrated): legacy(migrated),
            key_of(gone): legacy(gone),
            key_of(reused): legacy(other),  # as if its inode were the other namespace's now
        },
    )
    netlink.remove_namespace(gone)
    netlink.remove_namespace(gone_by_cookie)
    lablib.start_router(state["name"], host["name"])

    assert namespace_keys(h1) == {
        key_of(kept): ips(held[kept]),
        key_of(migrated): ips(held[migrated]),
    }
    assert attach(h1, kept) == held[kept]  # the same addresses, and no second family
    assert attach(h1, migrated) == held[migrated]
    log = (Path(host["dir"]) / "meshnet.log").read_text()
    assert f"now held as {key_of(migrated)}" in log
    assert f"of {legacy(other)}: the namespace with its inode does not carry them" in log
