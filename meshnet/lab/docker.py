"""The lab's Docker (`meshnet lab up --docker`): one dockerd per host, an image made without a
registry, and the lab's containers as Docker containers on the overlay.

Each host's dockerd runs in the host's network namespace, with its own data root, exec root,
socket and cgroup parent, all under the host's directory (or named after its namespace). It
also runs in a mount namespace of its own, because dockerd finds plugins only in fixed places
(sockets in /run/docker/plugins, spec files in /etc/docker/plugins and /usr/lib/docker/plugins:
moby's pkg/plugins/discovery.go, with no flag to change them): there, the host's plugin
directory (where its router serves the ``meshnet`` plugin) is bind-mounted on
/run/docker/plugins, so every dockerd talks to its own host's router. tmpfs mounts over
/run/containerd (shim sockets) and /etc/docker (dockerd 20.10's key.json) keep the machine's
own directories untouched; everything mounted there disappears with the last process of that
namespace. The mount points themselves (empty /run/docker, /run/containerd, /etc/docker) are
created on the machine if missing.

dockerd gets ``--bridge none --iptables=false``: its containers have only what meshnet gives
them, and nothing is written to the host's firewall; ``--dns`` points every container at its
host's meshnet DNS server, so containers on a ``docker network create -d meshnet`` network
resolve meshnet names through Docker's embedded DNS too.

Teardown (``stop_engines``, from the journal, so it works after a crash as well): remove every
container through the Engine, stop dockerd, then kill whatever is left in the cgroups and remove
them. The data roots go with the lab's directory.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from meshnet.api.client import ApiClient
from meshnet.constants import ALLOCATE_TIMEOUT
from meshnet.dataplane.kernel import netlink
from meshnet.errors import UserError
from meshnet.integrations.docker.runargs import run_arguments

if TYPE_CHECKING:
    from meshnet.lab.record import Journal, LabRecord

IMAGE = "meshnet-lab/busybox:latest"
CONTAINER_COMMAND = ["sleep", "2147483647"]
READY_TIMEOUT = 45.0
STOP_TIMEOUT = 10.0
CGROUP_ROOT = Path("/sys/fs/cgroup")
_BUSYBOX = ("/bin/busybox", "/usr/bin/busybox")

# Runs as `sh -ec SCRIPT sh PLUGIN_DIR NETNS DOCKERD ARGS...` inside `unshare --mount`.
_WRAPPER = """
for d in /run/docker /run/containerd /etc/docker; do [ -d "$d" ] || mkdir -p "$d"; done
mount -t tmpfs -o mode=0700 meshnet-lab /run/containerd
mount -t tmpfs -o mode=0755 meshnet-lab /etc/docker
mount -t tmpfs -o mode=0755 meshnet-lab /run/docker
mkdir /run/docker/plugins
mount --bind "$1" /run/docker/plugins
netns=$2
shift 2
exec nsenter --net="$netns" "$@"
"""


def docker_client() -> str:
    """Debian's client, which matches its daemon (a newer one may come first on PATH)."""
    if os.access("/usr/bin/docker", os.X_OK):
        return "/usr/bin/docker"
    found = shutil.which("docker")
    if found is None:
        raise UserError("docker (the client) not found: apt-get install docker.io")
    return found


def _busybox() -> str:
    for path in _BUSYBOX:
        if os.access(path, os.X_OK):
            return path
    raise UserError("busybox not found: apt-get install busybox-static")


