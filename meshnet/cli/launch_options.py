"""The settings of `meshnet launch`, declared once.

Each ``LaunchOption`` names a flag and the ``Config`` field it fills; from that one list come the
click options of `meshnet launch`, the ``Config`` they build, and the arguments a background
launch hands to its `launch --foreground` child. Defaults live in ``Config`` only: a flag's click
default is the ``Config`` default as text (shown by `--help`), or, where ``Config`` makes it at
run time (the host name, paths from the environment), none: ``Config`` fills it in.

Every flag can also be set by an environment variable named after it: ``--dns-ttl`` is
``MESHNET_DNS_TTL``, ``--no-fastdp`` is ``MESHNET_NO_FASTDP`` (a switch: ``1`` or ``true``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from meshnet.config import DEFAULT_API_SOCKET, DEFAULT_STATE_DIR, Config
from meshnet.constants import MAX_OVERLAY_MTU, MIN_OVERLAY_MTU
from meshnet.dns.settings import DnsSettings
from meshnet.errors import UserError
from meshnet.gossip.connection_maker import normalize_address
from meshnet.integrations.docker.settings import DockerSettings, default_docker_host


def envvar(flag: str) -> str:
    """The naming rule: ``--dns-ttl`` -> ``MESHNET_DNS_TTL``."""
    return "MESHNET_" + flag.removeprefix("--").upper().replace("-", "_")


def _text(value: Any) -> str:
    return str(value)


def _keep(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class LaunchOption:
    """One flag of `meshnet launch` and the ``Config`` field it sets.

    ``field`` is a ``Config`` attribute, dotted inside a nested settings value (``dns.ttl``).
    ``switch``: None for a flag taking a value; else the flag takes none and sets the field to
    this value (``--no-fastdp`` sets ``fastdp`` to False). ``parse`` turns what click read into
    the field's value (UserError, one line, on a mistake); ``text`` is its inverse, for the
    background child's arguments. ``secret`` values go to the child by environment, never argv.
    """

    flag: str
    field: str
    help: str
    type: click.ParamType[Any, Any] | None = None
    metavar: str | None = None
    switch: bool | None = None
    multiple: bool = False
    parse: Callable[[Any], Any] = _keep
    text: Callable[[Any], str] = _text
    secret: bool = False
    default: Callable[[], Any] | None = None  # only where the CLI's default is not Config's
    show_default: str | None = None  # for a Config default made at run time (or overridden)

    @property
    def envvar(self) -> str:
        return envvar(self.flag)

    @property
    def param(self) -> str:
        """The keyword argument click passes it as."""
        return self.flag.removeprefix("--").replace("-", "_")

    def click_option(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """The click option; its default is Config's (as text), or none (Config fills it in)."""
        default: Any = self.default
        shown: bool | str = self.show_default or False
        static = _field_default(self.field)
        if default is None and not self.multiple and static not in _NO_DEFAULT:
            default, shown = self.text(static), True
        if self.switch is not None:
            return click.option(
                self.flag,
                self.param,
                is_flag=True,
                envvar=self.envvar,
                show_envvar=True,
                help=self.help,
            )
        return click.option(
            self.flag,
            self.param,
            type=self.type,
            metavar=self.metavar,
            multiple=self.multiple,
            default=default,
            show_default=shown,
            envvar=self.envvar,
            show_envvar=True,
            help=self.help,
        )


#: Config defaults that are not shown, and not passed to click: "nothing" (or made at run time).
_NO_DEFAULT: tuple[Any, ...] = (dataclasses.MISSING, None, (), "")

#: Where a dotted field lives: ``dns.ttl`` is ``DnsSettings.ttl``, held in ``Config.dns``.
SECTIONS: dict[str, type[Any]] = {"": Config, "dns": DnsSettings, "docker": DockerSettings}


def _field_default(path: str) -> Any:
    """The field's static default in ``Config`` (or its section), or MISSING."""
    section, _, name = path.rpartition(".")
    return {f.name: f for f in dataclasses.fields(SECTIONS[section])}[name].default


