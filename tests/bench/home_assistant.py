"""Check and measure: the home in a real Home Assistant, through the MQTT bridge.

    .venv/bin/python -m tests.bench.home_assistant [--toggles N]

Too slow for CI (Home Assistant and its pinned dependencies install into a virtualenv of their own, in
~/.cache/smarthome/, about two minutes the first time), so a script beside the benchmarks. It brings up the
stack with `--profile mqtt` (direct wiring; prep_time 0 and the bridge's rate limit lifted, as in mqtt_bridge.py,
so that a switch is timed and not the toast), starts Home Assistant on 127.0.0.1:8123 with an empty config, and
does what a user does: onboarding (the owner account), then the MQTT integration through its config flow (broker
127.0.0.1:1883, the home-assistant user and password). Then, through Home Assistant's REST API only:
  - the home's entities appear by discovery, each with the state the home is in;
  - `switch.turn_off` on the light: the light switch logs the command from the bridge, and Home Assistant's
    coffee maker, toaster and mirror follow; `switch.turn_on`: back. Each switch is timed from the service call
    to the mirror's sensor showing the new state in Home Assistant (polled every 10 ms).
Exits 1, with every service's log, if any of it fails; writes tests/bench/results/home_assistant.md.
Home Assistant 2024.3 is the newest release that runs on Python 3.11, this machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from smarthome.mqtt.home import PASSWORD_SUFFIX

from tests.bench.benchlib import ROOT, docker_version, header, median, percentile, table, write
from tests.bench.mqtt_bridge import SERVICES, write_config

HOME_ASSISTANT = "homeassistant==2024.3.3"
# It installs what its integrations need as it loads them (the first start takes minutes); josepy before 2.0 is
# needed by its cloud library's acme, which does not pin it (2.0 dropped ComparableX509).
REQUIREMENTS = ["josepy==1.14.0"]
PLACE = ROOT / "tests" / "out" / "home-assistant"  # its config and log of the last run
# Its virtualenv (half a gigabyte, made once) is a cache outside the checkout, not an output of the run.
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
VENV = CACHE / "smarthome" / HOME_ASSISTANT.replace("==", "-")
URL = "http://127.0.0.1:8123"
CLIENT_ID = f"{URL}/"
ENTITIES = {  # entity id -> its state with the light ON
    "switch.light_switch": "on",
    "binary_sensor.coffee_maker": "on",
    "binary_sensor.toaster": "on",
    "sensor.mirror": "coffee=ready toast=ready",
}
OFF = {
    "switch.light_switch": "off",
    "binary_sensor.coffee_maker": "off",
    "binary_sensor.toaster": "off",
    "sensor.mirror": "coffee=idle toast=idle",
}
CONFIGURATION = """\
homeassistant:
  name: smarthome check
  time_zone: UTC
  unit_system: metric
  country: DE
  currency: EUR
  latitude: 0
  longitude: 0
  elevation: 0
http:
  server_host: 127.0.0.1
  server_port: 8123
api:
config:
onboarding:
logger:
  default: warning
"""


def venv() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([shutil.which("python3") or "python3", "-m", "venv", str(python.parent.parent)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", HOME_ASSISTANT, *REQUIREMENTS], check=True)
    return python


def request(method: str, path: str, body: Any = None, token: str | None = None, form: bool = False) -> Any:
    data = urllib.parse.urlencode(body).encode() if form else json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/x-www-form-urlencoded" if form else "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with urllib.request.urlopen(urllib.request.Request(URL + path, data, headers, method=method), timeout=30) as r:
        return json.loads(r.read() or b"null")


def wait(what: str, condition, timeout: float = 120.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := condition():
                return result
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(every)  # ok: the pause between polls of a deadline loop
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def sign_in() -> str:
    """Onboarding's owner account, and an access token for it (what the first visit to the UI does)."""
    wait("Home Assistant's HTTP API", lambda: request("GET", "/api/onboarding") is not None, timeout=900)
    owner = {
        "client_id": CLIENT_ID,
        "name": "Owner",
        "username": "owner",
        "password": uuid.uuid4().hex,
        "language": "en",
    }
    code = request("POST", "/api/onboarding/users", owner)["auth_code"]
    token = request(
        "POST", "/auth/token", {"grant_type": "authorization_code", "code": code, "client_id": CLIENT_ID}, form=True
    )["access_token"]
    return token


def add_mqtt(token: str) -> dict:
    """The MQTT integration, through the same config flow as Settings -> Add integration -> MQTT."""
    flow = request(
        "POST", "/api/config/config_entries/flow", {"handler": "mqtt", "show_advanced_options": False}, token
    )
    broker = {
        "broker": "127.0.0.1",
        "port": 1883,
        "username": "home-assistant",
        "password": (ROOT / "keys" / f"home-assistant{PASSWORD_SUFFIX}").read_text().strip(),
    }
    return request("POST", f"/api/config/config_entries/flow/{flow['flow_id']}", broker, token)


