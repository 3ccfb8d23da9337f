"""The router's own process: a fresh interpreter that holds the daemon and nothing else.

`meshnet launch --foreground` parses and checks its options with the CLI, then replaces itself
with this module (exec: the PID, the terminal and systemd's supervision stay the same), handing
the Config over in an anonymous memory file. The router so never holds the CLI's modules (click,
rich, httpx and the command modules: about 9 MiB of an idle router's memory), and the password
never appears in its argv or environment. The new interpreter imports meshnet from where the
launching one did (``-P`` keeps the working directory off ``sys.path``).
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import meshnet
from meshnet import logfile
from meshnet.config import Config
from meshnet.errors import MeshnetError, first_meshnet_error

log = logging.getLogger("meshnet.daemon")


@dataclass(frozen=True)
class Launch:
    config: Config
    log_to_state_dir: bool
    debug: bool


def exec_router(launch: Launch) -> NoReturn:
    """Replace this process with a router running ``launch``."""
    fd = os.memfd_create("meshnet-launch", 0)  # inheritable: no MFD_CLOEXEC
    with os.fdopen(os.dup(fd), "wb") as f:
        pickle.dump(launch, f)
    os.lseek(fd, 0, os.SEEK_SET)
    package_root = str(Path(meshnet.__file__).resolve().parent.parent)
    bootstrap = (
        f"import sys; sys.path.insert(0, {package_root!r}); "
        f"from meshnet.router_process import main; sys.exit(main({fd}))"
    )
    sys.stdout.flush()
    sys.stderr.flush()
    # The launch's own arguments follow (unused): `ps` still shows `meshnet launch --foreground`.
    os.execv(sys.executable, [sys.executable, "-P", "-c", bootstrap, "meshnet", *sys.argv[1:]])


def main(fd: int) -> int:
    """Run the router handed over in ``fd``; errors end as one line and an exit code, as in
    the CLI."""
    with os.fdopen(fd, "rb") as f:
        launch: Launch = pickle.load(f)
    return run(launch)


def run(launch: Launch) -> int:
    """Run a router in this process until it stops; its exit code. Also what a lab's spawner
    calls in each router it forks (meshnet.lab.spawner)."""
    config = launch.config
    # The sleeve's bulk path imports numpy, whose OpenBLAS starts worker threads (one per core).
    # Measured in a 2-host lab: with them, the second ping of an iperf3 run (the import runs
    # as the stream begins) took 8-42 ms and the import 80-130 ms; with one thread, neither
    # stalled (40 ms). The router never multiplies matrices.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if launch.log_to_state_dir:
        logfile.log_to_file(config.log_file, config.log_level)
    else:
        logging.basicConfig(format=logfile.FORMAT)  # stderr, as the CLI logs
        logfile.set_level(config.log_level)
    try:
        try:
            # Imported here, after the hand-over: this module is imported by the CLI too.
            import trio

            from meshnet import daemon

            trio.run(daemon.run, config)
        except BaseExceptionGroup as group:
            error = first_meshnet_error(group)
            if error is None:
                raise
            raise error from group
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except MeshnetError as e:
        if launch.debug:
            traceback.print_exc()
        return _fail(str(e))
    except Exception as e:
        # A bug, not the user's mistake: the traceback goes to the log too, always (a router
        # that 100 others start beside may crash once in a long while; --debug is too late).
        log.critical("internal error, the router stops", exc_info=e)
        if launch.debug:
            traceback.print_exc()
            return 1
        return _fail(f"internal error: {type(e).__name__}: {e} (the traceback is in the log)")
    return 0


def _fail(message: str, code: int = 1) -> int:
    print(f"meshnet: {message}", file=sys.stderr)
    return code
