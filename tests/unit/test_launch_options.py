"""`meshnet launch`'s options, declared once: flags, Config fields, variables and the relaunch."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from ipaddress import IPv4Network

import click
import pytest

from meshnet.cli.launch import launch
from meshnet.cli.launch_options import (
    LAUNCH_OPTIONS,
    SECTIONS,
    config_from_options,
    envvar,
    launch_warnings,
    relaunch_args,
    relaunch_environment,
)
from meshnet.config import Config
from meshnet.errors import UserError

#: Config fields no flag sets: the peers are arguments; the rest are tuned in code and tests.
NOT_FLAGS = {"peers", "handshake_timeout", "gossip_interval", "dns", "docker"}


def parse(argv: Sequence[str]) -> Config:
    """What `meshnet launch ARGV` would run with (without running anything)."""
    ctx = launch.make_context("launch", list(argv))
    params = dict(ctx.params)
    peers = params.pop("peers")
    params.pop("foreground")
    params.pop("password_file")
    return config_from_options(peers, params)


def test_every_option_names_a_field_and_every_field_has_an_option() -> None:
    covered = set()
    for option in LAUNCH_OPTIONS:
        section, _, name = option.field.rpartition(".")
        assert name in {f.name for f in dataclasses.fields(SECTIONS[section])}, option.flag
        covered.add(option.field)
    fields = {
        (f"{section}.{f.name}" if section else f.name)
        for section, owner in SECTIONS.items()
        for f in dataclasses.fields(owner)
    }
    assert fields - covered == NOT_FLAGS
    assert len({o.param for o in LAUNCH_OPTIONS}) == len(LAUNCH_OPTIONS)


def test_every_option_has_a_variable_named_after_it() -> None:
    assert envvar("--dns-upstream-timeout") == "MESHNET_DNS_UPSTREAM_TIMEOUT"
    by_flag = {o.flag: o.envvar for o in LAUNCH_OPTIONS}
    # The variables meshnet had before they were derived keep their names.
    assert by_flag["--password"] == "MESHNET_PASSWORD"
    assert by_flag["--state-dir"] == "MESHNET_STATE_DIR"
    assert by_flag["--api-socket"] == "MESHNET_API_SOCKET"
    assert by_flag["--no-docker"] == "MESHNET_NO_DOCKER"
    assert by_flag["--docker-plugin-dir"] == "MESHNET_DOCKER_PLUGIN_DIR"
    assert by_flag["--trusted-subnets"] == "MESHNET_TRUSTED_SUBNETS"
    assert by_flag["--heartbeat-interval"] == "MESHNET_HEARTBEAT_INTERVAL"
    assert by_flag["--no-masq-local"] == "MESHNET_NO_MASQ_LOCAL"


def test_a_switch_sets_the_opposite_of_the_default() -> None:
    for option in LAUNCH_OPTIONS:
        if option.switch is not None:
            section, _, name = option.field.rpartition(".")
            default = {f.name: f.default for f in dataclasses.fields(SECTIONS[section])}[name]
            assert default is (not option.switch), option.flag


def test_no_flags_give_configs_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    for option in LAUNCH_OPTIONS:
        monkeypatch.delenv(option.envvar, raising=False)
    assert parse([]) == Config()


EVERY_FLAG = [
    "--nickname", "h1", "--port", "7000", "--state-dir", "/tmp/s", "--api-socket", "/tmp/a.sock",
    "--conn-limit", "7", "--no-discovery", "--heartbeat-interval", "0.5", "--no-dataplane",
    "--no-fastdp", "--trusted-subnets", "10.0.0.0/8,fd00::/8", "--no-masq-local",
    "--http-addr", "[::1]:6782", "--ipalloc-range", "10.40.0.0/16",
    "--ipalloc-default-subnet", "10.40.1.0/24", "--ipalloc-init", "seed=aa:bb:cc:dd:ee:01",
    "--ipalloc-range6", "fd40::/48", "--ipalloc-default-subnet6", "fd40:0:0:7::/64", "--no-ipv6",
    "--dns-domain", "lab.test.", "--dns-ttl", "5", "--dns-upstream", "192.0.2.1",
    "--dns-upstream", "[fd00::1]:5353", "--dns-address", "10.40.1.250/16", "--dns-port", "5353",
    "--dns-upstream-timeout", "1.5", "--docker-host", "tcp://127.0.0.1:2375", "--no-docker",
    "--docker-plugin-dir", "/tmp/plugins", "--no-docker-plugin",
    "192.0.2.7", "192.0.2.8:7001",
]  # fmt: skip


def test_every_flag_reaches_the_config() -> None:
    config = parse(EVERY_FLAG)
    assert config.peers == ("192.0.2.7:7000", "192.0.2.8:7001")
    assert (config.nickname, config.port, config.conn_limit) == ("h1", 7000, 7)
    assert not config.discovery and not config.dataplane and not config.fastdp
    assert config.no_masq_local and config.http_addr == ("::1", 6782)
    assert [str(n) for n in config.trusted_subnets] == ["10.0.0.0/8", "fd00::/8"]
    assert config.ipalloc_default_subnet == IPv4Network("10.40.1.0/24")
    assert str(config.ipalloc_range6) == "fd40::/48" and not config.ipv6
    assert str(config.ipalloc_default_subnet6) == "fd40:0:0:7::/64"
    assert config.dns.upstreams == ("192.0.2.1", "[fd00::1]:5353")
    assert (config.dns.domain, config.dns.ttl, config.dns.port) == ("lab.test.", 5, 5353)
    assert not config.docker.enabled and not config.docker.plugin
    assert config.docker.host == "tcp://127.0.0.1:2375"


@pytest.mark.parametrize("argv", [[], EVERY_FLAG, ["--password", "secret", "192.0.2.7"]])
def test_the_background_child_runs_with_the_same_config(argv: list[str]) -> None:
    config = parse(argv)
    args = relaunch_args(config)
    assert "secret" not in args
    child = parse(args)
    assert child == dataclasses.replace(config, password=child.password)
    env = relaunch_environment(config, {"MESHNET_PASSWORD_FILE": "/x", "PATH": "/bin"})
    assert env.get("MESHNET_PASSWORD") == (None if config.password is None else "secret")
    assert env["PATH"] == "/bin" and "MESHNET_PASSWORD_FILE" not in env


def test_variables_set_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHNET_NO_FASTDP", "1")
    monkeypatch.setenv("MESHNET_DNS_TTL", "9")
    monkeypatch.setenv("MESHNET_DNS_UPSTREAM", "192.0.2.1 192.0.2.2")
    monkeypatch.setenv("MESHNET_NICKNAME", "from-env")
    config = parse(["--dns-ttl", "11"])  # a flag wins over its variable
    assert not config.fastdp and config.nickname == "from-env" and config.dns.ttl == 11
    assert config.dns.upstreams == ("192.0.2.1", "192.0.2.2")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ipalloc-default-subnet", "10.99.0.0/24"], "is not inside --ipalloc-range"),
        (["--ipalloc-range", "10.0.0.0/31"], "too small"),
        (["--ipalloc-range", "nonsense"], "bad --ipalloc-range"),
        (["--http-addr", "192.0.2.1:80"], "expected a loopback HOST:PORT"),
        (["--trusted-subnets", "10.0.0.0/33"], "bad --trusted-subnets"),
        (["--password", ""], "the password is empty"),
        (["--dns-upstream", "nope"], "bad DNS upstream"),
        (["--ipalloc-range", "0.0.0.0/0"], "the whole address space"),
        (["--ipalloc-range", "127.0.0.0/8"], "overlaps loopback"),
        (["--ipalloc-range", "224.0.0.0/4"], "overlaps multicast"),
        (["--ipalloc-range", "169.254.0.0/16"], "overlaps link-local"),
        (["--ipalloc-range", "0.0.0.0/8"], 'overlaps "this network"'),
        (["--ipalloc-range", "240.0.0.0/4"], "overlaps reserved"),
        (["--ipalloc-range", "10.0.0.0/8", "--ipalloc-default-subnet", "127.0.0.0/24"], "loopback"),
        (["--ipalloc-range6", "10.0.0.0/8"], "bad --ipalloc-range6"),
        (["--ipalloc-range6", "fe80::/64"], "overlaps link-local"),
        (["--ipalloc-range6", "ff02::/64"], "overlaps multicast"),
        (["--ipalloc-range6", "::/0"], "prefix length from 1 to 120"),
        (["--ipalloc-range6", "fd00::/124"], "prefix length from 1 to 120"),
        (["--ipalloc-default-subnet6", "fd00::/64"], "needs --ipalloc-range6"),
        (["--ipalloc-range6", "fd00::/48", "--ipalloc-default-subnet6", "fd01::/64"], "not inside"),
    ],
)
def test_mistakes_are_user_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse(argv)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("flag", ["--heartbeat-interval", "--dns-upstream-timeout"])
def test_seconds_must_be_finite(flag: str, value: str) -> None:
    with pytest.raises(click.BadParameter, match=r"not a number of seconds|not in the range"):
        parse([flag, value])


def test_trusting_public_networks_is_allowed_with_a_warning() -> None:
    assert launch_warnings(parse(["--trusted-subnets", "10.0.0.0/8,fd00::/8"])) == []
    (warning,) = launch_warnings(parse(["--trusted-subnets", "10.0.0.0/8,0.0.0.0/0"]))
    assert "0.0.0.0/0 is not a private network" in warning


def test_short_or_visible_passwords_are_allowed_with_a_warning() -> None:
    assert launch_warnings(parse(["--password", "x" * 16])) == []
    (short,) = launch_warnings(parse(["--password", "hunter2"]))
    assert "only 7 bytes" in short and "head -c 32 /dev/urandom" in short
    config = parse(["--password", "y" * 44])
    (visible,) = launch_warnings(config, password_on_command_line=True)
    assert "visible to every local user" in visible
    assert launch_warnings(parse([])) == []


def test_password_and_password_file_exclude_each_other() -> None:
    with pytest.raises(UserError, match="not both"):
        config_from_options([], {"password": "a"}, password=b"b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:6782", ("0.0.0.0", 6782)),
        ("[::]:9100", ("::", 9100)),
        ("10.0.0.5:1", ("10.0.0.5", 1)),
    ],
)
def test_metrics_addr_takes_any_address_and_goes_to_the_background_child(
    text: str, expected: tuple[str, int]
) -> None:
    config = parse(["--metrics-addr", text])
    assert config.metrics_addr == expected
    assert parse(relaunch_args(config)) == config


@pytest.mark.parametrize("bad", ["6782", "localhost:6782", "0.0.0.0:0", "0.0.0.0:70000", "x:1"])
def test_a_bad_metrics_addr_is_one_line(bad: str) -> None:
    with pytest.raises(UserError, match=r"--metrics-addr .*: expected an IP address and port"):
        parse(["--metrics-addr", bad])
