"""What runs inside the containers of e2e_latency.py (mounted at /bench): the raw pyzmq routine and the probe.

    python /bench/e2e_roles.py light PUB_ENDPOINT PERIOD COUNT
    python /bench/e2e_roles.py appliance SUB_ENDPOINT PUB_ENDPOINT ID
    python /bench/e2e_roles.py mirror SUB_ENDPOINT[,SUB_ENDPOINT] PUB_ENDPOINT APPLIANCES
    python /bench/e2e_roles.py proxy XSUB_ENDPOINT XPUB_ENDPOINT
    python /bench/e2e_roles.py probe ours|raw SUB_ENDPOINT[,...] TOGGLES

The probe of `ours` speaks CurveZMQ like the host tools: the tools' key from /keys, and the server key of
the service named by each endpoint's host.

The raw routine does what ours does with nothing else: the light toggles every PERIOD seconds, each
appliance forwards the light's (seq, state, send time) at once, the mirror publishes when every appliance
has answered a toggle. An endpoint with '*' is bound, any other is connected.

The probe prints one JSON line: for each toggle, the mirror's publish time minus the light's publish time
(both stamped with time.time() by the two containers; containers share the host's clock).
Ours: the light's envelope `ts`, and the `ts` of the first mirror view that shows every appliance in the
toggle's state. Raw: both times travel in the mirror's message.
"""

from __future__ import annotations

import json
import struct
import sys
import time

import zmq
import zmq.auth

TOGGLE = struct.Struct("!Q?d")  # seq, on, light send time
MIRROR = struct.Struct("!Q?dd")  # seq, on, light send time, mirror send time
WARMUP = 20  # toggles skipped while every subscription settles
SETTLE = 2.0  # seconds the probe keeps listening after its last toggle
KEYS = "/keys"  # the stack's CurveZMQ keys, mounted read-only


def attach(sock: zmq.Socket, endpoint: str) -> zmq.Socket:
    if "*" in endpoint:
        sock.bind(endpoint)
    else:
        sock.connect(endpoint)
    return sock


def light(context: zmq.Context, endpoint: str, period: float, count: int) -> None:
    sock = attach(context.socket(zmq.PUB), endpoint)
    started = time.perf_counter()
    for seq in range(1, count + 1):
        sock.send(b"light" + TOGGLE.pack(seq, seq % 2 == 1, time.time()))
        ahead = started + seq * period - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)  # ok: the switch's toggle period, not synchronisation


def appliance(context: zmq.Context, sub_endpoint: str, pub_endpoint: str, ident: str) -> None:
    sub = attach(context.socket(zmq.SUB), sub_endpoint)
    sub.subscribe(b"light")
    pub = attach(context.socket(zmq.PUB), pub_endpoint)
    prefix = b"status" + ident.encode()[:1]
    while True:
        pub.send(prefix + sub.recv()[5:])


def mirror(context: zmq.Context, sub_endpoints: str, pub_endpoint: str, appliances: int) -> None:
    sub = context.socket(zmq.SUB)
    for endpoint in sub_endpoints.split(","):
        attach(sub, endpoint)
    sub.subscribe(b"status")
    pub = attach(context.socket(zmq.PUB), pub_endpoint)
    answered: dict[int, int] = {}
    while True:
        seq, on, light_ts = TOGGLE.unpack(sub.recv()[7:])
        answered[seq] = answered.get(seq, 0) + 1
        if answered[seq] == appliances:
            del answered[seq]
            pub.send(b"mirror" + MIRROR.pack(seq, on, light_ts, time.time()))


def proxy(context: zmq.Context, xsub_endpoint: str, xpub_endpoint: str) -> None:
    zmq.proxy(attach(context.socket(zmq.XSUB), xsub_endpoint), attach(context.socket(zmq.XPUB), xpub_endpoint))


def probe(context: zmq.Context, mode: str, endpoints: str, toggles: int) -> None:
    sub = context.socket(zmq.SUB)
    if mode == "ours":
        sub.curve_publickey, sub.curve_secretkey = zmq.auth.load_certificate(f"{KEYS}/tools.key_secret")
    for endpoint in endpoints.split(","):
        if mode == "ours":  # pinned per connection: the option applies to the connects that follow it
            server = endpoint.split("//")[1].split(":")[0]
            sub.curve_serverkey = zmq.auth.load_certificate(f"{KEYS}/{server}.key")[0]
        sub.connect(endpoint)
    sub.subscribe(b"mirror")
    if mode == "ours":
        sub.subscribe(b"light")
    events: list[tuple] = []  # ours: ("light", seq, state, ts) and ("mirror", all-state, ts); raw: MIRROR tuples
    deadline = None
    while deadline is None or time.monotonic() < deadline:
        if not sub.poll(100):
            continue
        event = _event(mode, sub.recv_multipart())
        if mode == "ours" and not events and event[0] != "mirror":
            continue  # recorded from the mirror's first view on: before it, the stack is still starting
        events.append(event)
        if deadline is None and _toggles_seen(mode, events) >= WARMUP + toggles:
            deadline = time.monotonic() + SETTLE
    print(json.dumps(_latencies(mode, events, toggles)), flush=True)


def _event(mode: str, frames: list[bytes]) -> tuple:
    if mode == "raw":
        return MIRROR.unpack(frames[0][6:])
    from smarthome.core.envelope import decode  # on the image's PYTHONPATH

    message = decode(frames)
    if message.topic == "light":
        return ("light", message.seq, message.body["state"] == "ON", message.ts)
    states = set(message.body["view"].values())
    return ("mirror", states.pop() if len(states) == 1 else None, message.ts)


def _toggles_seen(mode: str, events: list[tuple]) -> int:
    return len(events) if mode == "raw" else sum(event[0] == "light" for event in events)


def _latencies(mode: str, events: list[tuple], toggles: int) -> dict:
    """Seconds from each measured toggle to the mirror's publish, and how many toggles got no answer."""
    if mode == "raw":
        measured = sorted(events)[WARMUP : WARMUP + toggles]
        answered = {seq: mirror_ts - light_ts for seq, _, light_ts, mirror_ts in measured}
        first, last = measured[0][0], measured[-1][0]
        return {"latencies": list(answered.values()), "missed": (last - first + 1) - len(answered)}
    lights = [e for e in events if e[0] == "light"][WARMUP : WARMUP + toggles]
    mirrors = [e for e in events if e[0] == "mirror"]
    state_of = {True: "ready", False: "idle"}
    latencies = []
    for i, (_, _, on, ts) in enumerate(lights):
        # The answer to this toggle comes before the next toggle to the same state (two on, if any).
        until = lights[i + 2][3] if i + 2 < len(lights) else float("inf")
        answer = next((m[2] for m in mirrors if ts <= m[2] < until and m[1] == state_of[on]), None)
        if answer is not None:
            latencies.append(answer - ts)
    return {"latencies": latencies, "missed": len(lights) - len(latencies)}


def main() -> None:
    role, *args = sys.argv[1:]
    context = zmq.Context()
    if role == "light":
        light(context, args[0], float(args[1]), int(args[2]))
    elif role == "appliance":
        appliance(context, *args)
    elif role == "mirror":
        mirror(context, args[0], args[1], int(args[2]))
    elif role == "proxy":
        proxy(context, *args)
    else:
        probe(context, args[0], args[1], int(args[2]))
    context.destroy(linger=0)


if __name__ == "__main__":
    main()
