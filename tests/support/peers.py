"""A test's own sockets and pages: the keys and the token it speaks with, like the host tools and the dashboard."""

from __future__ import annotations

from pathlib import Path

import zmq
from smarthome.core.config import load_config
from smarthome.core.identity import TOOLS
from smarthome.core.keys import KeyRing, key_names, keys_dir
from smarthome.web.guard import TOKEN_COOKIE

from .processes import endpoint


def with_key(sock: zmq.Socket, config: Path, name: str = TOOLS, server: str | None = None) -> zmq.Socket:
    """A test's own socket speaking CurveZMQ with the key of `name` (made if missing), pinned to `server`'s key
    (or, with none, a server itself). Call before bind or connect."""
    loaded = load_config(config)
    ring = KeyRing(keys_dir(loaded))
    ring.ensure(key_names(loaded))
    sock.curve_publickey, sock.curve_secretkey = ring.pair(name)
    if server:
        sock.curve_serverkey = ring.public(server)
    else:
        sock.curve_server = True
    return sock


def dashboard_token(config: Path, web: str = "web") -> str:
    """The dashboard's access token for `config`: made beside its keys when the web first starts."""
    return KeyRing(keys_dir(load_config(config))).token(web).decode()


def as_page(base: str, config: Path) -> dict[str, str]:
    """The headers the dashboard's own page at `base` (scheme://host:port) sends with /ws: its Origin, and the
    token as the cookie that /?token= set."""
    return {"Origin": base, "Cookie": f"{TOKEN_COOKIE}={dashboard_token(config)}"}


def listener(context: zmq.Context, config: Path, service: str, *topics: bytes) -> zmq.Socket:
    """A test's own SUB (the host tools' key) on `service`'s publisher, subscribed to `topics`."""
    sub = with_key(context.socket(zmq.SUB), config, server=service)
    for topic in topics:
        sub.subscribe(topic)
    sub.connect(endpoint(config, service))
    return sub
