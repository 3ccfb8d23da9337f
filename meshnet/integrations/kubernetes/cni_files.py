"""The CNI files a node needs, installed by the pod into the host's directories.

The runtime (containerd, CRI-O) runs ``meshnet-cni`` from the host's ``/opt/cni/bin`` with the
host's interpreter, not the pod's, so the plugin goes there as a zipapp holding only its own
modules (``meshnet.integrations.cni``, standard library only) behind ``#!/usr/bin/env python3``:
the node needs a ``python3``, nothing of meshnet's dependencies. Each file is replaced
atomically (a runtime may be running the old plugin at that very moment), and only when its
content changed, so a restarted pod does not touch a node's files for nothing.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import meshnet
from meshnet.integrations import cni

CONFLIST_NAME = "10-meshnet.conflist"
PLUGIN_NAME = "meshnet-cni"
NETWORK_NAME = "meshnet"
#: The newest version containerd 1.7 and CRI-O read; the plugin speaks 0.3.0 to 1.1.0.
CNI_VERSION = "1.0.0"
SHEBANG = b"#!/usr/bin/env python3\n"
_MAIN = b"import sys\nfrom meshnet.integrations.cni.plugin import main\nsys.exit(main())\n"


@dataclass(frozen=True)
class Installed:
    path: Path
    changed: bool


def conflist(api_socket: Path) -> bytes:
    """The network configuration list: meshnet-cni on the router's socket, as the host sees it."""
    config = {
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": [{"type": PLUGIN_NAME, "apiSocket": str(api_socket)}],
    }
    return (json.dumps(config, indent=2) + "\n").encode()


def plugin_zipapp() -> bytes:
    """``meshnet-cni`` as one executable file: the shebang, then a zip of its modules.

    Deterministic (fixed timestamps), so the same meshnet gives the same bytes.
    """
    package = Path(cni.__file__).parent
    sources = {
        "meshnet/__init__.py": Path(meshnet.__file__),
        # The plugin's error wording is shared with the router (stdlib-only, like the rest).
        "meshnet/errors.py": Path(meshnet.__file__).parent / "errors.py",
        "meshnet/integrations/__init__.py": package.parent / "__init__.py",
        **{f"meshnet/integrations/cni/{p.name}": p for p in sorted(package.glob("*.py"))},
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, path in sources.items():
            archive.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), path.read_bytes())
        archive.writestr(zipfile.ZipInfo("__main__.py", (1980, 1, 1, 0, 0, 0)), _MAIN)
    return SHEBANG + buffer.getvalue()


def install(path: Path, content: bytes, mode: int) -> Installed:
    """Put ``content`` at ``path`` by an atomic rename, unless it is there already."""
    try:
        if path.read_bytes() == content and (path.stat().st_mode & 0o777) == mode:
            return Installed(path, changed=False)
    except OSError:
        pass
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return Installed(path, changed=True)


def install_plugin(bin_dir: Path) -> Installed:
    return install(bin_dir / PLUGIN_NAME, plugin_zipapp(), 0o755)


def install_conflist(conf_dir: Path, api_socket: Path) -> Installed:
    """Last: the kubelet reports the node's network ready once a configuration is there."""
    return install(conf_dir / CONFLIST_NAME, conflist(api_socket), 0o644)