def check_available() -> None:
    """Everything `lab up --docker` needs, before anything is built."""
    for tool, package in (("dockerd", "docker.io"), ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            raise UserError(f"{tool} not found: apt-get install {package}")
    docker_client()
    _busybox()


def engine_dir(host_dir: str | Path) -> Path:
    return Path(host_dir) / "docker"


def engine_socket(host_dir: str | Path) -> Path:
    return engine_dir(host_dir) / "docker.sock"


def plugin_dir(host_dir: str | Path) -> Path:
    return engine_dir(host_dir) / "plugins"


def host_environment(host: dict[str, Any]) -> dict[str, str]:
    """How `meshnet` and `docker` run in a lab host find that host's dockerd.

    Hosts of a lab without Docker tell their routers to ignore Docker: otherwise every router
    would watch the machine's dockerd and serve its plugin in the machine's plugin directory.
    """
    if not host.get("docker"):
        return {"MESHNET_NO_DOCKER": "1"}
    return {
        "DOCKER_HOST": f"unix://{engine_socket(host['dir'])}",
        "MESHNET_DOCKER_PLUGIN_DIR": str(plugin_dir(host["dir"])),
        "MESHNET_DOCKER_CLI": docker_client(),
    }


def cgroup_parent(host: dict[str, Any]) -> str:
    return f"/{host['namespace']}"


def _dockerd_command(host: dict[str, Any], dns: dict[str, Any] | None) -> list[str]:
    root = engine_dir(host["dir"])
    command = [
        "unshare", "--mount", "--propagation", "private",
        "sh", "-ec", _WRAPPER, "sh", str(plugin_dir(host["dir"])),
        str(netlink.NETNS_DIR / host["namespace"]),
        "dockerd",
        "--data-root", str(root / "data"),
        "--exec-root", str(root / "exec"),
        "--pidfile", str(root / "docker.pid"),
        "--config-file", str(root / "daemon.json"),
        "-H", f"unix://{engine_socket(host['dir'])}",
        "--bridge", "none",
        "--iptables=false",
        "--ip6tables=false",
        "--ip-masq=false",
        "--userland-proxy=false",
        "--cgroup-parent", cgroup_parent(host),
        "--shutdown-timeout", "1",
    ]  # fmt: skip
    if dns is not None and dns.get("listen"):
        command += ["--dns", str(dns["listen"]).split("/")[0]]
        command += ["--dns-search", str(dns["domain"]).rstrip(".")]
    return command


def _engine(host_dir: str | Path, timeout: float = 5.0) -> httpx.Client:
    transport = httpx.HTTPTransport(uds=str(engine_socket(host_dir)))
    return httpx.Client(transport=transport, base_url="http://docker", timeout=timeout)


def _answers(host_dir: str | Path) -> bool:
    if not engine_socket(host_dir).exists():
        return False
    try:
        with _engine(host_dir, timeout=2) as engine:
            return engine.get("/_ping").status_code == 200
    except httpx.HTTPError:
        return False


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " / ".join(line.strip() for line in text[-lines:])


def start_engines(
    record: LabRecord,
    journal: Journal,
    dns: Callable[[dict[str, Any]], dict[str, Any] | None],
    progress: Callable[[str], None],
) -> None:
    """A dockerd in every host (started together), each with the lab's image imported.

    ``dns``: a host's `status dns`, to point its containers at its server.
    """
    starting = []
    for host in record.hosts:
        root = engine_dir(host["dir"])
        plugin_dir(host["dir"]).mkdir(parents=True, exist_ok=True)
        (root / "daemon.json").write_text("{}\n")
        journal.record("dockerd", host["dir"])
        journal.record("cgroup", cgroup_parent(host))
        with open(root / "dockerd.log", "ab") as log:
            proc = subprocess.Popen(
                _dockerd_command(host, dns(host)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        starting.append((host, proc))
    deadline = time.monotonic() + READY_TIMEOUT
    for host, proc in starting:
        while not _answers(host["dir"]):
            log_file = engine_dir(host["dir"]) / "dockerd.log"
            if proc.poll() is not None:
                raise UserError(
                    f"dockerd on {host['name']} exited with status {proc.returncode}: "
                    f"{_log_tail(log_file) or 'see ' + str(log_file)}"
                )
            if time.monotonic() > deadline:
                raise UserError(f"dockerd on {host['name']} did not answer; see {log_file}")
            time.sleep(0.1)
        progress(f"dockerd on {host['name']}")
    image = rootfs_tarball()
    for host, _ in starting:
        _docker(host, "import", "-", IMAGE, input=image)
    progress(f"image {IMAGE} imported")


def rootfs_tarball() -> bytes:
    """A root filesystem holding busybox and a link per applet: all a lab container needs."""
    busybox = _busybox()
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for directory in ("bin", "etc", "tmp", "proc", "sys", "dev", "root"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in sorted(set(applets) - {"busybox"}):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        passwd = b"root:x:0:0:root:/root:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
    return out.getvalue()


def _docker(
    host: dict[str, Any], *args: str, input: bytes | None = None, timeout: float = 60
) -> str:
    result = subprocess.run(
        [docker_client(), "-H", f"unix://{engine_socket(host['dir'])}", *args],
        input=input,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise UserError(
            f"docker {args[0]} on {host['name']} failed: "
            + (result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}")
        )
    return result.stdout.decode(errors="replace").strip()


def run_containers(
    record: LabRecord,
    api_socket: Callable[[str], Path],
    dns: Callable[[dict[str, Any]], dict[str, Any] | None],
    progress: Callable[[str], None],
) -> None:
    """Each container as `meshnet run` starts one: `docker run -d` with the meshnet label, DNS
    and hostname, then attached by id (IPAM gives its address, DNS its name)."""
    hosts = {h["name"]: h for h in record.hosts}
    for host in record.hosts:
        wait_connected(api_socket(host["dir"]), host["name"])
    for c in record.containers:
        host = hosts[c["host"]]
        argv, name = run_arguments([], ["--name", c["name"], IMAGE, *CONTAINER_COMMAND], dns(host))
        container = _docker(host, "run", *argv).splitlines()[-1]
        c["docker_id"] = container
        client = ApiClient(api_socket(host["dir"]), timeout=ALLOCATE_TIMEOUT + 15)
        body = {"container": container, "addresses": ["net:default"], "name": name}  # IPv4
        result = client.post("/attach", body)
        c["address"] = result["addresses"][0]
        progress(f"container {c['name']} {c['address']}")


def wait_connected(api_socket: Path, host: str, timeout: float = READY_TIMEOUT) -> None:
    """Until the host's router is connected to its dockerd and serves the plugin."""
    client = ApiClient(api_socket, timeout=5)
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = client.get("/status/docker")
        except UserError as e:
            status = {"state": str(e), "plugin": ""}
        if status["state"] == "connected" and status["plugin"] == "serving":
            return
        if time.monotonic() > deadline:
            raise UserError(
                f"the router on {host} is not connected to its dockerd: {status['state']}, "
                f"plugin {status['plugin']}"
            )
        time.sleep(0.1)


def container_pid(host_dir: str | Path, container: str) -> int | None:
    """The PID of a running container (its namespace is /proc/PID/ns/net), or None."""
    try:
        with _engine(host_dir, timeout=2) as engine:
            response = engine.get(f"/containers/{container}/json")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    state = response.json().get("State") or {}
    pid = state.get("Pid")
    return pid if state.get("Running") and isinstance(pid, int) and pid > 0 else None


def exec_command(host_dir: str | Path, container: str, command: tuple[str, ...]) -> list[str]:
    """`docker exec` in a lab container (its own filesystem: busybox's tools)."""
    return [docker_client(), "-H", f"unix://{engine_socket(host_dir)}", "exec", container, *command]


# --- teardown -----------------------------------------------------------------------------------


def stop_engines(host_dirs: list[str], cgroups: list[str]) -> None:
    """Remove every container, stop every dockerd, empty and remove the cgroups (idempotent)."""
    for host_dir in host_dirs:
        _remove_containers(host_dir)
    pids = [pid for pid in map(_pid, host_dirs) if pid is not None]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    for cgroup in cgroups:
        _remove_cgroup(cgroup)


def _remove_containers(host_dir: str) -> None:
    if not _answers(host_dir):
        return
    try:
        with _engine(host_dir, timeout=STOP_TIMEOUT) as engine:
            listed = engine.get("/containers/json", params={"all": "1"}).json()
            for entry in listed if isinstance(listed, list) else []:
                engine.delete(f"/containers/{entry['Id']}", params={"force": "1", "v": "1"})
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        pass  # what is left dies with the cgroup below


def _pid(host_dir: str) -> int | None:
    try:
        pid = int((engine_dir(host_dir) / "docker.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    # Only if it is still a dockerd of this host (the pid may have been reused since).
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if str(engine_dir(host_dir) / "docker.pid").encode() not in cmdline:
        return None
    return pid


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cgroup_dirs(cgroup: str) -> list[Path]:
    """The cgroup in every hierarchy it exists in (v1 controllers, or the v2 tree)."""
    name = cgroup.strip("/")
    if not name or "/" in name or name.startswith("."):
        return []
    found = [CGROUP_ROOT / name] if (CGROUP_ROOT / name).is_dir() else []
    try:
        hierarchies = sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir())
    except OSError:
        return found
    found += [h / name for h in hierarchies if (h / name).is_dir()]
    return found


def _remove_cgroup(cgroup: str) -> None:
    """Kill every process left in the cgroup (containers whose dockerd died), then rmdir it."""
    directories = _cgroup_dirs(cgroup)
    for _ in range(50):
        pids: set[int] = set()
        for directory in directories:
            for procs in directory.rglob("cgroup.procs"):
                try:
                    pids.update(int(p) for p in procs.read_text().split())
                except (OSError, ValueError):
                    continue
        if not pids:
            break
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        time.sleep(0.1)
    for directory in directories:
        for child in sorted(
            (p for p in directory.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
        ):
            _rmdir(child)
        _rmdir(directory)


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()
