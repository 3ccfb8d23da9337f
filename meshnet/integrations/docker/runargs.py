"""The arguments of `meshnet run`: address specs, then `docker run`'s own (pure).

`meshnet run` adds to `docker run`: ``-d``, the ``meshnet.cidr`` label (so the router attaches
the container again whenever it restarts), the host's meshnet DNS server and search domain, and
a hostname in the meshnet domain from ``--name``. Only the options before the image are read;
what follows it is the container's command.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from meshnet.integrations.docker.lifecycle import CIDR_LABEL

# `docker run` flags that take no value (every other flag takes one, unless given as --f=v).
_BOOLEAN_FLAGS = frozenset(
    {
        "--detach",
        "--interactive",
        "--tty",
        "--rm",
        "--init",
        "--privileged",
        "--publish-all",
        "--read-only",
        "--no-healthcheck",
        "--oom-kill-disable",
        "--disable-content-trust",
        "--sig-proxy",
        "--quiet",
        "--help",
    }
)
_BOOLEAN_SHORT = frozenset("ditPq")
HOSTNAME_MAX = 63


def is_address_spec(text: str) -> bool:
    """``net:CIDR``, ``ip:ADDR`` or a CIDR: what `meshnet run` takes before Docker's args."""
    if text.startswith(("net:", "ip:")):
        return True
    if "/" not in text:
        return False
    try:
        ipaddress.ip_interface(text)
    except ValueError:
        return False
    return True


def split_run_args(args: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Leading address specs, then `docker run`'s arguments."""
    specs = []
    rest = list(args)
    while rest and is_address_spec(rest[0]):
        specs.append(rest.pop(0))
    if rest and rest[0] == "--":
        rest.pop(0)
    return specs, rest


def docker_options(args: list[str]) -> dict[str, str]:
    """`docker run`'s options before the image, as ``{"--name": ..., "--hostname": ...}``.

    Only what `meshnet run` looks at: the container's name and hostname (short forms become
    long ones). Arguments after the image are the container's command and never read.
    """
    found: dict[str, str] = {}
    aliases = {"-h": "--hostname"}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg == "-":
            break  # the image
        if arg == "--":
            break
        if arg.startswith("--"):
            flag, sep, value = arg.partition("=")
            if not sep and flag not in _BOOLEAN_FLAGS:
                i += 1
                value = args[i] if i < len(args) else ""
            found[flag] = value
        else:
            letters = arg[1:]
            for j, letter in enumerate(letters):
                if letter in _BOOLEAN_SHORT:
                    continue
                value = letters[j + 1 :]
                if not value:
                    i += 1
                    value = args[i] if i < len(args) else ""
                found[aliases.get(f"-{letter}", f"-{letter}")] = value
                break
        i += 1
    return found


def run_arguments(
    specs: list[str], args: list[str], dns: dict[str, Any] | None
) -> tuple[list[str], str | None]:
    """The arguments to `docker run`, and the name to register (pure).

    ``dns``: the router's `status dns` (None or not listening: Docker's DNS stays).
    """
    options = docker_options(args)
    name = options.get("--name") or None
    extra = ["-d", "--label", f"{CIDR_LABEL}={' '.join(specs)}"]
    if dns and dns.get("listen"):
        domain = str(dns["domain"]).rstrip(".")
        extra += ["--dns", str(dns["listen"]).split("/")[0], "--dns-search", domain]
        hostname = f"{name}.{domain}" if name else ""
        if name and "--hostname" not in options and _is_hostname(hostname):
            extra += ["--hostname", hostname]
    return extra + args, name


def _is_hostname(name: str) -> bool:
    labels = name.split(".")
    return len(name) <= HOSTNAME_MAX and all(
        0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()
        for label in labels
    )
