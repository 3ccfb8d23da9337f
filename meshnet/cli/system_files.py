"""The files a system-wide install puts on a host: the systemd unit and its environment file.

`scripts/install-system.sh` writes them with ``python -m meshnet.cli.system_files unit|env``
from the installed package, so an install from a wheel needs no checkout, and the environment
file lists every variable `meshnet launch` reads (taken from the command's own options, which
come from ``launch_options``: a flag added there appears here without anyone remembering to).
``examples/meshnet.service`` is the unit as rendered with the defaults (a test keeps them equal).
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence

import click

from meshnet import __version__
from meshnet.cli.launch import launch

BIN = "/usr/local/bin/meshnet"
ENV_FILE = "/etc/default/meshnet"
PEERS_VARIABLE = "MESHNET_PEERS"  # the unit passes it to `launch` as arguments (split on spaces)


def unit_text(bin_path: str = BIN, env_file: str = ENV_FILE) -> str:
    """The systemd unit: `launch --foreground` with the peers from the environment file."""
    return f"""\
# meshnet.service: the meshnet router (scripts/install-system.sh installs it).
#
# Settings live in {env_file}: one MESHNET_* variable per `meshnet launch` flag, and the
# peers in {PEERS_VARIABLE}. Then `systemctl enable --now meshnet`; logs: `journalctl -u meshnet`.
# `launch --foreground` runs the router in this process; SIGTERM (systemctl stop) shuts it down
# cleanly. State (identity, IPAM, DNS records) stays in /var/lib/meshnet across restarts.

[Unit]
Description=meshnet overlay network router
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
EnvironmentFile=-{env_file}
ExecStart={bin_path} launch --foreground ${PEERS_VARIABLE}
Restart=on-failure
RestartSec=2
RuntimeDirectory=meshnet
RuntimeDirectoryPreserve=yes
StateDirectory=meshnet

[Install]
WantedBy=multi-user.target
"""


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, 96, initial_indent="# ", subsequent_indent="# ")


def _default(param: click.Option) -> str:
    """The value to show commented out: what launch uses when the variable is unset."""
    if param.is_flag:
        return "1"
    if isinstance(param.default, str | int | float) and not isinstance(param.default, bool):
        return str(param.default)
    return ""


def env_file_text(command: click.Command = launch, env_file: str = ENV_FILE) -> str:
    """The environment file: the peers, then every variable of ``command``, commented out."""
    lines = [
        f"# {env_file}: settings of the meshnet router (meshnet.service reads it).",
        f"# Written by install-system.sh (meshnet {__version__}); an upgrade keeps it, "
        "--uninstall removes it.",
        "# Every `meshnet launch` flag has a variable: --dns-ttl 5 is MESHNET_DNS_TTL=5, a switch",
        "# such as --no-fastdp is MESHNET_NO_FASTDP=1, a repeatable flag takes its values",
        '# separated by spaces. systemd reads this file: no shell expansion; quote with "...".',
        "",
        "# The peers to connect to, HOST or HOST:PORT separated by spaces (the unit passes them",
        "# to `meshnet launch`). Routers learn the rest of the mesh from these.",
        f'{PEERS_VARIABLE}=""',
        "",
        "# The mesh's password, the same on every host, in a file only root reads:",
        "#   head -c 32 /dev/urandom | base64 > /etc/meshnet/secret; chmod 600 /etc/meshnet/secret",
        "#MESHNET_PASSWORD_FILE=/etc/meshnet/secret",
    ]
    for param in command.params:
        if not isinstance(param, click.Option) or not isinstance(param.envvar, str):
            continue
        if param.envvar in ("MESHNET_PASSWORD_FILE", PEERS_VARIABLE, "MESHNET_FOREGROUND"):
            continue  # above, or the unit's own
        shown = param.show_default
        default = f"  [default: {shown}]" if isinstance(shown, str) else ""
        lines += ["", *_comment(f"{param.opts[0]}: {param.help or ''}{default}")]
        lines.append(f"#{param.envvar}={_default(param)}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m meshnet.cli.system_files unit [BIN ENV_FILE] | env [ENV_FILE]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["unit"] and len(args) in (1, 3):
        sys.stdout.write(unit_text(*args[1:]))
        return 0
    if args[:1] == ["env"] and len(args) in (1, 2):
        sys.stdout.write(env_file_text(env_file=args[1]) if len(args) == 2 else env_file_text())
        return 0
    sys.stderr.write("usage: python -m meshnet.cli.system_files unit [BIN ENV_FILE] | env [FILE]\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
