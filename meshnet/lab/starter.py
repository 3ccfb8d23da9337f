"""Start a lab's routers from one process that imports the daemon once and forks one per host.

A router's start is mostly Python importing trio, pyroute2 and every service: a lab of 100 hosts
paid it 100 times over on 2 cores. The lab runs ``python -m meshnet.lab.starter`` instead, which
imports all that once, then reads one JSON request per line on stdin::

    {"namespace": "mn-lab-h1", "argv": ["launch", "--foreground", ...],
     "env": {...}, "log": "/run/meshnet/lab/lab/hosts/h1/meshnet.log"}

and for each forks a child that enters the namespace, starts a session of its own, writes its
output to the log and runs ``meshnet ARGV`` with exactly ``env``, as ``nsenter --net=...
python -m meshnet ARGV`` would; the child's pid is written back, one per line. The starter
exits when stdin ends; its children live on (adopted by init), as background routers do.

A forked child would show the starter's command line and environment in /proc (to ps, and to
anything that finds a router by its `launch --foreground` arguments or its MESHNET_STATE_DIR),
so it writes its own over the starter's: the lab starts the starter with a blank argument and a
blank variable long enough for them.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

# The expensive imports, done here once so every forked router has them already.
import trio  # noqa: F401

from meshnet import daemon  # noqa: F401
from meshnet.cli import main as meshnet_main
from meshnet.dataplane.kernel import netlink


def run_child(request: dict[str, Any]) -> int:
    """In the forked child: become the router the request describes; returns its exit code."""
    os.setsid()  # a Ctrl-C meant for `lab up` must not reach it (`down` stops it)
    netlink.enter_namespace(request["namespace"])
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [sys.executable, "-m", "meshnet", *request["argv"]]
    show_process(sys.argv, request["env"])
    return meshnet_main(list(request["argv"]))


def show_process(argv: list[str], env: dict[str, str]) -> None:
    """Make /proc/self/cmdline and /proc/self/environ read ``argv`` and ``env``, as setproctitle
    does: the kernel reads them from the memory between arg_start and arg_end (env_start and
    env_end), which we may write. The lab gave the starter room enough for both."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # proc(5) fields 48-49 and 50-51 (fields[0] here is field 3).
    regions = ((int(fields[45]), int(fields[46])), (int(fields[47]), int(fields[48])))
    texts = (
        b"\0".join(a.encode() for a in argv),
        b"\0".join(f"{k}={v}".encode() for k, v in env.items()),
    )
    with open("/proc/self/mem", "r+b", buffering=0) as memory:
        for (start, end), text in zip(regions, texts, strict=True):
            memory.seek(start)
            memory.write(text[: end - start - 1].ljust(end - start, b"\0"))


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = run_child(request)
            except BaseException:  # never back into the parent's loop
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(pid, flush=True)


if __name__ == "__main__":
    main()
