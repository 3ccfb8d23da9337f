"""`scripts/install-system.sh` installs meshnet system-wide, the unit runs it, uninstall removes it.

The test runs in a mount namespace of its own where each directory the script writes is an
overlay: the host's files show through, every write lands in an upper directory on a tmpfs. So
the host is untouched, and after the uninstall each upper directory must be empty: nothing the
install made is left behind, wherever it was. A fresh network namespace holds the router.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install-system.sh"
#: Every directory the install (or the router it starts) writes under.
OVERLAID = ("/opt", "/usr/local", "/etc/systemd/system", "/etc/default", "/var/lib", "/run")
APT_PACKAGES = ("iproute2", "nftables", "python3", "python3-venv", "ca-certificates")
#: What systemd gives a service: no PATH of a login shell, no virtualenv.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Namespaces:
    """A process holding a fresh mount and network namespace; commands run inside it."""

    def __init__(self, holder: subprocess.Popen[bytes]) -> None:
        self.holder = holder

    def argv(self, *cmd: str, host_network: bool = False) -> list[str]:
        """``host_network``: only the mount namespace (pip reaches the package index)."""
        namespaces = ["-m"] if host_network else ["-m", "-n"]
        return ["nsenter", "-t", str(self.holder.pid), *namespaces, "--", *cmd]

    def run(
        self,
        *cmd: str,
        env: dict[str, str] | None = None,
        timeout: float = 30,
        host_network: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*cmd, host_network=host_network),
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            cwd="/",
        )

    def check(self, *cmd: str, env: dict[str, str] | None = None, timeout: float = 30) -> str:
        result = self.run(*cmd, env=env, timeout=timeout)
        assert result.returncode == 0, f"{shlex.join(cmd)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout


def install_environment() -> dict[str, str]:
    """A root shell's environment without this test run's virtualenv or meshnet settings (pip's
    own settings stay: where it finds wheels)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MESHNET_", "VIRTUAL_ENV", "PYTHON")) and k != "PATH"
    }
    return {**env, "PATH": SERVICE_PATH}


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[Namespaces, dict[str, Path]]]:
    missing = [
        p
        for p in APT_PACKAGES
        if "install ok installed"
        not in subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True
        ).stdout
    ]
    if missing:
        pytest.skip(f"the install would apt-get {', '.join(missing)} onto this host")
    probe = subprocess.run(["unshare", "--mount", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare --mount --net fails here: {probe.stderr.strip()}")
    holder = subprocess.Popen(
        ["unshare", "--mount", "--net", "--propagation", "private", "sleep", "600"]
    )
    ns = Namespaces(holder)
    try:
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        time.sleep(0.1)  # unshare has exec'd sleep in the new namespaces
        ns.check("mount", "-t", "tmpfs", "tmpfs", str(scratch))
        uppers = {}
        for i, directory in enumerate(OVERLAID):
            upper, work = scratch / f"upper{i}", scratch / f"work{i}"
            ns.check("mkdir", str(upper), str(work))
            options = f"lowerdir={directory},upperdir={upper},workdir={work}"
            mounted = ns.run("mount", "-t", "overlay", "overlay", "-o", options, directory)
            if mounted.returncode != 0:
                pytest.skip(f"cannot mount an overlay on {directory}: {mounted.stderr.strip()}")
            uppers[directory] = upper
        ns.check("ip", "link", "set", "lo", "up")
        yield ns, uppers
    finally:
        holder.kill()  # its namespaces, their mounts and links go with it
        holder.wait()


def leftovers(ns: Namespaces, uppers: dict[str, Path]) -> list[str]:
    """Paths written under the overlaid directories: what their upper dirs hold, except the
    host's own directories, which the overlay copies up when something is made in them."""
    found = []
    for directory, upper in uppers.items():
        listing = ns.check("find", str(upper), "-mindepth", "1", "-printf", "%y %p\\n")
        for line in listing.splitlines():
            kind, path = line.split(" ", 1)
            original = directory + path.removeprefix(str(upper))
            if not (kind == "d" and Path(original).is_dir()):  # seen from the host
                found.append(original)
    return found


def unit_command(unit: str) -> tuple[list[str], str]:
    """ExecStart as argv (before expanding variables) and the EnvironmentFile, from the unit."""
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    return shlex.split(settings["ExecStart"]), settings["EnvironmentFile"].removeprefix("-")


def read_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd reads them (comments and blank lines skipped, quotes removed)."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = shlex.split(value)[0] if value.strip() else ""
    return env


def expand(argv: list[str], env: dict[str, str]) -> list[str]:
    """systemd's rule: a word that is $NAME becomes the variable's words (none if empty)."""
    out: list[str] = []
    for word in argv:
        if word.startswith("$") and not word.startswith("${"):
            out += env.get(word[1:], "").split()
        else:
            out.append(word)
    return out


def build_wheel(directory: Path) -> Path:
    """meshnet's wheel, as a release would ship it."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(directory), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = directory.glob("meshnet_overlay-*.whl")
    return wheel


def test_install_run_by_the_unit_and_uninstall_leaves_nothing(
    sandbox: tuple[Namespaces, dict[str, Path]], tmp_path: Path
) -> None:
    ns, uppers = sandbox
    started = time.monotonic()
    installed = ns.run(
        str(SCRIPT), "--no-systemctl", env=install_environment(), timeout=240, host_network=True
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "installed; wrote /etc/default/meshnet" in installed.stdout
    install_seconds = time.monotonic() - started

    # What a user finds: the command, the plugin, the unit, the settings (root's only).
    assert ns.check("readlink", "/usr/local/bin/meshnet") == "/opt/meshnet/bin/meshnet\n"
    assert ns.check("stat", "-c", "%a", "/etc/default/meshnet") == "600\n"
    python = "/opt/meshnet/bin/python"
    where = ns.check(python, "-c", "import meshnet; print(meshnet.__file__)")
    assert where.startswith("/opt/meshnet/lib/"), where  # not the checkout's
    assert ns.run(python, "-c", "import pytest").returncode != 0  # no dev extras
    dist = ns.check(
        python, "-c", "from importlib.metadata import version as v; print(v('meshnet-overlay'))"
    )
    assert dist.strip() == ns.check("/usr/local/bin/meshnet", "--version").split()[-1]

    # The unit's command line with its environment file, as systemd would run it.
    unit = ns.check("cat", "/etc/systemd/system/meshnet.service")
    argv, env_path = unit_command(unit)
    assert env_path == "/etc/default/meshnet"
    env_text = ns.check("cat", env_path)
    assert "#MESHNET_PORT=6783" in env_text and "#MESHNET_METRICS_ADDR=" in env_text
    # This host's settings, as a user writes them: a nickname, and no Docker here.
    ns.check(
        "sh", "-c", f"printf 'MESHNET_NICKNAME=installed\\nMESHNET_NO_DOCKER=1\\n' >> {env_path}"
    )
    # An upgrade, from a wheel this time: the settings stay.
    wheel = build_wheel(tmp_path)
    upgraded = ns.run(
        str(SCRIPT), "--from", str(wheel), "--no-systemctl",
        env=install_environment(), timeout=240, host_network=True,
    )  # fmt: skip
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert "installed; kept /etc/default/meshnet" in upgraded.stdout
    settings = read_env_file(ns.check("cat", env_path))
    assert settings["MESHNET_NICKNAME"] == "installed"
    assert settings["MESHNET_PEERS"] == ""
    router = subprocess.Popen(
        ns.argv(*expand(argv, settings)),
        env={"PATH": SERVICE_PATH, **settings},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        deadline = time.monotonic() + 30
        while (status := ns.run("meshnet", "status", env={"PATH": SERVICE_PATH})).returncode:
            assert router.poll() is None, router.communicate()[1]
            assert time.monotonic() < deadline, status.stderr
            time.sleep(0.3)
        assert "installed" in status.stdout
        # The CNI plugin runs from the install, whatever the runtime's environment.
        version = ns.run(
            "/opt/cni/bin/meshnet-cni", env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"}
        )
        assert "1.0.0" in json.loads(version.stdout)["supportedVersions"], version.stderr
        router.send_signal(signal.SIGTERM)  # systemctl stop
        _, err = router.communicate(timeout=20)
        assert router.returncode == 0, err
    finally:
        if router.poll() is None:
            router.kill()
            router.wait()
    name = ns.check("cat", "/var/lib/meshnet/peer-name").strip()  # the default state dir
    assert name in status.stdout

    # Uninstall keeps the state unless --purge; then nothing the install made is left.
    removed = ns.run(str(SCRIPT), "--uninstall", "--no-systemctl", env=install_environment())
    assert removed.returncode == 0, removed.stderr
    assert "state in /var/lib/meshnet stays" in removed.stdout
    assert [
        p for p in leftovers(ns, uppers) if not p.startswith(("/var/lib/meshnet", "/run/meshnet"))
    ] == []
    assert ns.run("test", "-e", "/var/lib/meshnet").returncode == 0
    purged = ns.run(
        str(SCRIPT), "--uninstall", "--purge", "--no-systemctl", env=install_environment()
    )
    assert purged.returncode == 0, purged.stderr
    assert leftovers(ns, uppers) == []
    assert install_seconds < 120
