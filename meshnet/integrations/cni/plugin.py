"""``meshnet-cni``: the CNI plugin executable, a thin shell over the local daemon's API.

A runtime runs it once per operation with ``CNI_*`` variables and the network configuration
on stdin; it answers on stdout (a result, nothing, or the spec's error object with a non-zero
exit). Everything that touches the kernel or IPAM happens in the daemon, so this process only
parses, asks and formats, and imports nothing heavy (no trio, pyroute2 or httpx).

* ADD: ``/attach`` the namespace under the key ``cni:NETWORK:CONTAINER:IFNAME`` (IPAM holds
  the addresses under it, so DEL and GC need no namespace), in the configured ``subnet`` (one
  of each family at most; IPv4's default subnet if none), with a DNS name if the runtime gives
  one (``CNI_ARGS`` ``MESHNET_NAME`` or ``K8S_POD_NAME``).
* DEL: ``/detach`` by that key: the veth if the namespace is still there, the addresses (both
  families) and DNS records in any case; idempotent.
* CHECK: the interface of ``prevResult`` is still on the bridge with its MAC and addresses, and
  IPAM still holds them (IPv4 and IPv6) for this attachment.
* STATUS: the daemon answers and has a data plane and IPAM (else code 50).
* GC: release every ``cni:NETWORK:`` key not among ``cni.dev/valid-attachments``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from meshnet.integrations.cni import spec
from meshnet.integrations.cni.daemon import DaemonClient, DaemonError, DaemonUnreachable
from meshnet.integrations.cni.spec import CniError, Code, Command, Environment, NetConf

ABOUT = "meshnet-cni: attaches containers to the meshnet overlay through the local router"

ClientFactory = Callable[[Path, float], DaemonClient]
#: STATUS is a readiness probe: a router that takes longer than this to answer is not ready.
STATUS_TIMEOUT = 5.0


def _client(socket_path: Path, timeout: float) -> DaemonClient:
    return DaemonClient(socket_path, timeout=timeout)


def run(
    environ: Mapping[str, str], stdin: bytes, client_factory: ClientFactory = _client
) -> tuple[int, str]:
    """One invocation: (exit status, what to print on stdout)."""
    try:
        env = spec.parse_environment(environ)
        if env.command is Command.VERSION:
            return 0, _dump(_version(stdin))
        conf = spec.parse_config(stdin, env.command)
        timeout = conf.timeout
        if env.command is Command.STATUS:
            timeout = min(timeout, STATUS_TIMEOUT)
        output = _COMMANDS[env.command](env, conf, client_factory(conf.api_socket, timeout))
    except CniError as e:
        return 1, _dump(e.encode(spec.version_of(stdin)))
    except Exception as e:  # a bug here, or an answer we did not expect: still the spec's JSON
        error = CniError(Code.INTERNAL, "meshnet-cni failed", f"{type(e).__name__}: {e}")
        return 1, _dump(error.encode(spec.version_of(stdin)))
    return 0, _dump(output) if output is not None else ""


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2) + "\n"


def _version(stdin: bytes) -> dict[str, Any]:
    """The spec: answer in the input's ``cniVersion`` (if we speak it), with every version we
    support. VERSION's input is optional, so anything unreadable is simply ignored."""
    return {
        "cniVersion": spec.version_of(stdin),
        "supportedVersions": list(spec.SUPPORTED_VERSIONS),
    }


# --- the commands -----------------------------------------------------------------------------


def _add(env: Environment, conf: NetConf, client: DaemonClient) -> dict[str, Any]:
    if not _is_namespace(env.netns):
        raise CniError(Code.UNKNOWN_CONTAINER, f"no network namespace at {env.netns}")
    if _same_namespace("/proc/self/ns/net", env.netns):
        raise CniError(
            Code.INVALID_ENVIRONMENT,
            "invalid CNI_NETNS",
            f"{env.netns} is the host's own network namespace, not a container's",
        )
    body: dict[str, Any] = {
        "container": env.netns,
        "ifname": env.ifname,
        "owner": env.owner(conf.name),
        "addresses": spec.attach_specs(conf.subnets),
    }
    name = env.args.get("MESHNET_NAME") or env.args.get("K8S_POD_NAME")
    if name:
        body["name"] = name
    attached = _call(client.post, "/attach", body)
    dns, ours = conf.dns, not conf.dns.encode()
    if ours:  # the configuration's own "dns" wins over the daemon's server
        with contextlib.suppress(DaemonError, DaemonUnreachable):  # none there: say nothing
            dns = spec.daemon_dns(client.get("/status/dns"))
    result = spec.add_result(attached, env.netns, dns=dns, dns_on_overlay=ours)
    result = result.after(conf.prev_result)
    return result.encode(conf.version)


