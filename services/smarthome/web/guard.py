"""The dashboard answers only its own page: who may reach the forwarder, and how much each client may do.

Threats it stands against (docs/security.md, "Dashboard security"): any process on the machine (it can reach 127.0.0.1
as well as the browser can), any web page the user visits (its script can open a WebSocket to 127.0.0.1 and
would read the home and switch the light), DNS rebinding (a hostile name that resolves to 127.0.0.1, so the
browser deems it same-origin), other machines when bound beyond loopback, and a client that floods, hoards
connections, guesses tokens or stalls half-way through a request.

- every route: the Host header must name us (127.0.0.1, localhost, [::1] or `allowed_hosts`): no Host is 400,
  a foreign one 403 — that alone defeats DNS rebinding;
- the access token, always: `/?token=` (the address `smarthome dashboard` prints) sets it as a cookie (HttpOnly,
  SameSite=Strict) and redirects to `/`; /ws wants it (cookie or `?token=`, compared in constant time), else
  it is closed at once with 4401, which tells the page to ask for it. Wrong guesses from one address are slowed
  to one a second after a few;
- /ws: an Origin is required and must be the origin the page reached us at (Host already checked) or in
  `allowed_origins`, else 403 before the upgrade; at most `max_browsers` at once and `browsers_per_address`
  from one address (503); a `topics` filter of bounded size; a browser that answers no ping is closed;
- every response carries CSP (frame-ancestors 'none'), nosniff and no-referrer;
- each client (address) has one token bucket for its commands, however many connections it opens; every bad
  frame is one rate-limited warning line.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import NoReturn

from aiohttp import WSMessage, WSMsgType, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from smarthome.core.config import LOOPBACK_ENV, Config, SetupError, WebConfig
from smarthome.core.envelope import TOPIC
from smarthome.core.keys import KeyRing, keys_dir, token_file
from smarthome.core.limits import TokenBucket
from smarthome.core.logs import LimitedLines, escape

log = logging.getLogger(__name__)

WS_PATH = "/ws"
TOKEN_REQUIRED = 4401  # a private close code (4000-4999): the page asks for the access token
TOKEN_COOKIE = "smarthome-token"
MIN_TOKEN_CHARS = 16
GUESSES_BURST = 5  # wrong tokens from one address before they are slowed...
GUESSES_PER_SECOND = 1.0  # ...to this many
ADDRESSES_MAX = 4096  # addresses whose buckets are kept; the least recently seen goes first
MAX_TOPICS = 16  # in a /ws?topics= filter: a page needs a handful
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Cross-Origin-Resource-Policy": "same-origin",
}
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def listen_host(spec: WebConfig) -> str:
    """The address to bind: the configured one, except in local mode, which stays on loopback."""
    return "127.0.0.1" if os.environ.get(LOOPBACK_ENV) == "1" else spec.bind_host


class Buckets:
    """A token bucket per address, for the ADDRESSES_MAX addresses seen last: what one client may do, however
    many connections it opens."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.by_address: OrderedDict[str, TokenBucket] = OrderedDict()

    def of(self, address: str) -> TokenBucket:
        bucket = self.by_address.pop(address, None) or TokenBucket(self.rate, self.burst)
        self.by_address[address] = bucket
        if len(self.by_address) > ADDRESSES_MAX:
            self.by_address.popitem(last=False)
        return bucket


class RequestErrors(logging.LoggerAdapter):
    """aiohttp's server log, where a malformed request (no Host in HTTP/1.1, a bad request line) is one
    rate-limited warning instead of an ERROR with a traceback; anything else goes through unchanged."""

    def __init__(self, warn: Callable[..., None]) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.warn = warn

    def exception(self, msg: object, *args: object, exc_info: object = True, **kwargs: object) -> None:
        if isinstance(exc_info, HttpProcessingError):  # aiohttp does not say from whom: all such lines share one
            self.warn(f"{str(msg) % args}: {exc_info.code} {exc_info.message}", peer="malformed requests")
        else:
            self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)  # type: ignore[arg-type]


class AccessTokenError(SetupError):
    """The dashboard's access token cannot be had: FILE: PROBLEM."""

    kind = "access token error"


def access_token(config: Config, name: str) -> bytes:
    """The dashboard's token (keys.token_file), made on first start if it is the one beside the keys, like the
    keys (in compose the `keys` service has made it)."""
    ring = KeyRing(keys_dir(config))
    path = token_file(config, name)
    try:
        if path == ring.token_path(name) and not path.exists():
            ring.ensure_token(name)
        token = path.read_text(encoding="utf-8").strip().encode()
    except (OSError, UnicodeDecodeError) as exc:
        raise AccessTokenError(str(path), "", f"cannot read the access token: {exc}") from None
    if len(token) < MIN_TOKEN_CHARS:
        raise AccessTokenError(str(path), "", f"the access token needs {MIN_TOKEN_CHARS} characters or more")
    return token


