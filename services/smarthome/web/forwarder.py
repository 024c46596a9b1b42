"""The WebSocket forwarder: the morning routine live in a browser, and the light switch from it.

aiohttp serves the dashboard, /ws and /healthz on one port. A SUB socket (zmq.asyncio, on the same event
loop as the browsers) receives every topic; each message goes to every connected browser as JSON
{topic, sender, seq, ts, body}. A new browser first gets the opening view, then every browser has its own
bounded queue: a browser that falls behind is closed and logged, and never slows the others or grows memory
(docs/protocol.md, rules V). Heartbeats mark senders online/offline; the forwarder tells the browsers as
"presence" events. Browser commands are validated and published on
the light switches' commands topic; a bad one gets an "error" event back to that browser only.
Who may connect at all, and how much each browser may send, is decided by web/guard.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import WSCloseCode, WSMessage, web

from smarthome.core.asyncio_loop import AsyncioLoop
from smarthome.core.config import WebConfig
from smarthome.core.envelope import HEARTBEAT_TOPIC, LightState, Message
from smarthome.core.identity import Identity
from smarthome.core.limits import TokenBucket
from smarthome.core.logs import peer_warnings
from smarthome.core.messaging import Outbox
from smarthome.core.problems import explain
from smarthome.core.protocol import Kind
from smarthome.web.guard import Guard, access_token, listen_host

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
MAX_COMMAND_BYTES = 1024
GONE_SHOWN = 64  # [V3] forgotten senders kept in the opening view, the most recently gone
GONE_SHOWN_FOR = 60  # [V3] seconds a forgotten sender stays in it


class Command(msgspec.Struct, forbid_unknown_fields=True):
    command: str
    state: str


class Browser:
    """One open page: what it wants and its own bounded queue of JSON texts to send."""

    def __init__(self, ws: web.WebSocketResponse, topics: set[str], limit: int, peer: str, bucket: TokenBucket) -> None:
        self.ws = ws
        self.bucket = bucket  # how many frames it may still send now
        self.topics = topics  # empty: everything
        self.queue: asyncio.Queue[str] = asyncio.Queue(limit)
        self.peer = peer
        self.closing: asyncio.Task[bool] | None = None

    def wants(self, topic: str) -> bool:
        return not self.topics or topic in self.topics or topic in ("presence", "error")


class Forwarder:
    """The zmq side (on an AsyncioLoop, like every service's on its Loop) and the browser side, on one asyncio loop."""

    def __init__(self, me: Identity, spec: WebConfig) -> None:
        self.me = me
        self.spec = spec
        self.guard = Guard(spec, access_token(me.config, me.name))
        self.browsers: set[Browser] = set()
        self.latest: dict[tuple[str, str], str] = {}  # (topic, sender) -> newest state: a new page starts complete
        self.online: dict[str, bool] = {}  # sender -> shown online; gone senders stay a while, shown offline [V3]
        self.gone_at: dict[str, float] = {}  # sender shown offline -> when it went, least recent first
        self.events = Outbox(me, "presence", Kind.EVENT)  # the forwarder's own events to browsers: presence, error
        self.body_types = {topic: me.config.body_type(topic) for topic in me.config.topics}
        self.loop = AsyncioLoop(me)
        self.done = self.loop.done  # set by SIGTERM/SIGINT, or by a background task that died

    @property
    def failed(self) -> bool:
        return self.loop.failed

    # --- zmq side ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the zmq sockets on this event loop and start the background tasks."""
        loop = self.loop
        loop.open()
        self.subscriber = loop.subscribe(
            self.spec.subscribe, None, self.on_message, on_gone=self.gone, on_gap=self.counted, heartbeats=True
        )
        self.commands = loop.publisher(self.spec.commands)  # the light button's; it knows whether a switch listens
        loop.every(self.me.config.heartbeat_interval, self.forget_gone)

    async def stop(self) -> None:
        await self.loop.close()

    def on_message(self, message: Message, _: None) -> None:
        self.seen(message.sender)
        if message.topic != HEARTBEAT_TOPIC and (typed := self.typed(message)):  # heartbeats only feed presence
            self.send_all(typed)

    def typed(self, message: Message) -> Message | None:
        """`message` with its body in its typed form, unknown fields dropped: what browsers get and `latest`
        keeps is what a page can read, and no bigger. None (and a warning) if the body is not of its type."""
        body_type = self.body_types.get(message.topic)
        if body_type is None:
            return message
        try:
            body = msgspec.to_builtins(msgspec.convert(message.body, body_type))
        except msgspec.ValidationError as exc:
            problem, where = explain(exc)
            problem += f" at 'body.{where}'" if where else ""
            peer_warnings.log(
                "%s dropped a message on '%s': %s", self.spec.name, message.topic, problem, peer=message.sender
            )
            return None
        return msgspec.structs.replace(message, body=body)

    def seen(self, sender: str) -> None:
        if not self.online.get(sender):
            self.online[sender] = True
            self.gone_at.pop(sender, None)
            self.send_all(self.presence(sender))

    def counted(self, sender: str) -> None:
        """A gap in what `sender` sent: the pages show its new count (one not yet online is shown by `seen`)."""
        if self.online.get(sender):
            self.send_all(self.presence(sender))

    def gone(self, sender: str) -> None:
        """[F1] A sender forgotten: shown offline, and kept a while in the opening view [V3]."""
        self.online[sender] = False
        self.gone_at[sender] = time.monotonic()
        self.send_all(self.presence(sender))

    def forget_gone(self) -> None:
        """[V3] The gone leave the opening view in time, and the least recently gone first past GONE_SHOWN (the
        alive are at most MAX_SENDERS: the receiver forgets past that [F3])."""
        now = time.monotonic()
        while self.gone_at and (
            len(self.gone_at) > GONE_SHOWN or next(iter(self.gone_at.values())) < now - GONE_SHOWN_FOR
        ):
            self.forget(next(iter(self.gone_at)))

    def forget(self, sender: str) -> None:
        del self.online[sender], self.gone_at[sender]
        for topic in self.me.config.topics:
            self.latest.pop((topic, sender), None)

    def presence(self, sender: str) -> Message:
        missed = self.subscriber.receiver.missed_of(sender)
        return self.events.message({"sender": sender, "online": self.online[sender], "missed": missed})

    # --- browser side -----------------------------------------------------------------------------------

    def error_event(self, body: dict[str, Any]) -> Message:
        return self.events.message(body, topic="error")

    def send_all(self, message: Message) -> None:
        text = as_json(message)
        if self.me.config.topics.get(message.topic) is Kind.STATE:  # [V4] commands and events are not state
            self.latest[message.topic, message.sender] = text
        for browser in list(self.browsers):
            if browser.wants(message.topic):
                self.offer(browser, text)

    def offer(self, browser: Browser, text: str) -> None:
        try:
            browser.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.drop(browser, f"too slow: more than {self.spec.client_queue} messages behind")

    def drop(self, browser: Browser, reason: str) -> None:
        if browser in self.browsers:
            self.browsers.discard(browser)
            log.warning("%s dropped browser %s: %s", self.spec.name, browser.peer, reason)
            close = browser.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=reason.encode())
            browser.closing = asyncio.create_task(close)  # kept, so the task is not garbage-collected

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        # heartbeat: a ping every ping_interval; a browser that does not answer in half of it is closed (a page
        # answers by itself: only a dead or squatting connection stays silent).
        ws = web.WebSocketResponse(max_msg_size=MAX_COMMAND_BYTES, heartbeat=self.spec.ping_interval)
        await ws.prepare(request)
        topics = {t for t in request.query.get("topics", "").split(",") if t}
        browser = Browser(ws, topics, self.spec.client_queue, request.remote or "?", self.guard.bucket(request))
        self.browsers.add(browser)
        log.info("%s browser %s connected (topics: %s)", self.spec.name, browser.peer, ",".join(topics) or "all")
        writer = asyncio.create_task(self.write(browser, self.opening_view(browser)))
        try:
            async for frame in ws:
                self.received(browser, frame)
        finally:
            writer.cancel()
            if browser in self.browsers:
                self.browsers.discard(browser)
                log.info("%s browser %s disconnected", self.spec.name, browser.peer)
        return ws

    def opening_view(self, browser: Browser) -> list[str]:
        """[V1] What a page needs to draw the home as it is: the newest states, then who is online."""
        view = [text for (topic, _), text in self.latest.items() if browser.wants(topic)]
        return view + [as_json(self.presence(sender)) for sender in self.online]

    async def write(self, browser: Browser, opening_view: list[str]) -> None:
        """[V1, V2] The opening view first, outside the queue (it never counts as falling behind), then the queue."""
        with contextlib.suppress(ConnectionError):  # the browser went away; its handler cleans up
            for text in opening_view:
                await browser.ws.send_str(text)
            while True:
                await browser.ws.send_str(await browser.queue.get())

    def received(self, browser: Browser, frame: WSMessage) -> None:
        """One frame from a browser: a command, or else an error event and a warning. Never raises."""
        try:
            problem = self.guard.screen(browser.bucket, frame)
            if problem is None:
                self.command(browser, frame.data)
                return
        except Exception as exc:  # no input may end this handler (msgspec raises RecursionError on deep JSON)
            problem = f"{type(exc).__name__}: {exc}"
        self.refuse(browser, problem)

    def refuse(self, browser: Browser, problem: str) -> None:
        self.guard.warn(f"browser {browser.peer}: {problem}", browser.peer)
        self.offer(browser, as_json(self.error_event({"error": problem})))

    def command(self, browser: Browser, text: str) -> None:
        """Validate a browser's command and publish it; errors go back to that browser only."""
        try:
            command = msgspec.json.decode(text, type=Command)
            if command.command != "light":
                raise ValueError(f"unknown command '{command.command}' (known: light)")
            state = msgspec.convert({"state": command.state}, LightState)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError) as exc:
            self.refuse(browser, f"bad command: {exc}")
            return
        if not self.commands.listened:
            self.offer(browser, as_json(self.error_event({"error": "no light switch is listening"})))
            return
        self.commands.publish(state)
        log.info("%s browser %s switched the light %s", self.spec.name, browser.peer, state.state)