def _del(env: Environment, conf: NetConf, client: DaemonClient) -> None:
    body: dict[str, Any] = {"owner": env.owner(conf.name), "ifname": env.ifname}
    if env.netns and _is_namespace(env.netns):
        body["container"] = env.netns
    _call(client.post, "/detach", body)


def _check(env: Environment, conf: NetConf, client: DaemonClient) -> None:
    if conf.prev_result is None:
        raise CniError(Code.INVALID_NETWORK_CONFIG, "CHECK needs prevResult")
    if not _is_namespace(env.netns):
        raise CniError(Code.UNKNOWN_CONTAINER, f"no network namespace at {env.netns}")
    owner = env.owner(conf.name)
    containers = _call(client.get, "/containers")
    held = _call(client.post, "/ipam/owners", {"prefix": owner})["owners"].get(owner, [])
    found = next(
        (
            c
            for c in containers
            if c.get("ifname") == env.ifname and _same_namespace(c.get("namespace"), env.netns)
        ),
        None,
    )
    spec.check_against(conf.prev_result, env.ifname, env.netns, found, held)


def _status(env: Environment, conf: NetConf, client: DaemonClient) -> None:
    for path in ("/status", "/status/dataplane", "/status/ipam"):
        try:
            client.get(path)
        except (DaemonError, DaemonUnreachable) as e:
            raise CniError(Code.PLUGIN_NOT_AVAILABLE, "meshnet is not ready", str(e)) from None


def _gc(env: Environment, conf: NetConf, client: DaemonClient) -> None:
    assert conf.valid_attachments is not None
    owners = _call(client.post, "/ipam/owners", {"prefix": spec.owner_prefix(conf.name)})
    failed = []
    for owner in spec.stale_owners(conf.name, owners["owners"], conf.valid_attachments):
        try:
            client.post("/detach", {"owner": owner})
        except (DaemonError, DaemonUnreachable) as e:
            failed.append(f"{owner}: {e}")
    if failed:
        raise CniError(
            Code.DAEMON_ERROR, "GC could not release every stale attachment", "; ".join(failed)
        )


_COMMANDS: dict[Command, Callable[[Environment, NetConf, DaemonClient], Any]] = {
    Command.ADD: _add,
    Command.DEL: _del,
    Command.CHECK: _check,
    Command.STATUS: _status,
    Command.GC: _gc,
}


def _call(method: Callable[..., Any], *args: Any) -> Any:
    """A daemon request, its failures as CNI errors: an absent daemon is worth a retry (11),
    a refusal carries the daemon's one-line reason (100)."""
    try:
        return method(*args)
    except DaemonUnreachable as e:
        raise CniError(Code.TRY_AGAIN_LATER, str(e)) from None
    except DaemonError as e:
        raise CniError(Code.DAEMON_ERROR, str(e)) from None


def _is_namespace(path: str) -> bool:
    """A network namespace file (the runtime's bind mount or /proc/PID/ns/net)."""
    try:
        return os.path.exists(path) and not os.path.isdir(path)
    except OSError:
        return False


def _same_namespace(listed: Any, netns: str) -> bool:
    """Whether the daemon's name for a namespace (a name under /var/run/netns, or a path)
    names the same namespace as ``netns``."""
    if not isinstance(listed, str) or not listed:
        return False
    path = listed if listed.startswith("/") else os.path.join("/var/run/netns", listed)
    try:
        a, b = os.stat(path), os.stat(netns)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def main() -> int:
    """The ``meshnet-cni`` executable."""
    if not os.environ.get("CNI_COMMAND"):
        print(f"{ABOUT}\nCNI versions: {', '.join(spec.SUPPORTED_VERSIONS)}", file=sys.stderr)
    try:
        # VERSION's input is optional: never wait for a terminal.
        interactive = os.environ.get("CNI_COMMAND") == "VERSION" and sys.stdin.isatty()
        stdin = b"" if interactive else sys.stdin.buffer.read()
    except OSError as e:
        status, output = 1, _dump(CniError(Code.IO_FAILURE, "cannot read stdin", str(e)).encode())
    else:
        status, output = run(os.environ, stdin)
    sys.stdout.write(output)
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
