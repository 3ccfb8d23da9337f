"""The router daemon: one trio nursery tree that starts and wires every subsystem.

The services (router, IPAM, DNS, data plane, ramps) start first; the node (``meshnet.node``)
holds them and owns the use cases; the API and the Docker integration are adapters over it.

`run()` owns the root nursery; each service starts with `nursery.start` and reports readiness,
and SIGTERM/SIGINT or `meshnet stop` cancel the tree, which shuts everything down in order.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket

import trio

from meshnet import beats
from meshnet.api.app import ApiApp
from meshnet.api.server import serve_api
from meshnet.config import Config
from meshnet.dataplane.kernel import netlink
from meshnet.dataplane.service import DataPlane
from meshnet.dns.service import DnsService
from meshnet.errors import UserError
from meshnet.gossip import saved_targets
from meshnet.gossip.connection_maker import UNROUTABLE_SWEEP
from meshnet.gossip.identity import Identity, load_or_create_peer_name, new_uid
from meshnet.gossip.router import Router
from meshnet.gossip.saved_targets import SavedTargets
from meshnet.integrations.docker.service import DockerService
from meshnet.ipam.service import IpamService, ipam_config, ipv6_settings
from meshnet.node.node import Node
from meshnet.node.ramps import Ramps

log = logging.getLogger("meshnet.daemon")


async def run(
    config: Config, *, task_status: trio.TaskStatus[Identity] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the router until a signal or an API stop request; returns after a clean shutdown."""
    log.debug("settings: %s", config)  # the password is left out (repr=False)
    beats.align_with_wall_clock(trio.current_time())  # beat with the neighbours
    name = load_or_create_peer_name(config.state_dir, os.urandom)
    identity = Identity(name=name, nickname=config.nickname, uid=new_uid(os.urandom))
    if not config.resume:
        saved_targets.save(config.state_dir, SavedTargets())  # --no-resume: start clean
    router = Router(
        config,
        identity,
        config.password,
        data_path=config.dataplane,
        saved_targets=saved_targets.load(config.state_dir),
        save_targets=functools.partial(saved_targets.save, config.state_dir),
    )
    # Before the router runs, so the first connections already carry our ring.
    ipam = IpamService(
        ipam_config(config, name),
        router,
        config.state_dir,
        ipv6=ipv6_settings(config),
        nickname=config.nickname,
    )
    dns = DnsService(config, router, ipam)  # registers its channel: before the router runs too
    dataplane = None
    if config.dataplane:
        dataplane = DataPlane(config, router)  # registers the fastdp channel: before it runs too
    stop = trio.Event()
    try:
        await _run_services(
            config, identity, router, ipam, dns, dataplane, stop, task_status=task_status
        )
    finally:
        # The API socket goes last: `meshnet stop` returns once it is gone, and by then every
        # service has cleaned up (its devices, nftables tables and addresses).
        config.api_socket.unlink(missing_ok=True)


async def _run_services(
    config: Config,
    identity: Identity,
    router: Router,
    ipam: IpamService,
    dns: DnsService,
    dataplane: DataPlane | None,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[Identity] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signals, stop)
        try:
            await nursery.start(router.serve)
        except OSError as e:
            raise UserError(f"cannot listen on TCP port {config.port}: {e.strerror}") from None
        nursery.start_soon(_follow_routes, router)
        await nursery.start(ipam.serve)
        if dataplane is not None:
            await nursery.start(dataplane.serve)
        await nursery.start(dns.serve, dataplane)
        ramps = Ramps(config, router, dns, ipam)  # expose/hide, masquerade, isolation
        node = Node(router, ipam=ipam, dns=dns, dataplane=dataplane, ramps=ramps)
        await nursery.start(node.serve)
        # Ready at once; connects (and serves the plugin) whenever Docker answers, if ever.
        docker = DockerService(
            config.docker,
            node,
            ipam=ipam,
            dns=dns,
            nickname=config.nickname,
            port_joined=ramps.adopt_soon,  # isolated at once, not at the next scan
        )
        await nursery.start(docker.serve, dataplane)
        app = ApiApp(router, stop.set, node, docker=docker)
        await nursery.start(
            serve_api,
            app,
            config.api_socket,
            config.http_addr,
            config.metrics_addr,
        )
        log.info("%s ready; API on %s", identity, config.api_socket)
        task_status.started(identity)
        await stop.wait()
        log.info("%s stopping", identity)
        nursery.cancel_scope.cancel()


#: After telling the router of a route change, the next one waits this long: a burst (a link's
#: routes, a routing daemon's churn) costs one look at the unroutable addresses per second, not
#: one per notification.
ROUTE_CHANGE_HOLDOFF = 1.0


async def _follow_routes(router: Router) -> None:
    """Tell the router when the kernel's routes change: addresses it found no route to are
    dialled again then, instead of being retried on a clock."""
    try:
        monitor = netlink.open_route_monitor()
    except OSError as e:
        log.warning("no route notifications (%s): addresses without a route are retried "
                    "every %.0f s", e, UNROUTABLE_SWEEP)  # fmt: skip
        return
    with monitor:
        while True:
            await trio.lowlevel.wait_readable(monitor)
            if _routes_changed(monitor):
                router.routes_changed()
                await trio.sleep(ROUTE_CHANGE_HOLDOFF)  # what comes meanwhile waits in the socket


def _routes_changed(monitor: socket.socket) -> bool:
    """Whether what the route monitor holds now (read to the end, or a bounded part of a flood)
    reports a route change; lost notifications (ENOBUFS) count as one."""
    changed = False
    for _ in range(1024):
        try:
            data = monitor.recv(65536)
        except BlockingIOError:
            break
        except OSError:
            changed = True
            continue
        changed = changed or netlink.routes_changed(data)
    return changed


async def _stop_on_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            stop.set()
