"""The `smarthome` command as a user runs it: the installed script as a subprocess, its stdout, stderr and
exit code, against real services on free loopback ports (no Docker)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
import zmq
from smarthome.core.config import json_schema

from tests.support.base import ALL_IDLE, ALL_READY, BROKER_CONFIG, BROKER_ROUTINE, HOST, ROOT, SHIPPED_CONFIG, SMARTHOME
from tests.support.peers import with_key
from tests.support.processes import ServiceProcess, endpoint, free_port, loopback_config, smarthome, smarthome_env
from tests.support.stack import Stack

Start = Callable[..., ServiceProcess]
TEXT = {"capture_output": True, "text": True, "timeout": 60}
UTC_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return loopback_config(
        tmp_path, BROKER_CONFIG, **{"services.coffee-maker.prep_time": 0.1, "services.toaster.prep_time": 0}
    )


@pytest.fixture
def direct(tmp_path: Path) -> Path:
    return loopback_config(tmp_path, **{"services.coffee-maker.prep_time": 0, "services.toaster.prep_time": 0})


def run(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([SMARTHOME, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def without_config(env: dict[str, str], **changes: str) -> dict[str, str]:
    """`env` with no SMARTHOME_CONFIG, so the tools choose a config themselves, and `changes` applied."""
    return {**{k: v for k, v in env.items() if k != "SMARTHOME_CONFIG"}, **changes}


def one_line(result: subprocess.CompletedProcess, code: int, start: str) -> str:
    """The one stderr line of a failed command, which starts with `start`; stdout must be empty."""
    assert (result.returncode, result.stdout) == (code, ""), result
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(start), result.stderr
    return result.stderr.strip()


# --- sub, pub, light against running services ---


def test_host_tools_switch_the_light_and_see_the_stream(config: Path, run_service: Start) -> None:
    services = {name: run_service(name, config) for name in BROKER_ROUTINE}
    mirror = services["smart-mirror"]
    mirror.wait_for(ALL_READY)

    watcher = run_service("sub", config, "sub", "coffee", "toast", "--count", "4", "--timeout", "30")
    watcher.wait_for('{"status": true}', times=2)  # the current states, handed to a newcomer
    off = smarthome(config, "light", "off")
    assert (off.returncode, off.stdout, off.stderr) == (0, "", "")
    mirror.wait_for(ALL_IDLE)
    services["radio"].wait_for("RADIO silent")
    assert watcher.wait_exit() == 0  # after its 4 messages
    topics = sorted(line.split()[0] for line in watcher.lines)
    assert topics == ["coffee", "coffee", "toast", "toast"]
    assert [json.loads(line.split(" ", 3)[3]) for line in watcher.lines[2:]] == [{"status": False}] * 2

    assert smarthome(config, "light", "on").returncode == 0
    mirror.wait_for(ALL_READY, times=2)
    published = smarthome(config, "pub", "toast", '{"status": false}')
    assert (published.returncode, published.stdout, published.stderr) == (0, "", "")
    mirror.wait_for("toast@")  # a second 'toast' sender appeared: the tool's own message


def test_direct_wiring_takes_light_commands_too(direct: Path, run_service: Start) -> None:
    services = {name: run_service(name, direct) for name in ("light-switch", "coffee-maker", "toaster", "smart-mirror")}
    services["smart-mirror"].wait_for(ALL_READY)
    assert smarthome(direct, "light", "off").returncode == 0
    services["light-switch"].says(f"LIGHT SWITCH switched OFF by smarthome-cli@{HOST}")
    services["smart-mirror"].wait_for(ALL_IDLE)
    assert smarthome(direct, "light", "off").returncode == 0  # already off: taken, and nothing new published
    services["light-switch"].says(f"LIGHT SWITCH switched OFF by smarthome-cli@{HOST}", times=2)
    sub = smarthome(direct, "sub", "light", "--count", "1")
    assert (sub.returncode, sub.stderr) == (0, "")
    topic, sender, seq, body = sub.stdout.strip().split(" ", 3)
    assert (topic, sender.split("@")[0], seq, json.loads(body)) == ("light", "light-switch", "2", {"state": "OFF"})


def test_sub_json_heartbeats_and_a_timeout_without_a_count(tmp_path: Path, run_service: Start) -> None:
    config = loopback_config(tmp_path, heartbeat_interval=0.1)
    run_service("light-switch", config).wait_for("LIGHT SWITCH started")
    got = smarthome(config, "sub", "--json", "light", "heartbeat", "--count", "3")
    assert (got.returncode, got.stderr) == (0, "")
    events = [json.loads(line) for line in got.stdout.splitlines()]  # one JSON object per line
    assert sorted(e["topic"] for e in events) == ["heartbeat", "heartbeat", "light"]
    assert all(set(e) == {"topic", "sender", "life", "seq", "ts", "body"} for e in events)
    assert next(e["body"] for e in events if e["topic"] == "light") == {"state": "ON"}

    watched = smarthome(config, "sub", "heartbeat", "--timeout", "0.5")  # a time-boxed watch: exit 0
    assert (watched.returncode, watched.stderr) == (0, "")
    assert watched.stdout.startswith("heartbeat light-switch@")


def test_sub_count_on_a_steady_stack_ends_with_what_it_got(direct: Path, run_service: Start) -> None:
    run_service("toaster", direct).wait_for("TOASTER started")
    result = smarthome(direct, "sub", "toast", "--count", "3", "--timeout", "1")
    assert result.returncode == 1
    assert result.stdout.startswith("toast toaster@")  # the current state, re-sent to a newcomer, counts
    assert result.stderr.strip() == (
        "smarthome: got 1 of 3 messages within 1s: a steady stack sends each current state once"
    )


def test_sub_stops_quietly_when_its_reader_goes(tmp_path: Path, run_service: Start) -> None:
    config = loopback_config(tmp_path, heartbeat_interval=0.1)
    run_service("light-switch", config).wait_for("LIGHT SWITCH started")
    # `smarthome sub | head -1`: the reader takes one line and closes the pipe.
    reader = subprocess.Popen(
        [SMARTHOME, "sub"], env=smarthome_env(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert reader.stdout.readline().startswith("heartbeat light-switch@")  # the life first, then its state [P2]
        reader.stdout.close()
        assert reader.wait(15) == 0
        assert reader.stderr.read() == ""
    finally:
        reader.kill()  # no effect once it has exited; a failed test leaves no `smarthome sub` behind
        reader.wait()


def test_pub_checks_the_body_against_the_topics_type(config: Path, direct: Path) -> None:
    dim = smarthome(direct, "pub", "light-set", '{"state": "DIM"}')
    one_line(dim, 1, "smarthome: invalid body for 'light-set' (LightState): invalid enum value 'DIM' at 'state'")
    toast = smarthome(config, "pub", "toast", '{"status": "yes"}')
    one_line(toast, 1, "smarthome: invalid body for 'toast' (ApplianceStatus): expected 'bool', got 'str' at 'status'")
    view = smarthome(config, "pub", "mirror", "{}")
    one_line(view, 1, "smarthome: invalid body for 'mirror' (MirrorView): missing key 'view'")


BAD_ARGUMENTS = {
    "invalid JSON": (["pub", "light-set", '{"state": '], 1, "smarthome: invalid JSON body: Expecting value"),
    "JSON not an object": (["pub", "light-set", "[1]"], 1, "smarthome: the body must be a JSON object, got: [1]"),
    "unknown topic": (["pub", "lamp", "{}"], 1, "smarthome: unknown topic 'lamp' (known: coffee, light, light-set"),
    "unknown sub topic": (["sub", "lamp"], 1, "smarthome: unknown topic 'lamp' (known: coffee, heartbeat, light"),
    "heartbeat is not for pub": (["pub", "heartbeat", "{}"], 1, "smarthome: unknown topic 'heartbeat'"),
    "bad light state": (["light", "dim"], 2, "smarthome light: error: argument state: invalid choice: 'dim'"),
    "missing argument": (["pub", "light-set"], 2, "smarthome pub: error: the following arguments are required: JSON"),
    "negative count": (["sub", "--count", "-2"], 2, "smarthome sub: error: argument --count: must be at least 1, got"),
    "zero count": (["sub", "--count", "0"], 2, "smarthome sub: error: argument --count: must be at least 1, got 0"),
    "count not a number": (["sub", "--count", "x"], 2, "smarthome sub: error: argument --count: invalid int value"),
    "negative timeout": (["light", "on", "--timeout", "-1"], 2, "smarthome light: error: argument --timeout: must be"),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS, ids=list(BAD_ARGUMENTS))
def test_bad_arguments_give_one_line_and_a_nonzero_exit(config: Path, case: str) -> None:
    args, code, message = BAD_ARGUMENTS[case]
    one_line(smarthome(config, *args), code, message)


def test_a_catch_all_subscriber_is_not_taken_for_the_one_a_command_is_for(
    config: Path, run_service: Start, context: zmq.Context
) -> None:
    """The tools send when a subscription names the topic: through the broker the dashboard's catch-all reaches
    them too, but it is no light switch; with none the command is not sent, and the tool says so."""
    broker = run_service("broker", config)
    everything = with_key(context.socket(zmq.SUB), config, server="broker")
    everything.subscribe(b"")
    everything.connect(endpoint(config, "broker", "subscribers"))
    broker.says("BROKER subscribe all topics from 127.0.0.1")
    nobody = smarthome(config, "light", "off", "--timeout", "1")
    one_line(nobody, 1, f"smarthome: nothing at {endpoint(config, 'broker', 'publishers')} subscribed to 'light-set'")


def test_pub_in_direct_wiring_says_where_it_cannot_publish(direct: Path) -> None:
    one_line(
        smarthome(direct, "pub", "coffee", "{}"),
        1,
        "smarthome: in this wiring nothing accepts messages on 'coffee' from outside; use the broker wiring",
    )


def test_dashboard_prints_the_address_with_the_token_the_web_will_want(tmp_path: Path) -> None:
    config = loopback_config(tmp_path)  # keys of its own: a folder the test owns
    env = smarthome_env(config)
    env["SMARTHOME_KEYS"] = str(tmp_path / "keys")
    token_file = tmp_path / "keys" / "web.token"
    assert one_line(run("dashboard", env=env), 1, "smarthome: no dashboard token in ") == (
        f"smarthome: no dashboard token in {token_file} ([Errno 2] No such file or directory: '{token_file}'): "
        "has the stack started once?"
    )
    made = run("keys", env=env)
    assert made.returncode == 0 and "web.token" in made.stderr, made
    token = token_file.read_text().strip()
    assert len(token) == 43 and stat.S_IMODE(token_file.stat().st_mode) == 0o600  # the user's own, like the keys
    port = yaml.safe_load(config.read_text())["services"]["web"]["port"]
    assert run("dashboard", env=env).stdout == f"http://127.0.0.1:{port}/?token={token}\n"
    moved = run("dashboard", env={**env, f"SMARTHOME_HOST_PORT_{port}": "18080"})  # where compose publishes it
    assert moved.stdout == f"http://127.0.0.1:18080/?token={token}\n"
    assert run("keys", env=env).returncode == 0 and token_file.read_text().strip() == token  # made once


def test_help_describes_every_argument_and_version_is_printed() -> None:
    for command in ("sub", "pub", "light", "run"):
        result = run(command, "--help", env=dict(os.environ))
        assert (result.returncode, result.stderr) == (0, "")
        positionals = result.stdout.split("positional arguments:")[1].split("options:")[0]
        described = [line for line in positionals.splitlines() if re.match(r"  \S", line)]  # not continuations
        assert described and all(len(line.split(maxsplit=1)) == 2 for line in described), result.stdout
    version = run("--version", env=dict(os.environ))
    assert (version.returncode, version.stdout, version.stderr) == (0, "smarthome 0.1.0\n", "")


# --- which stack the tools reach ---


def test_the_tools_find_the_stack_that_runs_and_say_where_they_went(tmp_path: Path, run_service: Start) -> None:
    direct = loopback_config(tmp_path)  # both wirings in one directory, as in config/
    broker = loopback_config(tmp_path, BROKER_CONFIG)
    env = without_config(smarthome_env(direct), SMARTHOME_CONFIG_DIR=str(tmp_path))

    nothing = run("light", "off", "--timeout", "0.5", env=env, cwd=tmp_path)  # no stack: the error names the fix
    one_line(nothing, 1, f"smarthome: nothing at {endpoint(direct, 'light-switch', 'commands.bind')} subscribed to")
    assert nothing.stderr.strip().endswith(
        "is the stack running? (docker compose up, or smarthome local); or try --config smarthome.broker.yml"
    )

    for name in ("broker", "light-switch"):
        run_service(name, broker).wait_for("started")
    switched = run("-v", "light", "off", env=env, cwd=tmp_path)  # the broker stack answers: its config is used
    assert (switched.returncode, switched.stdout) == (0, ""), switched.stderr
    assert f"smarthome: config {broker}: its stack answers at {endpoint(broker, 'broker', 'subscribers')}" in (
        switched.stderr
    )
    assert f"reached a subscriber to 'light-set' at {endpoint(broker, 'broker', 'publishers')}" in switched.stderr


def test_host_port_variables_lead_the_tools_to_a_stack_on_other_ports(direct: Path, run_service: Start) -> None:
    switch = run_service("light-switch", direct)
    switch.wait_for("LIGHT SWITCH started")
    commands = endpoint(direct, "light-switch", "commands.bind")
    # The shipped config names port 5555; compose would publish it on $SMARTHOME_HOST_PORT_5555.
    env = without_config(smarthome_env(direct), SMARTHOME_HOST_PORT_5555=commands.rsplit(":", 1)[1])
    result = run("--config", str(SHIPPED_CONFIG), "-v", "light", "off", env=env)
    assert result.returncode == 0, result.stderr
    assert f"reached a subscriber to 'light-set' at {commands}" in result.stderr
    switch.says(f"LIGHT SWITCH switched OFF by smarthome-cli@{HOST}")


def test_sub_without_a_stack_says_so_and_what_to_try(tmp_path: Path) -> None:
    env = without_config(os.environ, SMARTHOME_CONFIG_DIR=str(tmp_path))
    loopback_config(tmp_path)
    result = run("sub", "--count", "1", "--timeout", "0.3", env=env, cwd=tmp_path)
    first, second = result.stderr.splitlines()
    assert (result.returncode, result.stdout) == (1, "")
    assert first.startswith("smarthome: nothing answers at tcp://127.0.0.1:")
    assert second == (
        "smarthome: got 0 of 1 messages within 0.3s: is the stack running? (docker compose up, or smarthome local)"
    )


# --- the services' own errors and logs ---


def test_local_stops_everything_and_exits_1_with_one_line_when_the_web_port_is_busy(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = loopback_config(tmp_path, **{"services.web.port": port})
        result = run("local", env=smarthome_env(config))
    assert result.returncode == 1, result.stdout
    assert result.stderr == "smarthome: web exited with code 1; stopped the others\n"
    web = [line for line in result.stdout.splitlines() if line.startswith("web ")]
    errors = [line for line in web if " ERROR " in line]
    assert len(errors) == 1 and errors[0].endswith(f"WEB cannot listen on 127.0.0.1:{port}: Address already in use")
    assert "Traceback" not in result.stdout


def test_local_exits_0_when_stopped_even_while_its_services_start(tmp_path: Path) -> None:
    config = loopback_config(tmp_path, **{"services.web.port": free_port()})
    local = subprocess.Popen(
        [SMARTHOME, "local"], env=smarthome_env(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert local.stdout.readline()  # one service is up; others may still be starting, without their handlers
    local.send_signal(signal.SIGTERM)
    out, err = local.communicate(timeout=30)
    assert (local.returncode, err) == (0, ""), out


def test_logs_are_utc_in_either_format_and_a_request_without_host_is_one_line(
    tmp_path: Path, run_service: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    config = loopback_config(tmp_path, **{"services.web.port": port})
    monkeypatch.setenv("SMARTHOME_LOG_LEVEL", "Info")  # any case
    switch = run_service("light-switch", config)
    switch.wait_for("LIGHT SWITCH started")
    stamp, level, _ = switch.lines[0].split(maxsplit=2)
    assert UTC_TIME.match(stamp) and level == "INFO", switch.lines[0]

    monkeypatch.setenv("SMARTHOME_LOG_FORMAT", "json")
    web = run_service("web", config)
    web.wait_for('"WEB started on port')
    with socket.create_connection(("127.0.0.1", port)) as client:  # HTTP/1.1 without the Host header
        client.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert client.recv(100).startswith(b"HTTP/1.0 400 Bad Request")
    web.wait_for("Missing 'Host' header")
    assert web.stop() == 0
    entries = [json.loads(line) for line in web.lines]  # every line one JSON object
    assert all(set(e) == {"time", "level", "message"} and UTC_TIME.match(e["time"]) for e in entries), web.lines
    [bad_request] = [e for e in entries if "Host" in e["message"]]
    assert bad_request["message"] == "WEB Error handling request from 127.0.0.1: 400 Missing 'Host' header in request."


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("SMARTHOME_LOG_LEVEL", "loud", "unknown level 'loud' (one of: debug, info, warning, error, critical)"),
        ("SMARTHOME_LOG_FORMAT", "xml", "unknown format 'xml' (one of: text, json)"),
    ],
)
def test_a_bad_log_setting_is_one_line_and_exit_2(direct: Path, variable: str, value: str, problem: str) -> None:
    result = run("run", "toaster", env={**smarthome_env(direct), variable: value})
    one_line(result, 2, f"smarthome: setting error: {variable}: {problem}")


# --- the package and the config schema ---


def test_the_wheel_installs_a_working_command_with_dashboard_and_configs(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), str(ROOT)]
    subprocess.run(build, check=True, capture_output=True, timeout=120)
    [wheel] = wheels.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "smarthome/web/static/index.html" in names
    assert "smarthome-0.1.0.data/data/share/smarthome/smarthome.yml" in names

    # A fresh environment with only the wheel of ours; the dependencies come from this one's site-packages.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    target = venv / "bin" / "python"
    install = [*pip, "--python", str(target), "install", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=120)
    site = subprocess.run([target, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], **TEXT)
    Path(site.stdout.strip(), "deps.pth").write_text(sysconfig.get_path("platlib"))

    elsewhere = tmp_path / "elsewhere"  # not the checkout: the installed configs must be found
    elsewhere.mkdir()
    env = without_config({k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SMARTHOME_CONFIG_DIR")})
    installed = str(venv / "bin" / "smarthome")
    version = subprocess.run([installed, "--version"], env=env, cwd=elsewhere, **TEXT)
    assert (version.returncode, version.stdout) == (0, "smarthome 0.1.0\n"), version.stderr
    probe = "import sys, smarthome.web.forwarder as f; print(f.STATIC.is_relative_to(sys.prefix), f.STATIC.is_dir())"
    static = subprocess.run([target, "-c", probe], env=env, cwd=elsewhere, **TEXT)
    assert static.stdout.split() == ["True", "True"], static.stderr  # the dashboard came with the package
    sub = subprocess.run([installed, "-v", "sub", "--timeout", "0.1"], env=env, cwd=elsewhere, **TEXT)
    assert sub.returncode == 0, sub.stderr
    assert f"config {venv}/share/smarthome/smarthome" in sub.stderr


def test_the_shipped_json_schema_is_current_and_the_configs_point_at_it() -> None:
    # In this process, so that every part of json_schema() is reached by a test (a CLI's subprocess is not
    # counted as reaching it); `smarthome schema` printing it is the next test.
    shipped = ROOT / "config" / "smarthome.schema.json"
    stale = "stale: run `smarthome schema > config/smarthome.schema.json`"
    assert shipped.read_text() == json.dumps(json_schema(), indent=2) + "\n", stale
    schema = json.loads(shipped.read_text())
    assert set(schema["$defs"]["SmarthomeConfig"]["required"]) == {
        "max_message_bytes",
        "heartbeat_interval",
        "offline_after",
        "zmtp",
        "topics",
        "services",
    }
    for config in (SHIPPED_CONFIG, BROKER_CONFIG):
        assert config.read_text().splitlines()[0] == "# yaml-language-server: $schema=smarthome.schema.json"


def test_smarthome_schema_prints_the_shipped_schema() -> None:
    result = run("schema", env=dict(os.environ))
    assert (result.returncode, result.stdout) == (0, (ROOT / "config" / "smarthome.schema.json").read_text())


def test_the_fast_tier_collects_without_the_docker_tiers_wheels() -> None:
    # As on a laptop with only `pip install -e '.[fast]'`: importing docker or playwright fails.
    code = "import sys, pytest; sys.modules.update(docker=None, playwright=None); sys.exit(pytest.main(sys.argv[1:]))"
    command = [sys.executable, "-c", code, "--collect-only", "-q", "-m", "not docker", "-p", "no:cacheprovider"]
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_cli.py::test_the_fast_tier_collects_without_the_docker_tiers_wheels" in result.stdout


# --- the compose files (Docker tier) ---


@pytest.mark.docker
def test_compose_takes_image_ports_and_log_settings_from_the_environment_and_can_watch(
    engine: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in {
        "SMARTHOME_IMAGE": "smarthome:other",
        "SMARTHOME_HOST_PORT_5555": "6555",
        "SMARTHOME_HOST_PORT_8080": "6080",
        "SMARTHOME_LOG_LEVEL": "debug",
        "SMARTHOME_LOG_FORMAT": "json",
    }.items():
        monkeypatch.setenv(variable, value)
    command = ["docker", "compose", "-f", "docker-compose.yml", "config", "--format", "json"]
    services = json.loads(subprocess.run(command, cwd=ROOT, check=True, **TEXT).stdout)["services"]
    for service in services.values():
        assert service["image"] == "smarthome:other"
        assert service["environment"]["SMARTHOME_LOG_LEVEL"] == "debug"
        assert service["environment"]["SMARTHOME_LOG_FORMAT"] == "json"
        assert {w["action"] for w in service["develop"]["watch"]} == {"rebuild"}  # Compose 2.26 takes it
    published = {(p["published"], p["target"]) for s in services.values() for p in s.get("ports", [])}
    assert published == {("6555", 5555), ("5556", 5556), ("5557", 5557), ("5558", 5558), ("6080", 8080)}


@pytest.mark.docker
def test_a_stack_on_other_host_ports_logs_json_and_the_tools_follow_it(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = {container: free_port() for container in (5555, 5556)}
    for container, host in ports.items():
        monkeypatch.setenv(f"SMARTHOME_HOST_PORT_{container}", str(host))
    monkeypatch.setenv("SMARTHOME_LOG_FORMAT", "json")
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "60", "light-switch")
    switched = smarthome(SHIPPED_CONFIG, "-v", "light", "off")  # the shipped config, ports from the environment
    assert switched.returncode == 0, switched.stderr
    assert f"reached a subscriber to 'light-set' at tcp://127.0.0.1:{ports[5555]}" in switched.stderr
    seen = smarthome(SHIPPED_CONFIG, "sub", "light", "--count", "1")
    assert seen.stdout.startswith("light light-switch@") and seen.stdout.endswith('{"state": "OFF"}\n'), seen
    stack.logs("light-switch").wait_for("LIGHT SWITCH switched OFF by smarthome-cli@")
    stack.compose("stop")
    [container] = stack.containers("light-switch")
    container.reload()
    assert container.attrs["State"]["ExitCode"] == 0
    entries = [json.loads(line) for line in stack.logs("light-switch").log_lines()]  # every line one JSON object
    assert all(UTC_TIME.match(e["time"]) for e in entries)
    assert entries[-1]["message"] == "LIGHT SWITCH stopped"
