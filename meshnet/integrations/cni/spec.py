"""The CNI protocol without I/O: environment, network configuration, results and errors.

What a runtime hands a plugin (``CNI_*`` variables and a JSON network configuration on stdin)
goes in; a validated ``Invocation`` or a ``CniError`` with the spec's code comes out, and
``Result.encode`` writes the result in the format of the configuration's ``cniVersion``. The
rules follow the CNI specification 1.1 (and the reference plugins' ``skel`` where the
specification leaves the order of checks open):

* variables a command requires but that are missing or empty: code 4, naming all of them; an
  invalid container id or interface name is an invalid variable too (4);
* stdin that is not a JSON object, or a well-known field of the wrong JSON type: code 6;
* a configuration without a valid network ``name``, or with an invalid value: code 7;
* a ``cniVersion`` we do not implement (none at all means 0.1.0): code 1; so is ``CHECK``
  below 0.4.0 and ``STATUS``/``GC`` below 1.1.0;
* fields we refuse rather than silently ignore (a delegated ``ipam``, ``ipMasq``): code 2.

Result formats: 0.3.x/0.4.0 carry ``ips[].version``; 1.0.0 drops it; 1.1.0 adds
``interfaces[].mtu``. ``ips[].interface`` is an index into ``interfaces`` in all of them.

Both families: the configuration's ``subnet`` is one subnet or a list with at most one of each
family (a CIDR, or ``default``/``default6`` for the router's default subnet of that family);
without it the container gets IPv4 only, as before IPv6 existed. A result lists every address,
a route for each subnet and, when the router's DNS server is the result's, its address of each
family the container has.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum, IntEnum
from ipaddress import IPv4Network, IPv6Interface, IPv6Network, ip_address, ip_interface, ip_network
from pathlib import Path
from typing import Any

from meshnet.errors import bad_address, why

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"
#: The daemon's API socket unless the network configuration says otherwise
#: (``meshnet.config.DEFAULT_API_SOCKET``; not imported, to keep the plugin's start fast).
DEFAULT_API_SOCKET = Path("/run/meshnet/meshnet.sock")
#: Long enough for an allocation that waits for the IPAM ring or a donation (30 s in the daemon).
DEFAULT_TIMEOUT = 60.0
OWNER_SCHEME = "cni"

# Container ids and network names: an alphanumeric first, then alphanumerics, "_", "." or "-".
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


class Code(IntEnum):
    """Error codes: 1-99 are the spec's well-known ones, 100 and up are ours."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_NETWORK_CONFIG = 7
    TRY_AGAIN_LATER = 11
    PLUGIN_NOT_AVAILABLE = 50  # STATUS: cannot service ADD
    #: The daemon refused or failed the request; its message says why.
    DAEMON_ERROR = 100
    #: CHECK found the container's networking not as the previous result says.
    CHECK_FAILED = 101
    #: Anything unexpected (the reference plugins' ErrInternal).
    INTERNAL = 999