def states(token: str) -> dict[str, dict]:
    return {s["entity_id"]: s for s in request("GET", "/api/states", token=token)}


def shows(token: str, wanted: dict[str, str]) -> bool:
    now = states(token)
    return all(now.get(entity, {}).get("state") == state for entity, state in wanted.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toggles", type=int, default=20, help="switches from Home Assistant, timed")
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))
    python = venv()
    command = [str(python), "-m", "homeassistant"]  # its scripts' first lines name where the virtualenv was made
    version = subprocess.run([*command, "--version"], capture_output=True, text=True).stdout.strip()
    top = header(
        "The home in Home Assistant, through the MQTT bridge",
        " ".join(["python -m tests.bench.home_assistant", *sys.argv[1:]]),
        {"Docker Engine": docker_version(), "Home Assistant": version},
    )
    project = f"smarthome-ha-{uuid.uuid4().hex[:6]}"
    compose = ["docker", "compose", "-p", project, "--profile", "mqtt"]
    home = PLACE / "home"  # the shipped config with prep_time 0 and the rate limit lifted, as mqtt_bridge's
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    write_config(home)
    env = {**os.environ, "SMARTHOME_CONFIG_DIR": str(home)}
    config = PLACE / "config"
    shutil.rmtree(config, ignore_errors=True)
    config.mkdir(parents=True)
    (config / "configuration.yaml").write_text(CONFIGURATION)
    hass = None
    try:
        up = [*compose, "up", "--build", "--detach", "--wait", *SERVICES]
        subprocess.run(up, cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
        started = time.monotonic()
        with open(PLACE / "hass.log", "w") as log:
            hass = subprocess.Popen([*command, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
        token = sign_in()
        entry = add_mqtt(token)
        if entry.get("type") != "create_entry":
            raise SystemExit(f"the MQTT config flow did not end in an entry: {entry}")
        wait("the home's entities in Home Assistant", lambda: shows(token, ENTITIES))
        found_after = time.monotonic() - started
        found = states(token)
        mirror = found["sensor.mirror"]["attributes"]
        switches: list[float] = []
        light_log = ["docker", "compose", "-p", project, "logs", "--no-log-prefix", "light-switch"]
        for i in range(options.toggles):
            service, wanted = ("turn_off", OFF) if i % 2 == 0 else ("turn_on", ENTITIES)
            before = time.perf_counter()
            request("POST", f"/api/services/switch/{service}", {"entity_id": "switch.light_switch"}, token)
            wait(f"Home Assistant to show {wanted}", lambda wanted=wanted: shows(token, wanted), 30, every=0.01)
            switches.append(time.perf_counter() - before)
        commanded = subprocess.run(light_log, cwd=ROOT, env=env, capture_output=True, text=True).stdout.count(
            "switched OFF by mqtt-bridge@"
        )
    except BaseException:
        logs = subprocess.run([*compose, "logs"], cwd=ROOT, env=env, capture_output=True, text=True).stdout
        print(logs, file=sys.stderr)
        print((PLACE / "hass.log").read_text()[-5000:] if (PLACE / "hass.log").exists() else "", file=sys.stderr)
        raise
    finally:
        if hass:
            hass.terminate()
            hass.wait(30)
        subprocess.run([*compose, "down", "--timeout", "5"], cwd=ROOT, env=env, capture_output=True)

    ms = [s * 1e3 for s in switches]
    rows = [
        [entity, found[entity]["attributes"].get("friendly_name", ""), found[entity]["state"]] for entity in ENTITIES
    ]
    text = (
        f"{top}\n"
        f"Onboarding, the MQTT integration through its config flow, then every entity by discovery: "
        f"{found_after:.1f} s after Home Assistant was started.\n\n"
        f"{table(['entity', 'name', 'state with the light ON'], rows)}\n"
        f"The mirror's attributes: `{json.dumps({k: v for k, v in mirror.items() if k in ('coffee', 'toast')})}`.\n\n"
        f"`switch.turn_off` / `turn_on` on the light from Home Assistant's REST API, {len(ms)} times: the light "
        f"switch took {commanded} OFF commands from the bridge, and Home Assistant showed the light, both appliances "
        f"and the mirror in the new state {median(ms):.0f} ms (median) after the call, {max(ms):.0f} ms at most "
        f"(p90 {percentile(ms, 90):.0f} ms; polled every 10 ms).\n"
    )
    write("home_assistant", text)


if __name__ == "__main__":
    main()
