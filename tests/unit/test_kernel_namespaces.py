"""Where namespaces can be seen from: mount points of namespace files, read from mountinfo."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnet.dataplane.kernel import namespaces

MOUNTINFO = """\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
610 25 0:4 net:[4026532290] /run/netns/lab-h1 rw shared:293 - nsfs nsfs rw
611 25 0:4 net:[4026532351] /run/docker/netns/1f2e\\0403c4d rw shared:293 - nsfs nsfs rw
612 25 0:4 mnt:[4026532400] /run/some/mnt rw shared:293 - nsfs nsfs rw
"""


def test_namespace_bind_mounts_are_read_from_mountinfo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    monkeypatch.setattr(namespaces, "_MOUNTINFO", info)
    assert list(namespaces._namespace_mounts()) == [
        "/run/netns/lab-h1",
        "/run/docker/netns/1f2e 3c4d",  # mountinfo escapes a space as \040
    ]
    monkeypatch.setattr(namespaces, "_MOUNTINFO", tmp_path / "missing")
    assert list(namespaces._namespace_mounts()) == []


def test_the_boot_id_is_hex_and_stable() -> None:
    boot = namespaces.boot_id()
    assert len(boot) == namespaces.BOOT_DIGITS and int(boot, 16) >= 0
    assert namespaces.boot_id() == boot
