"""The one runner of the `nft` binary, in our own network namespace or inside another.

meshnet's tables (``nftables`` here), the DNS firewall (``meshnet.dns.firewall``) and the lab's
link loss all apply text scripts with ``nft -f -`` (one atomic transaction) or read with
``nft list``; they differ only in where nft runs and who needs it, so one function runs it.
A missing binary or a refused command is the host's business, not a bug: a one-line `NftError`.
"""

from __future__ import annotations

import shutil
import subprocess

from meshnet.dataplane.kernel import netlink
from meshnet.errors import UserError

TIMEOUT = 30.0  # seconds: nft answers in milliseconds, so a hang is a broken host


class NftError(UserError):
    """nft refused a script (or is missing)."""


def run_nft(
    *args: str,
    script: str | None = None,
    namespace: str | None = None,
    needed_by: str = "meshnet",
) -> str:
    """``nft ARGS`` with `script` on stdin, inside `namespace` if given; returns what it printed.

    `needed_by` says in the error, when nft is missing, what wanted it.
    """
    if shutil.which("nft") is None:
        raise NftError(f"nft not found: {needed_by} needs nftables (apt-get install nftables)")
    command = ["nft", *args]
    if namespace is not None:
        command = ["nsenter", f"--net={netlink.namespace_path(namespace)}", *command]
    result = subprocess.run(
        command, input=script, capture_output=True, text=True, check=False, timeout=TIMEOUT
    )
    if result.returncode != 0:
        where = f" in {namespace}" if namespace is not None else ""
        raise NftError(f"nft failed{where}: {' '.join(result.stderr.split())}")
    return result.stdout