def as_json(message: Message) -> str:
    # allow_nan=False: a browser's JSON.parse cannot read Infinity or NaN, so such a message is dropped here.
    return json.dumps({k: getattr(message, k) for k in ("topic", "sender", "seq", "ts", "body")}, allow_nan=False)


FORWARDER = web.AppKey("forwarder", Forwarder)


def make_app(me: Identity, spec: WebConfig) -> web.Application:
    """The aiohttp application, its zmq sockets opened on start-up and closed on clean-up."""
    forwarder = Forwarder(me, spec)
    app = web.Application()
    app[FORWARDER] = forwarder
    forwarder.guard.install(app)  # Host, Origin, token, browser cap and security headers on every route

    async def zmq_sockets(app: web.Application) -> Any:
        forwarder.start()
        yield
        await forwarder.stop()

    async def going_away(app: web.Application) -> None:
        for browser in list(forwarder.browsers):
            with contextlib.suppress(Exception):
                await browser.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    async def healthz(request: web.Request) -> web.Response:
        missed = forwarder.subscriber.receiver.missed()  # per sender: messages the forwarder never got [G5]
        return web.json_response({"ok": True, "browsers": len(forwarder.browsers), "missed": missed})

    app.cleanup_ctx.append(zmq_sockets)
    app.on_shutdown.append(going_away)

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    app.router.add_get("/", index)
    app.router.add_get("/ws", forwarder.websocket)
    app.router.add_get("/healthz", healthz)
    app.router.add_static("/static", STATIC)
    return app


def main(me: Identity, spec: WebConfig) -> int:
    """Serve until SIGTERM/SIGINT, then close browsers with 'going away' and exit 0 (1 if a task died)."""
    app = make_app(me, spec)
    if not asyncio.run(serve(app, listen_host(spec), spec.port, spec.name, **app[FORWARDER].guard.server_options())):
        return 1
    log.info("%s stopped", spec.name)
    return 1 if app[FORWARDER].failed else 0


async def serve(app: web.Application, host: str, port: int, label: str, **options: Any) -> bool:
    """Serve until a signal; False (after one line in the log) when the port cannot be had."""
    # Our own signal handling rather than run_app's: a second signal (Ctrl-C reaches a whole process group,
    # and `smarthome local` forwards SIGTERM too) must not interrupt a shutdown already under way.
    done = app[FORWARDER].done
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, done.set)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1, **options)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:  # e.g. the port is taken: one line, not a traceback
        log.error("%s cannot listen on %s:%d: %s", label, host, port, os.strerror(exc.errno) if exc.errno else exc)
        await runner.cleanup()
        return False
    log.info("%s started on port %d", label, port)  # only now: a client may connect as soon as it reads this
    await done.wait()
    await runner.cleanup()
    return True
