"""`meshnet run`'s arguments: address specs, `docker run`'s options, and what is added to them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnet.integrations.docker.lifecycle import CIDR_LABEL, wanted_addresses
from meshnet.integrations.docker.objects import ContainerInfo
from meshnet.integrations.docker.runargs import (
    docker_options,
    is_address_spec,
    run_arguments,
    split_run_args,
)

DNS = {"listen": "10.32.0.1/12", "domain": "meshnet.local.", "state": "serving"}
IMAGE = "meshnet-lab/busybox:latest"


@pytest.mark.parametrize(
    ("text", "is_spec"),
    [
        ("net:10.33.0.0/16", True),
        ("ip:10.32.0.9", True),
        ("ip:10.32.0.9/12", True),
        ("10.32.1.5/12", True),
        ("fd00::5/64", True),
        ("10.32.1.5", False),  # a bare address is not a CIDR (nor a docker option)
        ("--name", False),
        ("busybox", False),
        ("library/busybox:1.36", False),
        ("a/b", False),
        ("--", False),
    ],
)
def test_address_specs(text: str, is_spec: bool) -> None:
    assert is_address_spec(text) is is_spec


def test_specs_come_first_then_an_optional_separator() -> None:
    assert split_run_args(("net:10.33.0.0/16", "ip:10.32.0.9", "--", "--name", "web", IMAGE)) == (
        ["net:10.33.0.0/16", "ip:10.32.0.9"],
        ["--name", "web", IMAGE],
    )
    assert split_run_args(("--", "-it", IMAGE, "sh")) == ([], ["-it", IMAGE, "sh"])
    assert split_run_args(("10.32.1.5/12", IMAGE)) == (["10.32.1.5/12"], [IMAGE])
    # Only one separator is `meshnet run`'s; a later one is docker's (or the command's).
    assert split_run_args(("--", IMAGE, "--", "x")) == ([], [IMAGE, "--", "x"])
    # A spec after docker's arguments is the container's business.
    assert split_run_args(("--name", "web", "net:10.33.0.0/16")) == (
        [],
        ["--name", "web", "net:10.33.0.0/16"],
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--name", "web", IMAGE], {"--name": "web"}),
        (["--name=web", IMAGE], {"--name": "web"}),
        (["-h", "box", IMAGE], {"--hostname": "box"}),
        (["-hbox", IMAGE], {"--hostname": "box"}),
        (["--hostname", "box.example", IMAGE], {"--hostname": "box.example"}),
        (["-it", "--rm", "--name", "web", IMAGE, "sh"], {"--rm": "", "--name": "web"}),
        (["-dit", "-e", "A=1", "--name", "x", IMAGE], {"-e": "A=1", "--name": "x"}),
        (["-p8080:80", "--name", "x", IMAGE], {"-p": "8080:80", "--name": "x"}),
        (
            ["--sig-proxy=false", "--init", "--name", "x", IMAGE],
            {"--sig-proxy": "false", "--init": "", "--name": "x"},
        ),
        ([IMAGE, "--name", "not-docker's"], {}),
        (["--", IMAGE], {}),
        (["--name"], {"--name": ""}),  # docker itself will complain
        ([], {}),
    ],
)
def test_docker_options_before_the_image(args: list[str], expected: dict[str, str]) -> None:
    assert docker_options(args) == expected


options = st.lists(
    st.sampled_from(
        [["-d"], ["-it"], ["--rm"], ["-e", "X=1"], ["--env=Y=2"], ["-p", "80:80"], ["--init"]]
    ),
    max_size=4,
).map(lambda groups: [a for g in groups for a in g])
commands = st.lists(
    st.sampled_from(["--name", "evil", "-h", "x", "sleep", "1000", "--", "net:10.33.0.0/16"]),
    max_size=6,
)


@given(options, st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True), options, commands)
def test_the_name_is_read_before_the_image_never_from_the_command(
    before: list[str], name: str, after: list[str], command: list[str]
) -> None:
    args = [*before, "--name", name, *after, IMAGE, *command]
    assert docker_options(args)["--name"] == name
    argv, registered = run_arguments([], args, DNS)
    assert registered == name
    assert argv[-len(args) :] == args  # docker's own arguments pass unchanged, last
    assert argv.count("--hostname") == 1 and f"{name}.meshnet.local" in argv


def test_run_adds_detach_the_label_dns_and_a_hostname_in_the_domain() -> None:
    argv, name = run_arguments(["net:10.33.0.0/16"], ["--name", "web", IMAGE, "sleep", "9"], DNS)
    assert name == "web"
    assert argv == [
        "-d",
        "--label",
        f"{CIDR_LABEL}=net:10.33.0.0/16",
        "--dns",
        "10.32.0.1",
        "--dns-search",
        "meshnet.local",
        "--hostname",
        "web.meshnet.local",
        "--name",
        "web",
        IMAGE,
        "sleep",
        "9",
    ]


def test_a_hostname_given_is_kept() -> None:
    for args in (
        ["--name", "web", "-h", "mine", IMAGE],
        ["--hostname=mine", "--name", "web", IMAGE],
    ):
        argv, _ = run_arguments([], args, DNS)
        added = argv[: len(argv) - len(args)]
        assert "--hostname" not in added and "--dns" in added


@pytest.mark.parametrize("name", ["my_app", "x" * 60, "ünï"])
def test_names_that_make_no_hostname_get_none(name: str) -> None:
    argv, registered = run_arguments([], ["--name", name, IMAGE], DNS)
    assert registered == name  # still registered in DNS (which checks it itself)
    assert "--hostname" not in argv and "--dns" in argv


def test_without_a_name_nothing_is_registered_and_no_hostname_made() -> None:
    argv, name = run_arguments([], [IMAGE], DNS)
    assert name is None and "--hostname" not in argv


@pytest.mark.parametrize("dns", [None, {"listen": None, "domain": "meshnet.local."}])
def test_without_meshnets_dns_dockers_stays(dns: dict[str, str] | None) -> None:
    argv, name = run_arguments([], ["--name", "web", IMAGE], dns)
    assert argv == ["-d", "--label", f"{CIDR_LABEL}=", "--name", "web", IMAGE]
    assert name == "web"


specs = st.lists(
    st.sampled_from(["net:10.33.0.0/16", "ip:10.32.0.9", "10.40.0.5/12", "net:10.32.4.0/24"]),
    min_size=1,
    max_size=3,
)


@given(specs)
def test_the_label_gives_the_router_back_the_same_specs(given_specs: list[str]) -> None:
    """What `meshnet run` writes, the event watcher reads when the container starts again."""
    argv, _ = run_arguments(given_specs, [IMAGE], None)
    label = argv[argv.index("--label") + 1]
    key, _, value = label.partition("=")
    info = ContainerInfo(id="c" * 64, name="x", running=True, pid=1, labels={key: value})
    assert wanted_addresses(info) == tuple(given_specs)


def test_no_specs_label_asks_for_an_address_from_the_default_subnet() -> None:
    argv, _ = run_arguments([], [IMAGE], None)
    key, _, value = argv[argv.index("--label") + 1].partition("=")
    info = ContainerInfo(id="c" * 64, name="x", running=True, pid=1, labels={key: value})
    assert wanted_addresses(info) == ()  # attach with IPAM's choice, not "not asked"
