"""The dashboard answers only its own page: who may reach the forwarder, and how much each browser may do.

Threats it stands against (README, "Dashboard security"): any web page the user visits (its script can open
a WebSocket to 127.0.0.1 and would read the home and switch the light), DNS rebinding (a hostile name that
resolves to 127.0.0.1, so the browser deems it same-origin), other machines when bound beyond loopback,
and a browser or script that floods, hoards connections or stalls half-way through a request.

- every route: the Host header must name us (127.0.0.1, localhost, [::1] or `allowed_hosts`): no Host is 400,
  a foreign one 403 — that alone defeats DNS rebinding;
- /ws: a browser's Origin must be the origin it reached us at (Host already checked) or in `allowed_origins`,
  else 403 before the upgrade; at most `max_browsers` at once (503); a `topics` filter of bounded size;
- beyond loopback /ws needs the access token (`?token=`, compared in constant time), except from
  `token_free_peers`; without it the socket is closed at once with 4401, which tells the page to ask for it;
- every response carries CSP (frame-ancestors 'none'), nosniff and no-referrer;
- each browser's frames pass a token bucket; every bad frame is one rate-limited warning line.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import WSMessage, WSMsgType, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from smarthome.core.config import DOCKER_HOST, LOOPBACK_ENV, ConfigError, WebConfig

log = logging.getLogger(__name__)

WS_PATH = "/ws"
TOKEN_REQUIRED = 4401  # a private close code (4000-4999): the page asks for the access token
MIN_TOKEN_CHARS = 16
MAX_TOPICS = 16  # in a /ws?topics= filter: a page needs a handful
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Cross-Origin-Resource-Policy": "same-origin",
}
_TOPIC = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def listen_host(spec: WebConfig) -> str:
    """The address to bind: the configured one, except in local mode, which stays on loopback."""
    return "127.0.0.1" if os.environ.get(LOOPBACK_ENV) == "1" else spec.bind_host


def escape(text: object, limit: int = 200) -> str:
    """`text` fit for one log line: control characters escaped, cut at `limit` characters."""
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text)[: limit + 1])
    return line if len(line) <= limit else line[:limit] + "…"


def docker_host(route_table: Path = Path("/proc/net/route")) -> str | None:
    """The default gateway's IPv4 address: inside a container on a bridge network, the Docker host itself.

    Outside a container the gateway is a router, trusted by nobody: then None.
    """
    if not Path("/.dockerenv").exists():
        return None
    try:
        lines = route_table.read_text().splitlines()[1:]
    except OSError:
        return None
    for fields in (line.split() for line in lines):
        if len(fields) > 2 and fields[1] == "00000000":  # destination 0.0.0.0: the default route
            return socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
    return None


class TokenBucket:
    """`rate` events per second after a burst of `burst`: take() says whether one more may happen now."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class QuietLog:
    """Warnings at a bounded rate: a flood of bad input costs a few lines, and says how many it held back."""

    def __init__(self, logger: logging.Logger, per_second: float = 1.0, burst: int = 10) -> None:
        self.logger = logger
        self.bucket = TokenBucket(per_second, burst)
        self.held_back = 0

    def warning(self, message: str) -> None:
        if not self.bucket.take():
            self.held_back += 1
            return
        if self.held_back:
            message += f" ({self.held_back} more warnings held back)"
            self.held_back = 0
        self.logger.warning("%s", message)


class RequestErrors(logging.LoggerAdapter):
    """aiohttp's server log, where a malformed request (no Host in HTTP/1.1, a bad request line) is one
    rate-limited warning instead of an ERROR with a traceback; anything else goes through unchanged."""

    def __init__(self, quiet: Callable[[str], None]) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.quiet = quiet

    def exception(self, msg: object, *args: object, exc_info: object = True, **kwargs: object) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.quiet(f"{str(msg) % args}: {exc_info.code} {exc_info.message}")
        else:
            self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)  # type: ignore[arg-type]