class Seconds(click.FloatRange):
    """A finite number of seconds in a range (click's FloatRange lets ``nan`` through: every
    comparison with it is false)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        converted = super().convert(value, param, ctx)
        if not math.isfinite(converted):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return converted


def _network(flag: str) -> Callable[[str], ipaddress.IPv4Network]:
    def parse(text: str) -> ipaddress.IPv4Network:
        try:
            network = ipaddress.IPv4Network(text)
        except ValueError as e:
            if ":" in text:  # IPv6: the IPv6 ring has flags of its own
                raise UserError(
                    f"bad {flag} {text!r}: give an IPv4 range such as 10.32.0.0/12 "
                    f"(and IPv6 ones with {flag}6)"
                ) from None
            raise UserError(f"bad {flag} {text!r}: {e}") from None
        return _container_range(flag, network)

    return parse


def _network6(flag: str) -> Callable[[str], ipaddress.IPv6Network]:
    def parse(text: str) -> ipaddress.IPv6Network:
        try:
            network = ipaddress.IPv6Network(text)
        except ValueError as e:
            raise UserError(f"bad {flag} {text!r}: {e}") from None
        if network.prefixlen == 0 or network.prefixlen > 120:
            raise UserError(f"bad {flag} {network}: give a prefix length from 1 to 120")
        for what, special in (
            ("loopback, unspecified or IPv4-mapped", ipaddress.IPv6Network("::/80")),
            ("multicast", ipaddress.IPv6Network("ff00::/8")),
            ("link-local", ipaddress.IPv6Network("fe80::/10")),
        ):
            if network.overlaps(special):
                raise UserError(f"bad {flag} {network}: it overlaps {what} addresses ({special})")
        return network

    return parse


def _container_range(flag: str, network: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    """Container addresses must be unicast ones that routes can reach: not the whole address
    space (it would swallow the underlay's routes), nor loopback, multicast, link-local,
    "this network" or reserved space."""
    if network.prefixlen == 0:
        raise UserError(f"bad {flag} {network}: the whole address space; give a private range")
    for what, special in (
        ("loopback", ipaddress.IPv4Network("127.0.0.0/8")),
        ("multicast", ipaddress.IPv4Network("224.0.0.0/4")),
        ("link-local", ipaddress.IPv4Network("169.254.0.0/16")),
        ('"this network"', ipaddress.IPv4Network("0.0.0.0/8")),
        ("reserved", ipaddress.IPv4Network("240.0.0.0/4")),
    ):
        if network.overlaps(special):
            raise UserError(f"bad {flag} {network}: it overlaps {what} addresses ({special})")
    return network


def _trusted_subnets(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(cidr.strip()) for cidr in text.split(",") if cidr.strip())
    except ValueError as e:
        raise UserError(f"bad --trusted-subnets {text!r}: {e}") from None


def _loopback_address(text: str) -> tuple[str, int]:
    """HOST:PORT (or [V6]:PORT) on loopback: the API has no authentication but the socket's
    mode, so it is never served where another host could reach it."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        if not sep or not ipaddress.ip_address(host).is_loopback:
            raise ValueError
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError
    except ValueError:
        raise UserError(
            f"--http-addr {text}: expected a loopback HOST:PORT, e.g. 127.0.0.1:6782"
        ) from None
    return host, number


def _any_address(text: str) -> tuple[str, int]:
    """HOST:PORT (or [V6]:PORT) on any address: what is served there is only /metrics."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        if not sep:
            raise ValueError
        ipaddress.ip_address(host)
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError
    except ValueError:
        raise UserError(
            f"--metrics-addr {text}: expected an IP address and port, e.g. 0.0.0.0:6782"
        ) from None
    return host, number


def _host_port(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _password(text: str) -> bytes:
    if not text:
        raise UserError("the password is empty; leave it unset to run without encryption")
    return text.encode()


_PATH = click.Path(path_type=Path)

LOG_LEVELS = ("debug", "info", "warning", "error")

LAUNCH_OPTIONS: tuple[LaunchOption, ...] = (
    # The router.
    LaunchOption(
        "--password",
        "password",
        "Encrypt and authenticate everything on the wire.",
        parse=_password,
        text=bytes.decode,
        secret=True,
    ),
    LaunchOption(
        "--no-resume",
        "resume",
        "Forget the peers that `connect` and `forget` saved in the state directory.",
        switch=False,
    ),
    LaunchOption(
        "--mtu",
        "mtu",
        "The overlay's MTU (containers, bridge, sleeve, VXLAN); at most the underlay's MTU "
        "minus 146  [default: that]",
        click.IntRange(MIN_OVERLAY_MTU, MAX_OVERLAY_MTU),
    ),
    LaunchOption(
        "--log-level",
        "log_level",
        "How much the router logs (also in the background, to STATE_DIR/meshnet.log).",
        click.Choice(LOG_LEVELS, case_sensitive=False),
        parse=str.lower,
    ),
    LaunchOption(
        "--nickname", "nickname", "Name shown for this peer.", show_default="the host name"
    ),
    LaunchOption(
        "--port", "port", "TCP (control) and UDP (data) port.", type=click.IntRange(1, 65535)
    ),
    LaunchOption(
        "--state-dir",
        "state_dir",
        "Where identity and state persist.",
        type=_PATH,
        show_default=str(DEFAULT_STATE_DIR),
    ),
    LaunchOption(
        "--api-socket",
        "api_socket",
        "The daemon's API socket.",
        type=_PATH,
        show_default=str(DEFAULT_API_SOCKET),
    ),
    LaunchOption(
        "--conn-limit",
        "conn_limit",
        "Most authenticated connections to keep at once.",
        click.IntRange(1, 10000),
    ),
    LaunchOption(
        "--discovery-limit",
        "discovery_limit",
        "Dial peers learned from others only while fewer connections than this are up; peers "
        "we exchange traffic with are dialled beyond it (up to --conn-limit).",
        click.IntRange(0, 10000),
    ),
    LaunchOption(
        "--no-discovery",
        "discovery",
        "Connect only to the given peers, not to peers learned from others.",
        switch=False,
    ),
    LaunchOption(
        "--heartbeat-interval",
        "heartbeat_interval",
        "Idle time before a heartbeat; three missed ones mean a dead connection.",
        Seconds(0.1, 300),
        metavar="SECONDS",
    ),
    LaunchOption(
        "--no-dataplane",
        "dataplane",
        "Run only the control plane: no bridge, TAP or UDP (a pure router of gossip).",
        switch=False,
    ),
    LaunchOption(
        "--no-fastdp",
        "fastdp",
        "Send everything over the sleeve, never over kernel VXLAN.",
        switch=False,
    ),
    LaunchOption(
        "--fastdp-port",
        "fastdp_port",
        "UDP port of kernel VXLAN (fastdp); every peer must use the same one.",
        click.IntRange(1, 65535),
        show_default="--port + 1",
    ),
    LaunchOption(
        "--trusted-subnets",
        "trusted_subnets",
        "With a password, peers in these subnets may still use fastdp (unencrypted VXLAN).",
        metavar="CIDR,...",
        parse=_trusted_subnets,
        text=lambda subnets: ",".join(str(n) for n in subnets),
    ),
    LaunchOption(
        "--no-isolation",
        "isolation",
        "Run without nftables: containers of every subnet reach each other, from any address.",
        switch=False,
    ),
    LaunchOption(
        "--no-masq-local",
        "no_masq_local",
        "Traffic from outside the overlay to containers on this host keeps its source address.",
        switch=True,
    ),
    LaunchOption(
        "--http-addr",
        "http_addr",
        "Also serve the API (and /metrics) over HTTP on this loopback address.",
        metavar="HOST:PORT",
        parse=_loopback_address,
        text=_host_port,
    ),
    LaunchOption(
        "--metrics-addr",
        "metrics_addr",
        "Serve only GET /metrics over HTTP on this address (any, e.g. 0.0.0.0:6782 for a "
        "Prometheus elsewhere); the rest of the API stays on the socket.",
        metavar="HOST:PORT",
        parse=_any_address,
        text=_host_port,
    ),
    # IPAM (checked together with the peers in ``config_from_options``).
    LaunchOption(
        "--ipalloc-range",
        "ipalloc_range",
        "The range container addresses are allocated from, divided among the peers.",
        metavar="CIDR",
        parse=_network("--ipalloc-range"),
    ),
    LaunchOption(
        "--ipalloc-default-subnet",
        "ipalloc_default_subnet",
        "Where `attach` allocates by default  [default: the whole range]",
        metavar="CIDR",
        parse=_network("--ipalloc-default-subnet"),
    ),
    LaunchOption(
        "--ipalloc-init",
        "ipalloc_init",
        "How the range is first divided  [default: consensus over the launch peers and us]",
        metavar="consensus[=N]|seed=NAME,...|observer",
    ),
    LaunchOption(
        "--ipalloc-range6",
        "ipalloc_range6",
        "The IPv6 range containers' IPv6 addresses are allocated from  [default: a ULA /48 "
        "derived from the peers the IPv4 range was first divided among]",
        metavar="CIDR",
        parse=_network6("--ipalloc-range6"),
    ),
    LaunchOption(
        "--ipalloc-default-subnet6",
        "ipalloc_default_subnet6",
        "Where `attach` allocates IPv6 addresses by default  [default: the range's first /64]",
        metavar="CIDR",
        parse=_network6("--ipalloc-default-subnet6"),
    ),
    LaunchOption(
        "--no-ipv6",
        "ipv6",
        "Containers get IPv4 addresses only (no IPv6 ring).",
        switch=False,
    ),
    LaunchOption(
        "--ipalloc-range-overlap-ok",
        "ipalloc_range_overlap_ok",
        "Launch even if --ipalloc-range overlaps a route this host already has.",
        switch=True,
    ),
    # DNS.
    LaunchOption(
        "--dns-domain", "dns.domain", "The domain containers' names live in.", metavar="DOMAIN"
    ),
    LaunchOption(
        "--dns-ttl",
        "dns.ttl",
        "TTL of the answers for container names.",
        click.IntRange(0, 0x7FFFFFFF),
        metavar="SECONDS",
    ),
    LaunchOption(
        "--dns-upstream",
        "dns.upstreams",
        "Server for names outside the domain (repeatable; the variable: separated by spaces)  "
        "[default: the host's resolv.conf]",
        metavar="IP[:PORT]",
        multiple=True,
        parse=tuple,
    ),
    LaunchOption(
        "--dns-address",
        "dns.addresses",
        "The DNS server's overlay address on the bridge, e.g. 10.32.1.250/12 or fd00::53/64 "
        "(repeatable, one per family; the variable: separated by spaces)  "
        "[default: an IPv4 one from IPAM]",
        metavar="CIDR",
        multiple=True,
        parse=tuple,
    ),
    LaunchOption(
        "--dns-port", "dns.port", "The DNS server's UDP and TCP port.", click.IntRange(1, 65535)
    ),
    LaunchOption(
        "--dns-upstream-timeout",
        "dns.upstream_timeout",
        "How long upstream servers may take before the client gets SERVFAIL.",
        Seconds(0.1, 60),
        metavar="SECONDS",
    ),
    # Docker.
    LaunchOption(
        "--docker-host",
        "docker.host",
        "The Docker Engine API: attach by container id, watch events, serve the plugin.",
        metavar="URL",
        default=default_docker_host,  # the CLI follows $DOCKER_HOST, as docker's client does
        show_default="$DOCKER_HOST or unix:///var/run/docker.sock",
    ),
    LaunchOption(
        "--no-docker",
        "docker.enabled",
        "Ignore Docker: no event watcher, no network or IPAM plugin.",
        switch=False,
    ),
    LaunchOption(
        "--docker-plugin-dir",
        "docker.plugin_dir",
        "Where to put the plugin socket meshnet.sock for dockerd to find.",
        type=_PATH,
    ),
    LaunchOption(
        "--no-docker-plugin",
        "docker.plugin",
        "Watch Docker, but serve no network or IPAM plugin.",
        switch=False,
    ),
)


def launch_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Adds every launch option to a click command, in the order above."""
    for option in reversed(LAUNCH_OPTIONS):
        f = option.click_option()(f)
    return f


def _given(option: LaunchOption, value: Any) -> bool:
    if option.switch is not None:
        return bool(value)
    if option.multiple:
        return bool(value)
    return value is not None


def config_from_options(
    peers: Iterable[str], options: Mapping[str, Any], *, password: bytes | None = None
) -> Config:
    """The Config of a launch: ``options`` as click passed them (by ``LaunchOption.param``).

    Flags not given keep the Config default. ``password`` (read from --password-file) stands
    for --password. A mistake is one line (UserError) before anything starts.
    """
    fields: dict[str, dict[str, Any]] = {"": {}, "dns": {}, "docker": {}}
    for option in LAUNCH_OPTIONS:
        value = options.get(option.param)
        if not _given(option, value):
            continue
        section, _, name = option.field.rpartition(".")
        fields[section][name] = option.switch if option.switch is not None else option.parse(value)
    top = fields[""]
    if password is not None:
        if "password" in top:
            raise UserError("give --password or --password-file, not both")
        top["password"] = password
    peer_list = list(peers)
    port = top.get("port", _field_default("port"))
    config = Config(
        peers=tuple(normalize_address(p, port) for p in peer_list),
        dns=DnsSettings(**fields["dns"]),
        docker=DockerSettings(**fields["docker"]),
        **top,
    )
    _check_ipalloc(config, len(peer_list))
    _check_ports(config)
    return config


def _check_ports(config: Config) -> None:
    """The sleeve (UDP --port) and VXLAN cannot share a port; port + 1 must exist."""
    if config.vxlan_port > 65535:
        raise UserError(
            f"--port {config.port}: fastdp would use {config.vxlan_port}; give --fastdp-port"
        )
    if config.vxlan_port == config.port:
        raise UserError(
            f"--fastdp-port {config.vxlan_port} is --port: the sleeve and VXLAN need a UDP "
            "port each"
        )


def _check_ipalloc(config: Config, peers: int) -> None:
    """The IPAM settings together, so that a mistake is one line before anything starts."""
    # Imported here: it pulls in trio, which the other commands' start-up must not pay for.
    from meshnet.ipam.service import ipv6_settings, parse_init

    allocation_range, subnet = config.ipalloc_range, config.ipalloc_default_subnet
    if allocation_range.num_addresses < 4:
        raise UserError(f"--ipalloc-range {allocation_range} is too small")
    if subnet is not None and not subnet.subnet_of(allocation_range):
        raise UserError(
            f"--ipalloc-default-subnet {subnet} is not inside --ipalloc-range {allocation_range}"
        )
    if config.ipalloc_init:
        parse_init(config.ipalloc_init, peers)
    ipv6_settings(config)


MIN_PASSWORD_BYTES = 16
"""Below this a password is worth a warning: anyone reaching the port may guess it online."""


def launch_warnings(config: Config, *, password_on_command_line: bool = False) -> list[str]:
    """What a launch allows but a user should hear about loudly: each one line.

    ``password_on_command_line``: --password was given as a flag (not MESHNET_PASSWORD).
    """
    warnings = []
    if not config.isolation and config.dataplane:
        warnings.append(
            "--no-isolation: containers are not kept to their subnets nor to their own "
            "addresses; any of them may reach every subnet and spoof any address"
        )
    if config.password is not None and len(config.password) < MIN_PASSWORD_BYTES:
        warnings.append(
            f"the password has only {len(config.password)} bytes: anyone who reaches port"
            f" {config.port} may guess it online (5 tries per address, then one every 10 s);"
            " use --password-file with a random secret (head -c 32 /dev/urandom | base64)"
        )
    if password_on_command_line:
        warnings.append(
            "--password on the command line is visible to every local user (ps, /proc);"
            " use --password-file or MESHNET_PASSWORD"
        )
    for network in config.trusted_subnets:
        if not network.is_private:
            warnings.append(
                f"--trusted-subnets {network} is not a private network: with a password, fastdp "
                "still carries frames in the clear (unencrypted VXLAN) to every peer in it"
            )
    return warnings


def _value(config: Config, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def relaunch_args(config: Config) -> list[str]:
    """``config`` as `meshnet launch` arguments (peers last): what a background launch runs
    `launch --foreground` with. Secrets are left out (see ``relaunch_environment``)."""
    args: list[str] = []
    for option in LAUNCH_OPTIONS:
        value = _value(config, option.field)
        if option.secret or value is None:
            continue
        if option.switch is not None:
            args += [option.flag] if value == option.switch else []
        elif option.multiple:
            for item in value:
                args += [option.flag, option.text(item)]
        elif option.text(value):
            args += [option.flag, option.text(value)]
    return [*args, "--", *config.peers]


def relaunch_environment(config: Config, environ: Mapping[str, str]) -> dict[str, str]:
    """The background child's environment: ``environ`` without the launch variables (its
    arguments say everything), and the password, which never goes on a command line."""
    launch_variables = {o.envvar for o in LAUNCH_OPTIONS} | {envvar("--password-file")}
    env = {k: v for k, v in environ.items() if k not in launch_variables}
    for option in LAUNCH_OPTIONS:
        value = _value(config, option.field)
        if option.secret and value is not None:
            env[option.envvar] = option.text(value)
    return env
