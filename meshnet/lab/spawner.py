"""Start a lab's routers by forking them from one process that imported the daemon once.

A router's start-up was mostly imports: the CLI's (to parse `launch --foreground`), then the
daemon's in the interpreter it execs (trio, pyroute2, hypercorn, dnspython...), about 0.9 CPU
seconds per host; 100 hosts paid it 100 times on 2 cores. Here the lab parses each router's
options itself (the same parsing as `meshnet launch --foreground`) and sends the resulting Launch
to a spawner: a fresh interpreter, started by the lab, that imports the daemon (never the CLI)
and then forks one child per request. The child does what `nsenter --net=NS meshnet launch
--foreground` did: a session of its own, the host's network namespace, the log as stdout and
stderr, the host's environment; then it runs the router (`router_process.run`).

The spawner has a single thread (forking a threaded process could copy a held lock into the
child); its children are its only children and it reaps them as they end. Closing its input
ends it; the routers live on (as they outlived the lab's `up` before). `down` finds routers by
their namespace, as before: nothing here is journaled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import meshnet
from meshnet import router_process
from meshnet.dataplane.kernel import netlink
from meshnet.errors import UserError
from meshnet.ipam import netcheck
from meshnet.router_process import Launch

_LENGTH = struct.Struct("!I")
LAB_DIR_VARIABLE = "MESHNET_LAB_DIR"


@dataclass(frozen=True)
class RouterStart:
    """One router to fork: what it runs, where, with what environment and warnings to log."""

    launch: Launch = field(repr=False)  # holds the password
    namespace: str
    log_file: Path
    environment: dict[str, str] = field(repr=False)
    warnings: tuple[str, ...] = ()


class Spawner:
    """The lab's end: start the spawner, ask it for routers (their PIDs), close it."""

    def __init__(self, lab_directory: Path) -> None:
        """The spawner's environment (which its routers' /proc/PID/environ shows: a forked
        child's changes to its own are not) names the lab in MESHNET_LAB_DIR, so that what
        the lab started can be found by it, as processes that ran with a host's environment
        are by its MESHNET_STATE_DIR."""
        package_root = str(Path(meshnet.__file__).resolve().parent.parent)
        # This meshnet comes before the installed one, but after PYTHONPATH's: a tree named
        # there (bench/throughput.py --compare REV) is what the routers run.
        bootstrap = (
            "import os, sys; "
            "sys.path.insert(len(os.environ.get('PYTHONPATH', '').split(os.pathsep)), "
            f"{package_root!r}); "
            "from meshnet.lab.spawner import serve; sys.exit(serve())"
        )
        self._process = subprocess.Popen(
            # Its routers inherit its command line: `ps` shows them as what they are.
            [sys.executable, "-P", "-c", bootstrap, "meshnet", "launch", "--foreground"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, LAB_DIR_VARIABLE: str(lab_directory)},
        )

    def start(self, router: RouterStart) -> int:
        """Fork a router; its PID."""
        assert self._process.stdin is not None and self._process.stdout is not None
        data = pickle.dumps(router)
        try:
            self._process.stdin.write(_LENGTH.pack(len(data)) + data)
            self._process.stdin.flush()
            reply = self._process.stdout.readline()
        except BrokenPipeError:
            reply = b""
        if not reply.strip().isdigit():
            raise UserError(f"the lab's router spawner stopped (exit {self._process.poll()})")
        return int(reply)

    def close(self) -> None:
        """End the spawner (not its routers)."""
        if self._process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()

    def __enter__(self) -> Spawner:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def serve() -> int:
    """The spawner's own end: fork a router for each request on stdin, answer its PID."""
    # The point of this process: what every router needs, imported once before any fork.
    import trio  # noqa: F401

    from meshnet import daemon  # noqa: F401

    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of `lab up`: it ends with its input
    requests, replies = sys.stdin.buffer, sys.stdout
    while (router := _receive(requests)) is not None:
        pid = os.fork()
        if pid == 0:
            os._exit(_child(router))
        replies.write(f"{pid}\n")
        replies.flush()
    return 0


def _reap(_signum: int, _frame: object) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _receive(stream: IO[bytes]) -> RouterStart | None:
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(header)
    router: RouterStart = pickle.loads(stream.read(length))
    return router


def _child(router: RouterStart) -> int:
    """In the forked child: become the router of a lab host; its exit code."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # trio waits for its own subprocesses
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setsid()  # a Ctrl-C of `lab up` reaches it only through `down`
        log = os.open(router.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(devnull)
        os.environ.clear()
        os.environ.update(router.environment)
        netlink.enter_namespace(router.namespace)  # before any thread: the whole process
        for warning in router.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        config = router.launch.config
        try:
            if not config.ipalloc_range_overlap_ok:
                netcheck.refuse_overlap(config.ipalloc_range)
        except UserError as e:
            print(f"meshnet: {e}", file=sys.stderr)
            return 1
        code = router_process.run(router.launch)
    except BaseException:
        traceback.print_exc()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    return code