class CniError(Exception):
    """An error the plugin reports on stdout as the spec's error object, exiting non-zero."""

    def __init__(self, code: Code, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def encode(self, version: str = LATEST) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": version, "code": int(self.code), "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


class Command(Enum):
    ADD = "ADD"
    DEL = "DEL"
    CHECK = "CHECK"
    STATUS = "STATUS"
    GC = "GC"
    VERSION = "VERSION"


#: Variables each command requires besides CNI_COMMAND. CNI_NETNS is optional for DEL (the
#: namespace may be gone). CNI_PATH is not required: this plugin delegates to no other plugin.
REQUIRED: dict[Command, tuple[str, ...]] = {
    Command.ADD: ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    Command.CHECK: ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    Command.DEL: ("CNI_CONTAINERID", "CNI_IFNAME"),
    Command.STATUS: (),
    Command.GC: (),
    Command.VERSION: (),
}
#: The oldest configuration version that allows the command.
MINIMUM_VERSION = {Command.CHECK: "0.4.0", Command.STATUS: "1.1.0", Command.GC: "1.1.0"}


@dataclass(frozen=True)
class Environment:
    command: Command
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = field(default_factory=dict)

    def owner(self, network: str) -> str:
        """The daemon's key for this attachment's addresses; see ``owner_id``."""
        return owner_id(network, self.container_id, self.ifname)


def owner_id(network: str, container_id: str, ifname: str) -> str:
    """``cni:NETWORK:CONTAINER:IFNAME``: the spec's key for a plugin's state (network name,
    container id, interface). None of the three may hold a ":", so the key is unambiguous and
    ``owner_prefix(network)`` selects exactly one network's attachments."""
    return f"{owner_prefix(network)}{container_id}:{ifname}"


def owner_prefix(network: str) -> str:
    return f"{OWNER_SCHEME}:{network}:"


def parse_environment(env: Mapping[str, str]) -> Environment:
    """The ``CNI_*`` variables; CniError 4 naming every missing or invalid one."""
    text = env.get("CNI_COMMAND", "")
    if not text:
        raise CniError(Code.INVALID_ENVIRONMENT, "required env variables [CNI_COMMAND] missing")
    try:
        command = Command(text)
    except ValueError:
        raise CniError(Code.INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {text}") from None
    missing = [name for name in REQUIRED[command] if not env.get(name)]
    if missing:
        raise CniError(
            Code.INVALID_ENVIRONMENT, f"required env variables [{','.join(missing)}] missing"
        )
    container_id = env.get("CNI_CONTAINERID", "")
    ifname = env.get("CNI_IFNAME", "")
    if command in (Command.ADD, Command.CHECK, Command.DEL):
        if not _IDENTIFIER.fullmatch(container_id):
            raise CniError(
                Code.INVALID_ENVIRONMENT,
                "invalid characters in CNI_CONTAINERID",
                f"{container_id!r}: must start with a letter or digit, then letters, digits, "
                "'_', '.' or '-'",
            )
        check_interface_name(ifname)
    return Environment(
        command=command,
        container_id=container_id,
        netns=env.get("CNI_NETNS", ""),
        ifname=ifname,
        args=parse_args(env.get("CNI_ARGS", "")),
    )


def check_interface_name(name: str) -> None:
    """Linux's rules, as the spec states them for CNI_IFNAME."""
    why = ""
    if not name:
        why = "empty"
    elif len(name.encode()) > 15:
        why = "longer than 15 bytes"
    elif name in (".", ".."):
        why = "'.' or '..'"
    elif any(c in name for c in "/:") or any(c.isspace() for c in name):
        why = "contains '/', ':' or whitespace"
    if why:
        raise CniError(
            Code.INVALID_ENVIRONMENT, "invalid CNI_IFNAME", f"interface name {name!r}: {why}"
        )


def parse_args(text: str) -> dict[str, str]:
    """``CNI_ARGS``: ``KEY=VALUE`` pairs separated by ";" (keys we do not know are ignored)."""
    out: dict[str, str] = {}
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(Code.INVALID_ENVIRONMENT, "invalid CNI_ARGS", f"bad pair {pair!r}")
        out[key] = value
    return out


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str = ""
    mtu: int = 0
    sandbox: str = ""  # the netns path for a container's interface; empty on the host


@dataclass(frozen=True)
class IPConfig:
    address: str  # CIDR
    interface: int | None = None  # index into Result.interfaces
    gateway: str = ""


@dataclass(frozen=True)
class Route:
    dst: str
    gw: str = ""


@dataclass(frozen=True)
class Dns:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def encode(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out


@dataclass(frozen=True)
class Result:
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: Dns = field(default_factory=Dns)

    def encode(self, version: str) -> dict[str, Any]:
        """The result object in the format of ``version`` (one of SUPPORTED_VERSIONS)."""
        legacy = _version_key(version) < (1, 0, 0)
        interfaces = []
        for i in self.interfaces:
            entry: dict[str, Any] = {"name": i.name}
            if i.mac:
                entry["mac"] = i.mac
            if i.mtu and _version_key(version) >= (1, 1, 0):
                entry["mtu"] = i.mtu
            if i.sandbox:
                entry["sandbox"] = i.sandbox
            interfaces.append(entry)
        ips = []
        for ip in self.ips:
            entry = {}
            if legacy:
                entry["version"] = str(ip_interface(ip.address).version)
            entry["address"] = ip.address
            if ip.gateway:
                entry["gateway"] = ip.gateway
            if ip.interface is not None:
                entry["interface"] = ip.interface
            ips.append(entry)
        out: dict[str, Any] = {"cniVersion": version}
        if interfaces:
            out["interfaces"] = interfaces
        if ips:
            out["ips"] = ips
        if self.routes:
            out["routes"] = [{"dst": r.dst, **({"gw": r.gw} if r.gw else {})} for r in self.routes]
        out["dns"] = self.dns.encode()
        return out

    def after(self, previous: Result | None) -> Result:
        """This result appended to a previous plugin's (a chain where we are not first): its
        interfaces keep their indexes, ours move up by as many."""
        if previous is None:
            return self
        offset = len(previous.interfaces)
        ips = tuple(
            IPConfig(
                ip.address, None if ip.interface is None else ip.interface + offset, ip.gateway
            )
            for ip in self.ips
        )
        dns = self.dns if self.dns.encode() else previous.dns
        return Result(
            interfaces=previous.interfaces + self.interfaces,
            ips=previous.ips + ips,
            routes=previous.routes + self.routes,
            dns=dns,
        )

    def interface_index(self, name: str, sandbox: str) -> int | None:
        """The index of the container interface ``name`` in ``sandbox``, or None."""
        for index, i in enumerate(self.interfaces):
            if i.name == name and i.sandbox == sandbox:
                return index
        return None


def parse_result(obj: Any) -> Result:
    """A result as a runtime passes it back (``prevResult``); CniError 6 if malformed. The
    formats of 0.3.0 to 1.1.0 are read alike (a ``version`` in ``ips`` is simply ignored)."""
    try:
        return _parse_result(obj)
    except (TypeError, ValueError, KeyError) as e:
        raise CniError(Code.DECODE_FAILURE, "cannot decode prevResult", str(e)) from None


def _parse_result(obj: Any) -> Result:
    if not isinstance(obj, dict):
        raise TypeError("prevResult is not an object")
    interfaces = []
    for i in _list(obj, "interfaces"):
        _require(isinstance(i, dict), "an interface is not an object")
        mtu = i.get("mtu", 0)
        _require(isinstance(mtu, int) and not isinstance(mtu, bool), "interface mtu")
        interfaces.append(
            Interface(
                name=_str(i, "name", required=True),
                mac=_str(i, "mac"),
                mtu=mtu,
                sandbox=_str(i, "sandbox"),
            )
        )
    ips = []
    for ip in _list(obj, "ips"):
        _require(isinstance(ip, dict), "an ips entry is not an object")
        address = _str(ip, "address", required=True)
        ip_interface(address)  # ValueError if it is not a CIDR
        index = ip.get("interface")
        _require(
            index is None
            or (isinstance(index, int) and not isinstance(index, bool) and index >= 0),
            "ips[].interface must be an index",
        )
        ips.append(IPConfig(address, index, _str(ip, "gateway")))
    routes = []
    for r in _list(obj, "routes"):
        _require(isinstance(r, dict), "a route is not an object")
        routes.append(Route(_str(r, "dst", required=True), _str(r, "gw")))
    dns = parse_dns(obj.get("dns"))
    return Result(tuple(interfaces), tuple(ips), tuple(routes), dns)


def parse_dns(obj: Any) -> Dns:
    if obj is None:
        return Dns()
    if not isinstance(obj, dict):
        raise TypeError("dns is not an object")
    return Dns(
        nameservers=tuple(_strings(obj, "nameservers")),
        domain=_str(obj, "domain"),
        search=tuple(_strings(obj, "search")),
        options=tuple(_strings(obj, "options")),
    )


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise TypeError(what)


def _str(obj: dict[str, Any], key: str, *, required: bool = False) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise TypeError(f"{key} must be a string")
    return value


def _list(obj: dict[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError(f"{key} must be a list")
    return value


def _strings(obj: dict[str, Any], key: str) -> list[str]:
    values = _list(obj, key)
    if not all(isinstance(v, str) for v in values):
        raise TypeError(f"{key} must be a list of strings")
    return values


# --- network configuration --------------------------------------------------------------------


class DefaultSubnet(Enum):
    """The router's default subnet of a family, as a configuration's ``subnet`` names it."""

    IPV4 = "default"
    IPV6 = "default6"

    @property
    def version(self) -> int:
        return 6 if self is DefaultSubnet.IPV6 else 4


Subnet = IPv4Network | IPv6Network | DefaultSubnet


def attach_specs(subnets: Iterable[Subnet]) -> list[str]:
    """The address specs ``/attach`` takes for a configuration's subnets."""
    return [f"net:{s.value}" if isinstance(s, DefaultSubnet) else f"net:{s}" for s in subnets]


@dataclass(frozen=True)
class NetConf:
    """One plugin's configuration as the runtime hands it over (the conflist's top-level
    ``cniVersion`` and ``name`` merged into the plugin's entry)."""

    version: str
    name: str
    type: str
    api_socket: Path = DEFAULT_API_SOCKET
    #: Where the container's addresses come from: at most one subnet of each family.
    subnets: tuple[Subnet, ...] = (DefaultSubnet.IPV4,)
    timeout: float = DEFAULT_TIMEOUT
    dns: Dns = field(default_factory=Dns)
    prev_result: Result | None = None
    #: GC: the attachments the runtime still knows, as (container id, interface name).
    valid_attachments: frozenset[tuple[str, str]] | None = None


def version_of(data: bytes) -> str:
    """The ``cniVersion`` of a configuration if it is one we speak (for error objects)."""
    try:
        obj = json.loads(data)
    except ValueError:
        return LATEST
    version = obj.get("cniVersion") if isinstance(obj, dict) else None
    return version if version in SUPPORTED_VERSIONS else LATEST


def parse_config(data: bytes, command: Command) -> NetConf:
    """The network configuration from stdin for ``command`` (not VERSION)."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(
            Code.DECODE_FAILURE, "cannot decode the network configuration", str(e)
        ) from None
    if not isinstance(obj, dict):
        raise CniError(Code.DECODE_FAILURE, "the network configuration is not a JSON object")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(Code.INVALID_NETWORK_CONFIG, "missing network name")
    if not _IDENTIFIER.fullmatch(name):
        raise CniError(
            Code.INVALID_NETWORK_CONFIG, "invalid characters found in network name", name
        )
    version = check_version(obj.get("cniVersion", "0.1.0"), command)
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind:
        raise CniError(Code.INVALID_NETWORK_CONFIG, "missing plugin type")
    for key in ("ipam", "ipMasq"):
        if obj.get(key) not in (None, False):
            raise CniError(
                Code.UNSUPPORTED_FIELD,
                f"unsupported field {key}: {json.dumps(obj[key])}",
                "meshnet allocates addresses itself (use subnet to choose one); "
                "masquerading is not done by this plugin",
            )
    return NetConf(
        version=version,
        name=name,
        type=kind,
        api_socket=_socket(obj.get("apiSocket")),
        subnets=_subnets(obj.get("subnet")),
        timeout=_timeout(obj.get("timeout")),
        dns=_config_part("dns", lambda: parse_dns(obj.get("dns"))),
        prev_result=parse_result(obj["prevResult"]) if obj.get("prevResult") else None,
        valid_attachments=_attachments(obj) if command is Command.GC else None,
    )


def check_version(version: Any, command: Command) -> str:
    """The configuration's version if we implement it and it allows ``command``; else code 1
    (code 6 if it is not a version string at all)."""
    if not isinstance(version, str):
        raise CniError(Code.DECODE_FAILURE, "cniVersion must be a string")
    if version not in SUPPORTED_VERSIONS:
        if not _VERSION.fullmatch(version):
            raise CniError(Code.DECODE_FAILURE, f"cannot parse cniVersion {version!r}")
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"config is {version!r}, plugin supports {list(SUPPORTED_VERSIONS)}",
        )
    minimum = MINIMUM_VERSION.get(command)
    if minimum is not None and _version_key(version) < _version_key(minimum):
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            f"config version does not allow {command.value}",
            f"{command.value} needs cniVersion {minimum} or later; config is {version}",
        )
    return version


def _version_key(version: str) -> tuple[int, int, int]:
    match = _VERSION.fullmatch(version)
    assert match is not None, version
    return int(match[1]), int(match[2]), int(match[3])


def _config_part(key: str, parse: Any) -> Any:
    try:
        return parse()
    except (TypeError, ValueError) as e:
        raise CniError(Code.DECODE_FAILURE, f"cannot decode {key}", str(e)) from None


def _socket(value: Any) -> Path:
    if value is None:
        return DEFAULT_API_SOCKET
    if not isinstance(value, str) or not value.startswith("/"):
        raise CniError(
            Code.INVALID_NETWORK_CONFIG, "apiSocket must be an absolute path", str(value)
        )
    return Path(value)


def _subnets(value: Any) -> tuple[Subnet, ...]:
    """``subnet``: one subnet or a list of them, at most one of each family (default: the
    router's default IPv4 subnet, and no IPv6)."""
    if value is None:
        return (DefaultSubnet.IPV4,)
    texts = value if isinstance(value, list) else [value]
    if not texts or not all(isinstance(t, str) for t in texts):
        raise CniError(
            Code.INVALID_NETWORK_CONFIG,
            "subnet must be a CIDR string or a list of them",
            json.dumps(value),
        )
    subnets = [_subnet(t) for t in texts]
    versions = [s.version for s in subnets]
    if len(set(versions)) < len(versions):
        raise CniError(
            Code.INVALID_NETWORK_CONFIG,
            "subnet: at most one subnet of each family (IPv4, IPv6)",
            ", ".join(texts),
        )
    return tuple(subnets)


def _subnet(text: str) -> Subnet:
    try:
        return DefaultSubnet(text.strip())
    except ValueError:
        pass
    try:
        return ip_network(text)
    except ValueError as e:
        message = str(bad_address(text, why(text, e, ipv6=True)))
        raise CniError(Code.INVALID_NETWORK_CONFIG, f"subnet: {message}", str(e)) from None


def _timeout(value: Any) -> float:
    if value is None:
        return DEFAULT_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 600:
        raise CniError(Code.INVALID_NETWORK_CONFIG, "timeout must be seconds in (0, 600]")
    return float(value)


def _attachments(obj: dict[str, Any]) -> frozenset[tuple[str, str]]:
    """GC's ``cni.dev/valid-attachments`` (libcni also sends it as ``cni.dev/attachments``, the
    name an earlier draft used). Without either we refuse: nothing says what is still valid."""
    value = obj.get("cni.dev/valid-attachments", obj.get("cni.dev/attachments"))
    if value is None:
        raise CniError(Code.INVALID_NETWORK_CONFIG, "GC needs cni.dev/valid-attachments")
    if not isinstance(value, list):
        raise CniError(Code.DECODE_FAILURE, "cni.dev/valid-attachments must be a list")
    out = set()
    for entry in value:
        if not isinstance(entry, dict):
            raise CniError(Code.DECODE_FAILURE, "a valid attachment is not an object")
        container, ifname = entry.get("containerID"), entry.get("ifname")
        if not isinstance(container, str) or not isinstance(ifname, str):
            raise CniError(
                Code.DECODE_FAILURE, "a valid attachment needs containerID and ifname strings"
            )
        out.add((container, ifname))
    return frozenset(out)


def stale_owners(
    network: str, owners: Iterable[str], valid: Iterable[tuple[str, str]]
) -> list[str]:
    """The owners of ``network`` the runtime no longer knows: what GC releases."""
    keep = {owner_id(network, container, ifname) for container, ifname in valid}
    prefix = owner_prefix(network)
    return sorted(o for o in owners if o.startswith(prefix) and o not in keep)


# --- building our result ----------------------------------------------------------------------


def add_result(
    attachment: Mapping[str, Any],
    netns: str,
    *,
    dns: Dns,
    dns_on_overlay: bool = False,
) -> Result:
    """What ADD returns, from the daemon's answer to ``/attach``: the host end and the container
    interface, its addresses (both families), and a route for each of their subnets (the overlay
    is one flat Ethernet: no gateway), and, when the DNS servers are the router's own
    (``dns_on_overlay``), only those of the container's families, with a route to each that
    none of its subnets holds (the route the router gives such a container, see
    ``meshnet.node.ramps``)."""
    host = Interface(name=str(attachment["host_ifname"]))
    container = Interface(
        name=str(attachment["ifname"]),
        mac=str(attachment.get("mac") or ""),
        mtu=int(attachment.get("mtu") or 0),
        sandbox=netns,
    )
    ips = []
    routes: list[Route] = []
    for text in attachment.get("addresses", ()):
        iface = ip_interface(text)
        if isinstance(iface, IPv6Interface) and iface.ip.is_link_local:
            continue
        ips.append(IPConfig(address=str(iface), interface=1))
        if iface.network.prefixlen < iface.max_prefixlen:
            route = Route(dst=str(iface.network))
            if route not in routes:
                routes.append(route)
    networks = [ip_interface(ip.address).network for ip in ips]
    if dns_on_overlay:  # the router's server: the addresses the container can reach
        families = {n.version for n in networks}
        servers = [a for a in dns.nameservers if ip_address(a).version in families]
        dns = replace(dns, nameservers=tuple(servers))
    for server in map(ip_address, dns.nameservers if dns_on_overlay else ()):
        same_family = [n for n in networks if n.version == server.version]
        if not any(server in n for n in same_family):
            routes.append(Route(dst=str(ip_network(server))))
    return Result(interfaces=(host, container), ips=tuple(ips), routes=tuple(routes), dns=dns)


def daemon_dns(status: Mapping[str, Any] | None) -> Dns:
    """The result's DNS from the daemon's ``/status/dns``: its server's addresses, IPv4 first
    (if it serves on port 53: resolv.conf has no ports), and the domain as the search domain."""
    if not status:
        return Dns()
    domain = str(status.get("domain") or "").rstrip(".")
    listen = status.get("listen_addresses")
    if not isinstance(listen, list):  # a router from before IPv6 names one address
        listen = [status.get("listen")]
    nameservers: tuple[str, ...] = ()
    if status.get("port", 53) == 53:
        found = [ip_interface(a).ip for a in listen if isinstance(a, str) and a]
        nameservers = tuple(str(a) for a in sorted(found, key=lambda a: a.version))
    return Dns(nameservers=nameservers, domain=domain, search=(domain,) if domain else ())


def check_against(
    prev: Result,
    ifname: str,
    netns: str,
    attachment: Mapping[str, Any] | None,
    held: Iterable[str],
) -> None:
    """CHECK: is the container interface that ``prev`` lists still there, with its MAC and
    addresses, and does IPAM still hold them for this attachment? CniError 101 if not.

    Only what this plugin made is checked: a later plugin in the chain may have changed routes.
    """
    index = prev.interface_index(ifname, netns)
    if index is None:
        raise CniError(Code.CHECK_FAILED, f"prevResult lists no interface {ifname} in {netns}", "")
    expected = prev.interfaces[index]
    addresses = [ip_interface(ip.address) for ip in prev.ips if ip.interface == index]
    if attachment is None:
        raise CniError(Code.CHECK_FAILED, f"{ifname} in {netns} is not attached to meshnet")
    if expected.mac and str(attachment.get("mac", "")).lower() != expected.mac.lower():
        raise CniError(
            Code.CHECK_FAILED,
            f"{ifname} has MAC {attachment.get('mac')}, prevResult says {expected.mac}",
        )
    present = {ip_interface(a) for a in attachment.get("addresses", ())}
    missing = [str(a) for a in addresses if a not in present]
    if missing:
        raise CniError(Code.CHECK_FAILED, f"{ifname} lacks {', '.join(missing)}")
    held_ips = {ip_address(a) for a in held}
    lost = [str(a.ip) for a in addresses if a.ip not in held_ips]
    if lost:
        raise CniError(
            Code.CHECK_FAILED, f"meshnet's IPAM no longer holds {', '.join(lost)} for {ifname}"
        )
