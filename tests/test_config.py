"""Config validation: the shipped file loads; every kind of error is one line naming file, key path and problem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smarthome.core.config import (
    CONFIG_ENV,
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    MAX_NUMBER_CHARS,
    MIN_TOGGLE_PERIOD,
    ApplianceConfig,
    ConfigError,
    host_port,
    load_config,
)
from smarthome.core.envelope import MAX_VIEW_LABELS

from tests.support.base import BROKER_CONFIG, ROOT, SHIPPED_CONFIG
from tests.support.processes import smarthome


def refusal(path: Path | str) -> str:
    """The one line load_config refuses `path` with."""
    with pytest.raises(ConfigError) as error:
        load_config(path)
    return str(error.value)


def test_broker_config_loads() -> None:
    config = load_config(BROKER_CONFIG)
    assert config.broker is not None
    assert config.broker.subscribers == "tcp://*:5560"


def test_shipped_config_loads() -> None:
    config = load_config(SHIPPED_CONFIG)
    assert set(config.services) == {"light-switch", "coffee-maker", "toaster", "smart-mirror", "web", "mqtt-bridge"}
    toaster = config.services["toaster"]
    assert isinstance(toaster, ApplianceConfig)
    assert toaster.subscribe.topics == ["light"]
    assert config.publisher_of("toast") == ("toaster", toaster)
    assert config.publisher_of("heartbeat") is None  # every publisher's, no service's


def test_the_mirror_needs_no_publisher(tmp_path: Path) -> None:
    path = tmp_path / "quiet-mirror.yml"
    shipped = SHIPPED_CONFIG.read_text().replace('    publish: { topic: mirror, bind: "tcp://*:5561" }\n', "")
    path.write_text(shipped.replace(', "tcp://smart-mirror:5561"]', "]"))
    config = load_config(path)
    assert config.services["smart-mirror"].publish is None
    assert "smart-mirror" not in config.publishers()


def test_loopback_mode_moves_every_endpoint_to_127_0_0_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTHOME_LOOPBACK", "1")
    config = load_config(SHIPPED_CONFIG)
    assert config.services["light-switch"].publish.bind == "tcp://127.0.0.1:5556"
    assert config.services["smart-mirror"].subscribe.connect == ["tcp://127.0.0.1:5557", "tcp://127.0.0.1:5558"]


# (what to change in the shipped text, expected key path, expected problem)
BROKEN = {
    "unknown key": ("prep_time: 2", "prep_time: 2\n    prep_tme: 2", "services.toaster", "unknown key 'prep_tme'"),
    "missing key": ("    prep_time: 2\n", "", "services.toaster", "missing key 'prep_time'"),
    "wrong type": ("prep_time: 2", "prep_time: soon", "services.toaster.prep_time", "expected 'float', got 'str'"),
    "negative time": ("prep_time: 2", "prep_time: -1", "services.toaster.prep_time", "expected 'float' >= 0.0"),
    "port nobody binds": (
        '"tcp://toaster:5558"]',
        '"tcp://toaster:5559"]',
        "services.smart-mirror.subscribe.connect[1]",
        "no service binds the port of 'tcp://toaster:5559'",
    ),
    "unknown role": ("role: mirror", "role: tv", "services.smart-mirror.role", "invalid value 'tv'"),
    "port 0": (
        '"tcp://*:5557"',
        '"tcp://*:0"',
        "services.coffee-maker.publish.bind",
        "malformed endpoint 'tcp://*:0': expected tcp://HOST:PORT",
    ),
    "port 65536": (
        '"tcp://*:5557"',
        '"tcp://*:65536"',
        "services.coffee-maker.publish.bind",
        "malformed endpoint 'tcp://*:65536': expected tcp://HOST:PORT",
    ),
    "an MQTT broker at '*'": (
        '"tcp://mosquitto:1883"',
        '"tcp://*:1883"',
        "services.mqtt-bridge.mqtt_broker",
        "cannot connect to 'tcp://*:1883': '*' is only for bind",
    ),
    "commands to a port nobody binds": (
        'connect: "tcp://light-switch:5555"',
        'connect: "tcp://light-switch:5554"',
        "services.web.commands.connect",
        "no service binds the port of 'tcp://light-switch:5554'",
    ),
    "malformed endpoint": (
        '"tcp://toaster:5558"',
        '"tcp:/toaster"',
        "services.smart-mirror.subscribe.connect[1]",
        "malformed endpoint 'tcp:/toaster': expected tcp://HOST:PORT",
    ),
    "port out of range": (
        '"tcp://*:5558"',
        '"tcp://*:99999"',
        "services.toaster.publish.bind",
        "malformed endpoint 'tcp://*:99999': expected tcp://HOST:PORT",
    ),
    "bind and connect": (
        'bind: "tcp://*:5558"',
        'bind: "tcp://*:5558", connect: "tcp://x:1"',
        "services.toaster.publish",
        "needs exactly one of 'bind' or 'connect'",
    ),
    "unpublished topic": (
        ("topics: [coffee, toast]", "  toast: state\n"),
        ("topics: [coffee, radio]", "  toast: state\n  radio: state\n"),
        "services.smart-mirror.subscribe.topics[1]",
        "topic 'radio' is published by no service",
    ),
    # docs/protocol.md, K1 and K6: every topic declared with its kind; commands travel only as commands.
    "undeclared topic": (
        "topics: [coffee, toast]",
        "topics: [coffee, toats]",
        "services.smart-mirror.subscribe.topics[1]",
        "topic 'toats' is not declared under 'topics'",
    ),
    "unknown kind": ("  toast: state", "  toast: news", "topics.toast", "invalid enum value 'news'"),
    "heartbeat declared": (
        "  toast: state",
        "  toast: state\n  heartbeat: event",
        "topics.heartbeat",
        "reserved for heartbeats: pick another name",
    ),
    "command published as state": (
        "  light: state",
        "  light: command",
        "services.light-switch.publish.topic",
        "'light' is a command topic: only 'commands' sockets carry commands",
    ),
    "state carried by commands": (
        "  light-set: command",
        "  light-set: state",
        "services.light-switch.commands.topics[0]",
        "'light-set' is a state topic: 'commands' carry command topics",
    ),
    # The MQTT bridge (docs/home-assistant.md): a broker it can reach, and an MQTT user no service is.
    "MQTT broker not tcp://HOST:PORT": (
        'mqtt_broker: "tcp://mosquitto:1883"',
        'mqtt_broker: "mqtt://mosquitto"',
        "services.mqtt-bridge.mqtt_broker",
        "malformed endpoint 'mqtt://mosquitto': expected tcp://HOST:PORT",
    ),
    "MQTT user named as a service": (
        "client_user: home-assistant",
        "client_user: web",
        "services.mqtt-bridge.client_user",
        "'web' is a service's name: pick another",
    ),
    "top-level type": (
        "max_message_bytes: 65536",
        "max_message_bytes: big",
        "max_message_bytes",
        "expected 'int', got 'str'",
    ),
    "not YAML": ("services:", "services: [", "line 22", "not valid YAML: expected ',' or ']', but got ':'"),
    # What is dangerous: refused unless it is made safe.
    "privileged port": (
        '"tcp://*:5558"',
        '"tcp://*:22"',
        "services.toaster.publish.bind",
        "port 22 is privileged (below 1024): pick another",
    ),
    "web on a privileged port": ("port: 8080", "port: 80", "services.web.port", "expected 'int' >= 1024"),
    "heartbeat too fast": (
        "heartbeat_interval: 1 ",
        "heartbeat_interval: 0.000000001 ",
        "heartbeat_interval",
        "expected 'float' >= 0.05",
    ),
    "messages too big": (
        "max_message_bytes: 65536",
        "max_message_bytes: 4611686018427387904",
        "max_message_bytes",
        "expected 'int' <= 16777216",
    ),
    "control characters in a name": (
        "name: TOASTER",
        'name: "TOAST\\nINFO forged"',
        "services.toaster.name",
        "expected 'str' matching regex '^[^\\\\x00-\\\\x1f\\\\x7f]{1,40}$'",
    ),
    "service name that is a path": (
        "  toaster:\n",
        "  ../toaster:\n",
        "services",
        "a key: expected 'str' matching regex '^[a-z][a-z0-9-]{0,39}$'",
    ),
    "alias bomb": (
        "max_message_bytes: 65536",
        "x: &a [1, 1]\ny: [*a, *a]\nmax_message_bytes: 65536",
        "line 6",
        "not valid YAML: aliases are not allowed",
    ),
    "nesting that would exhaust the stack": (
        "max_message_bytes: 65536",
        "x: " + "[" * 5000 + "]" * 5000 + "\nmax_message_bytes: 65536",
        "line 5",
        "not valid YAML: nested deeper than 32",
    ),
    "an integer of 5,001 digits": (
        "prep_time: 2",
        "prep_time: " + "9" * 5001,
        "line 40",
        "not valid YAML: a number of 5001 characters (at most 40)",
    ),
    "a date that is none": (
        "prep_time: 2",
        "prep_time: 2001-13-44",
        "line 40",
        "not valid YAML: '2001-13-44': month must be in 1..12",
    ),
    "a tag": (
        "prep_time: 2",
        "prep_time: !!binary AAAA",
        "line 40",
        "not valid YAML: tags are not allowed ('tag:yaml.org,2002:binary')",
    ),
    "a NUL byte, said on one line": (
        "prep_time: 2",
        "prep_time: \x00",
        "line 40",
        "not valid YAML: character #x0000: special characters are not allowed",
    ),
    "open commands without CurveZMQ": (
        "max_message_bytes: 65536",
        "curve: false\nmax_message_bytes: 65536",
        "services.light-switch.commands.bind",
        "commands reachable beyond 127.0.0.1 need 'curve: true'",
    ),
    "commands on every IPv4 address without CurveZMQ": (
        ("max_message_bytes: 65536", "tcp://*:5555"),
        ("curve: false\nmax_message_bytes: 65536", "tcp://0.0.0.0:5555"),
        "services.light-switch.commands.bind",
        "commands reachable beyond 127.0.0.1 need 'curve: true'",
    ),
    "a mirror's view past its bound": (
        "max_message_bytes: 65536",
        "max_instances: 200\nmax_message_bytes: 65536",
        "max_instances",
        "200 instances of each of smart-mirror's topics make a view of more than 256 labels",
    ),
    "a toggle faster than a light": (
        "toggle_period: 0 ",
        "toggle_period: 0.000001 ",
        "services.light-switch.toggle_period",
        "1e-06 is too fast: 0 (never) or at least 0.05",
    ),
    "bind_host not an address": (
        "bind_host: 0.0.0.0",
        "bind_host: example.org",
        "services.web.bind_host",
        "'example.org' is not an IP address",
    ),
    "subscriber with nowhere to connect": (
        'subscribe: { topics: [light], connect: ["tcp://light-switch:5556"] }\n    publish: { topic: coffee',
        "subscribe: { topics: [light], connect: [] }\n    publish: { topic: coffee",
        "services.coffee-maker.subscribe",
        "needs either 'bind' or at least one 'connect' endpoint",
    ),
    "connect to every interface": (
        '"tcp://toaster:5558"]',
        '"tcp://*:5558"]',
        "services.smart-mirror.subscribe.connect[1]",
        "cannot connect to 'tcp://*:5558': '*' is only for bind",
    ),
    "host header with a slash": (
        "allowed_hosts: []",
        "allowed_hosts: [evil.example/x]",
        "services.web.allowed_hosts[0]",
        "expected 'str' matching regex '^(\\\\[[0-9a-fA-F:.]+\\\\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)$'",
    ),
}


def broken_config(tmp_path: Path, old: str | tuple[str, ...], new: str | tuple[str, ...]) -> Path:
    """The shipped config with `old` (or each of several) replaced by `new` (or each of several)."""
    text = SHIPPED_CONFIG.read_text()
    for before, after in zip(*((old,), (new,)) if isinstance(old, str) else (old, new), strict=True):
        assert before in text, f"test setup: {before!r} not in the shipped config"
        text = text.replace(before, after, 1)
    path = tmp_path / "broken.yml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_each_config_error_names_file_key_and_problem(tmp_path: Path, case: str) -> None:
    old, new, key, problem = BROKEN[case]
    path = broken_config(tmp_path, old, new)
    assert refusal(path) == (f"{path}: {key}: {problem}" if key else f"{path}: {problem}")


@pytest.mark.parametrize("key, port", [("publishers", 5559), ("subscribers", 5560)])
def test_a_broker_endpoint_error_names_its_key(tmp_path: Path, key: str, port: int) -> None:
    path = tmp_path / "broken.yml"
    path.write_text(BROKER_CONFIG.read_text().replace(f'{key}: "tcp://*:{port}"', f'{key}: "tcp://*:80"'))
    assert refusal(path) == f"{path}: services.broker.{key}: port 80 is privileged (below 1024): pick another"


def test_a_huge_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "huge.yml"
    path.write_text(SHIPPED_CONFIG.read_text() + "#" * (2 << 20))
    assert refusal(path) == f"{path}: larger than 1024 KiB: not a config"


def test_a_file_of_the_largest_size_loads_and_a_terabyte_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "largest.yml"
    text = SHIPPED_CONFIG.read_text()
    path.write_text(text + "#" * (MAX_CONFIG_BYTES - len(text.encode())))
    assert load_config(path).services == load_config(SHIPPED_CONFIG).services
    os.truncate(path, 1 << 40)  # sparse: it takes no room on disk, but read whole it would take a terabyte
    assert refusal(path) == f"{path}: larger than 1024 KiB: not a config"


def test_bytes_that_are_not_utf_8_are_read_as_replacement_characters(tmp_path: Path) -> None:
    """In a comment they change nothing; in a value, the error shows where."""
    path = tmp_path / "latin-1.yml"
    path.write_bytes(b"# caf\xe9 au lait\n" + SHIPPED_CONFIG.read_bytes())
    assert load_config(path).services == load_config(SHIPPED_CONFIG).services
    path.write_bytes(SHIPPED_CONFIG.read_bytes().replace(b"name: TOASTER", b"name: TOASTER\n    br\xf6t: 1"))
    assert refusal(path) == f"{path}: services.toaster: unknown key 'br\ufffdt'"


def test_a_character_yaml_does_not_allow_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "nul.yml"
    path.write_text("\n\ntopics: \x00\n")
    assert refusal(path) == f"{path}: line 3: not valid YAML: character #x0000: special characters are not allowed"


@pytest.mark.parametrize("text, got", [("- light\n", "array"), ("", "null"), ("light\n", "str")])
def test_a_file_that_is_no_mapping_is_named_so(tmp_path: Path, text: str, got: str) -> None:
    path = tmp_path / "not-a-mapping.yml"
    path.write_text(text)
    assert refusal(path) == f"{path}: (top level): expected 'object', got '{got}'"


def test_each_bound_of_the_config_holds_at_its_value_and_refuses_past_it(tmp_path: Path) -> None:
    """Nesting (counted level by level, siblings too), a number's characters (ints and floats, not strings),
    the mirror's view, the light switch's toggle."""
    nested = tmp_path / "nested.yml"
    for lists, refused in ((MAX_CONFIG_DEPTH - 2, False), (MAX_CONFIG_DEPTH - 1, True)):  # two mappings around
        nested.write_text("x: {a: 1, b: " + "[" * lists + "]" * lists + "}\n")
        said = refusal(nested)
        assert ("nested deeper than" in said) == refused, said

    at_most = "2." + "0" * (MAX_NUMBER_CHARS - 2)
    assert load_config(broken_config(tmp_path, "prep_time: 2", f"prep_time: {at_most}")).services
    long_string = f"bind_host: 0.0.0.0\n    access_token_file: /run/{'t' * MAX_NUMBER_CHARS}"
    assert load_config(broken_config(tmp_path, "bind_host: 0.0.0.0", long_string)).services  # no number
    for number in (at_most + "0", "9" * (MAX_NUMBER_CHARS + 1)):
        with pytest.raises(ConfigError, match=f"a number of {MAX_NUMBER_CHARS + 1} characters"):
            load_config(broken_config(tmp_path, "prep_time: 2", f"prep_time: {number}"))

    labels_each = MAX_VIEW_LABELS // 2  # the mirror's two topics
    at_bound = f"max_instances: {labels_each}\nmax_message_bytes: 65536"
    assert load_config(broken_config(tmp_path, "max_message_bytes: 65536", at_bound)).max_instances == labels_each
    past = f"max_instances: {labels_each + 1}\nmax_message_bytes: 65536"
    with pytest.raises(ConfigError, match="make a view of more than"):
        load_config(broken_config(tmp_path, "max_message_bytes: 65536", past))

    fastest = f"toggle_period: {MIN_TOGGLE_PERIOD} "
    assert load_config(broken_config(tmp_path, "toggle_period: 0 ", fastest)).services
    with pytest.raises(ConfigError, match="is too fast"):
        load_config(broken_config(tmp_path, "toggle_period: 0 ", f"toggle_period: {MIN_TOGGLE_PERIOD * 0.99} "))


def test_the_config_is_the_named_file_else_smarthome_config_else_the_projects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert load_config().path == "config/smarthome.yml"
    monkeypatch.setenv(CONFIG_ENV, str(BROKER_CONFIG))
    assert load_config().path == str(BROKER_CONFIG)
    assert load_config(SHIPPED_CONFIG).path == str(SHIPPED_CONFIG)


def test_a_client_pins_the_key_of_the_service_that_binds_the_port_it_connects_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """By container port, or by the host port compose publishes it on ($SMARTHOME_HOST_PORT_<port>)."""
    config = load_config(SHIPPED_CONFIG)
    assert host_port("5556") == "5556"
    assert config.binder_of("tcp://light-switch:5556") == config.binder_of("tcp://127.0.0.1:5556") == "light-switch"
    monkeypatch.setenv("SMARTHOME_HOST_PORT_5556", "15556")
    assert host_port("5556") == "15556"
    assert config.binder_of("tcp://127.0.0.1:15556") == config.binder_of("tcp://light-switch:5556") == "light-switch"
    assert config.binder_of("tcp://127.0.0.1:15557") is None


def test_a_client_may_connect_to_a_privileged_port_and_a_service_bind_1024_to_65535(tmp_path: Path) -> None:
    """Only binding a port below 1024 needs privileges: the MQTT broker may listen on any port."""
    config = load_config(broken_config(tmp_path, '"tcp://mosquitto:1883"', '"tcp://mosquitto:883"'))
    assert config.services["mqtt-bridge"].mqtt_broker == "tcp://mosquitto:883"  # type: ignore[union-attr]
    for port in ("1024", "65535"):  # the first a service may bind, the last
        moved = tmp_path / f"port-{port}.yml"
        moved.write_text(SHIPPED_CONFIG.read_text().replace(":5557", f":{port}"))  # the coffee maker's, everywhere
        assert load_config(moved).services["coffee-maker"].publish.bind == f"tcp://*:{port}"  # type: ignore[union-attr]


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    assert refusal(tmp_path / "nope.yml") == f"{tmp_path / 'nope.yml'}: cannot read: No such file or directory"


@pytest.mark.parametrize("case", ["unknown key", "malformed endpoint", "unpublished topic", "not YAML"])
def test_a_service_with_bad_config_exits_2_with_one_line_on_stderr(tmp_path: Path, case: str) -> None:
    old, new, key, problem = BROKEN[case]
    path = broken_config(tmp_path, old, new)
    result = smarthome(path, "run", "toaster")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == f"smarthome: config error: {path}: {key}: {problem}"


def test_unknown_service_name_is_a_config_error(tmp_path: Path) -> None:
    result = smarthome(SHIPPED_CONFIG, "run", "kettle")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"smarthome: config error: {SHIPPED_CONFIG}: services: no service named 'kettle' "
        "(have: light-switch, coffee-maker, toaster, smart-mirror, web, mqtt-bridge)"
    )


NASTY = [
    "[",
    "]",
    "{",
    "}",
    ":",
    "- ",
    "? ",
    "&a ",
    "*a",
    "!!binary AAAA",
    "!!python/object:os.system x",
    "!!set {a}",
    "!!timestamp 2001-13-44",
    "!!int x",
    "!!float x",
    "!!str",
    "<<: 1",
    "9" * 5001,
    "0x" + "f" * 60,
    "1:" * 30,
    ".nan",
    ".inf",
    "-.inf",
    "~",
    "null",
    "\x00",
    "\x85",
    "\u2028",
    "\ufeff",
    "\t",
    "'",
    '"',
    "|",
    ">",
    "%YAML 1.1",
    "---",
    "...",
    "#",
    "\n",
    "\n  ",
    "[" * 200,
    "{a: " * 200,
    "é",
    "\\x",
    '"\\ud800"',
]


@settings(
    max_examples=400, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(edits=st.lists(st.tuples(st.integers(0, 3000), st.sampled_from(NASTY), st.integers(0, 40)), max_size=4))
def test_no_config_gives_a_traceback_only_a_line(tmp_path: Path, edits: list[tuple[int, str, int]]) -> None:
    """Whatever the file holds, loading it gives a Config or one line naming the problem, never another error."""
    text = SHIPPED_CONFIG.read_text()
    for at, token, cut in edits:
        at %= len(text) + 1
        text = text[:at] + token + text[at + cut :]
    path = tmp_path / "fuzzed.yml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path)
    except ConfigError as error:
        assert "\n" not in str(error) and str(error).startswith(f"{path}: ")