class Guard:
    """Admission for the forwarder's routes and per-client limits, from the web service's config and its token."""

    def __init__(self, spec: WebConfig, token: bytes) -> None:
        self.spec = spec
        self.token = token
        self.hosts = LOCAL_HOSTS | {h.lower() for h in spec.allowed_hosts}
        self.origins = {o.lower() for o in spec.allowed_origins}
        self.browsers: dict[str, int] = {}  # address -> /ws handlers running now, counted before their first await
        self.commands = Buckets(spec.command_rate, spec.command_burst)
        self.guesses = Buckets(GUESSES_PER_SECOND, GUESSES_BURST)
        self.lines = LimitedLines(log)  # what clients did wrong: an allowance of lines per client

    def server_options(self) -> dict[str, object]:
        """For aiohttp's AppRunner: the header-read deadline and the rate-limited log of malformed requests."""
        # keepalive_timeout is aiohttp's only clock on a connection that has not sent a whole request: it starts
        # with the connection (each response restarts it) and closes one still waiting for its headers by then.
        return {"keepalive_timeout": self.spec.header_timeout, "logger": RequestErrors(self.warn)}

    def install(self, app: web.Application) -> None:
        app.middlewares.append(self.admit)
        app.on_response_prepare.append(self.add_headers)

    def warn(self, message: str, peer: object) -> None:
        """One warning about what `peer` (a client address) did, within that peer's allowance of lines."""
        self.lines.log("%s %s", self.spec.name, escape(message, 300), peer=peer)

    def bucket(self, request: web.Request) -> TokenBucket:
        """The allowance of frames of the client `request` comes from, shared by all its connections."""
        return self.commands.of(client_address(request))

    # --- every request ----------------------------------------------------------------------------------

    @web.middleware
    async def admit(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        host = request.headers.get(hdrs.HOST)
        if host is None:
            raise web.HTTPBadRequest(text="missing Host header")
        if _hostname(host) not in self.hosts:
            self.warn(f"refused {request.remote}: unknown Host '{host}' (see allowed_hosts)", request.remote)
            raise web.HTTPForbidden(text="unknown Host")
        if request.path == WS_PATH:
            return await self._websocket(request, handler)
        if request.path == "/" and "token" in request.query:
            self._sign_in(request)
        return await handler(request)

    async def add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(SECURITY_HEADERS)

    def _sign_in(self, request: web.Request) -> NoReturn:
        """`/?token=`: the page keeps a right token as a cookie only it sends, and leaves it out of its address."""
        given = request.query["token"].encode()
        if not self._right(request, given):
            raise web.HTTPSeeOther("/?wrong-token")  # the page asks again (a query: a fragment may not reload it)
        signed_in = web.HTTPSeeOther("/")
        signed_in.set_cookie(TOKEN_COOKIE, given.decode(), httponly=True, samesite="Strict", path="/")
        raise signed_in

    def _right(self, request: web.Request, given: bytes) -> bool:
        """Whether `given` is the token; wrong guesses from one address are slowed (429 once past the burst)."""
        address = client_address(request)
        guesses = self.guesses.of(address)
        if guesses.empty():
            self.warn(f"refused {address}: too many wrong tokens, one a second now", address)
            raise web.HTTPTooManyRequests(text="too many wrong tokens: try again in a second")
        if hmac.compare_digest(given, self.token):
            return True
        guesses.take()
        self.warn(f"refused {address}: wrong access token", address)
        return False

    # --- /ws --------------------------------------------------------------------------------------------

    async def _websocket(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None or not self._own_origin(request, origin):
            self.warn(f"refused /ws from {request.remote}: Origin '{origin}' (see allowed_origins)", request.remote)
            raise web.HTTPForbidden(text="foreign or missing Origin")
        topics = [t for t in request.query.get("topics", "").split(",") if t]
        if len(topics) > MAX_TOPICS or not all(TOPIC.match(t) for t in topics):
            raise web.HTTPBadRequest(text=f"topics: at most {MAX_TOPICS} topic names")
        given = (request.cookies.get(TOKEN_COOKIE) or request.query.get("token", "")).encode()
        if not (given and self._right(request, given)):
            if not given:
                self.warn(f"refused /ws from {request.remote}: no access token", request.remote)
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.close(code=TOKEN_REQUIRED, message=b"access token required")
            return ws
        address = client_address(request)
        if sum(self.browsers.values()) >= self.spec.max_browsers:
            self.warn(f"refused /ws from {address}: {self.spec.max_browsers} browsers already (max_browsers)", address)
            raise web.HTTPServiceUnavailable(text="too many browsers")
        if self.browsers.get(address, 0) >= self.spec.browsers_per_address:
            limit = self.spec.browsers_per_address
            refused = f"refused /ws from {address}: {limit} browsers from there already (browsers_per_address)"
            self.warn(refused, address)
            raise web.HTTPServiceUnavailable(text="too many browsers from this address")
        self.browsers[address] = self.browsers.get(address, 0) + 1
        try:
            return await handler(request)
        finally:
            self.browsers[address] -= 1
            if not self.browsers[address]:
                del self.browsers[address]

    def _own_origin(self, request: web.Request, origin: str) -> bool:
        """The page comes from where the browser reached us (the Host, already on the list) or a listed origin."""
        origin = origin.lower()
        return origin == f"{request.scheme}://{request.headers[hdrs.HOST].lower()}" or origin in self.origins

    # --- frames from a browser --------------------------------------------------------------------------

    def screen(self, bucket: TokenBucket, frame: WSMessage) -> str | None:
        """None for a text frame within the client's allowance (a command to read), else why it is refused."""
        if not bucket.take():
            return f"too many commands (at most {self.spec.command_rate:g} a second)"
        if frame.type == WSMsgType.TEXT:
            return None
        if frame.type == WSMsgType.ERROR:  # aiohttp closes the socket after it (1009 too big, 1007 not UTF-8)
            return f"bad frame: {frame.data}"
        return f"{frame.type.name.lower()} frames are not accepted"


def client_address(request: web.Request) -> str:
    """Who a request comes from: its peer's address, an IPv4 one as such on a dual-stack socket."""
    try:
        address = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return request.remote or "?"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return str(address)


def _hostname(host: str) -> str:
    """The name in a Host header, without its port: 'localhost:8080' -> 'localhost', '[::1]:80' -> '[::1]'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0]