class Guard:
    """Admission for the forwarder's routes and per-browser limits, from the web service's config."""

    def __init__(self, spec: WebConfig) -> None:
        self.spec = spec
        self.hosts = LOCAL_HOSTS | {h.lower() for h in spec.allowed_hosts}
        self.origins = {o.lower() for o in spec.allowed_origins}
        self.loopback_only = ipaddress.ip_address(listen_host(spec)).is_loopback
        self.token = self._read_token(spec)
        free = [] if self.loopback_only else self._free_peers(spec)
        self.free = [ipaddress.ip_network(p, strict=False) for p in free]
        self.browsers = 0  # /ws handlers running now, counted before their first await
        self.quiet = QuietLog(log)

    @staticmethod
    def _read_token(spec: WebConfig) -> bytes | None:
        if not spec.access_token_file:
            return None
        path = spec.access_token_file
        try:
            token = Path(path).read_text(encoding="utf-8").strip().encode()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(path, "", f"cannot read the access token: {exc}") from None
        if len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(path, "", f"the access token needs {MIN_TOKEN_CHARS} characters or more")
        return token

    @staticmethod
    def _free_peers(spec: WebConfig) -> list[str]:
        peers = [p for p in spec.token_free_peers if p != DOCKER_HOST]
        if DOCKER_HOST in spec.token_free_peers:
            gateway = docker_host()
            if gateway is None:
                log.warning("%s found no Docker host (not in a container?): '%s' frees nobody", spec.name, DOCKER_HOST)
            peers += [gateway] if gateway else []
        return peers

    def server_options(self) -> dict[str, object]:
        """For aiohttp's AppRunner: the header-read deadline and the quiet log of malformed requests."""
        # keepalive_timeout is aiohttp's only clock on a connection that has not sent a whole request: it starts
        # with the connection (each response restarts it) and closes one still waiting for its headers by then.
        return {"keepalive_timeout": self.spec.header_timeout, "logger": RequestErrors(self.warn)}

    def install(self, app: web.Application) -> None:
        app.middlewares.append(self.admit)
        app.on_response_prepare.append(self.add_headers)

    def warn(self, message: str) -> None:
        self.quiet.warning(f"{self.spec.name} {escape(message, 300)}")

    def bucket(self) -> TokenBucket:
        """A new browser's allowance of frames."""
        return TokenBucket(self.spec.command_rate, self.spec.command_burst)

    # --- every request ----------------------------------------------------------------------------------

    @web.middleware
    async def admit(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        host = request.headers.get(hdrs.HOST)
        if host is None:
            raise web.HTTPBadRequest(text="missing Host header")
        if _hostname(host) not in self.hosts:
            self.warn(f"refused {request.remote}: unknown Host '{host}' (see allowed_hosts)")
            raise web.HTTPForbidden(text="unknown Host")
        if request.path != WS_PATH:
            return await handler(request)
        return await self._websocket(request, handler)

    async def add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(SECURITY_HEADERS)

    # --- /ws --------------------------------------------------------------------------------------------

    async def _websocket(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)  # browsers always send it; other clients have no page to guard
        if origin is not None and not self._own_origin(request, origin):
            self.warn(f"refused /ws from {request.remote}: Origin '{origin}' (see allowed_origins)")
            raise web.HTTPForbidden(text="foreign Origin")
        topics = [t for t in request.query.get("topics", "").split(",") if t]
        if len(topics) > MAX_TOPICS or not all(_TOPIC.match(t) for t in topics):
            raise web.HTTPBadRequest(text=f"topics: at most {MAX_TOPICS} topic names")
        if not self._authorized(request):
            self.warn(f"refused /ws from {request.remote}: no valid access token")
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.close(code=TOKEN_REQUIRED, message=b"access token required")
            return ws
        if self.browsers >= self.spec.max_browsers:
            self.warn(f"refused /ws from {request.remote}: {self.browsers} browsers already (max_browsers)")
            raise web.HTTPServiceUnavailable(text="too many browsers")
        self.browsers += 1
        try:
            return await handler(request)
        finally:
            self.browsers -= 1

    def _own_origin(self, request: web.Request, origin: str) -> bool:
        """The page comes from where the browser reached us (the Host, already on the list) or a listed origin."""
        origin = origin.lower()
        return origin == f"{request.scheme}://{request.headers[hdrs.HOST].lower()}" or origin in self.origins

    def _authorized(self, request: web.Request) -> bool:
        if self.loopback_only or self._free(request.remote):
            return True
        given = request.query.get("token", "").encode()
        return self.token is not None and hmac.compare_digest(given, self.token)

    def _free(self, peer: str | None) -> bool:
        try:
            address = ipaddress.ip_address(peer or "")
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
        return any(address in network for network in self.free)

    # --- frames from a browser --------------------------------------------------------------------------

    def screen(self, bucket: TokenBucket, frame: WSMessage) -> str | None:
        """None for a text frame within the browser's allowance (a command to read), else why it is refused."""
        if not bucket.take():
            return f"too many commands (at most {self.spec.command_rate:g} a second)"
        if frame.type == WSMsgType.TEXT:
            return None
        if frame.type == WSMsgType.ERROR:  # aiohttp closes the socket after it (1009 too big, 1007 not UTF-8)
            return f"bad frame: {frame.data}"
        return f"{frame.type.name.lower()} frames are not accepted"


def _hostname(host: str) -> str:
    """The name in a Host header, without its port: 'localhost:8080' -> 'localhost', '[::1]:80' -> '[::1]'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0]
