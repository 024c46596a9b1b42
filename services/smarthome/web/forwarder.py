"""The WebSocket forwarder: the morning routine live in a browser, and the light switch from it.

aiohttp serves the dashboard, /ws and /healthz on one port. A SUB socket (zmq.asyncio, on the same event
loop as the browsers) receives every topic; each message goes to every connected browser as JSON
{topic, sender, seq, ts, body}. Every browser has its own bounded queue: a browser that falls behind is
closed and logged, and never slows the others or grows memory. Heartbeats mark senders online/offline;
the forwarder tells the browsers as "presence" events. Browser commands are validated and published on
the light switches' commands topic; a bad one gets an "error" event back to that browser only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import zmq
import zmq.asyncio
from aiohttp import WSCloseCode, WSMessage, web

from smarthome.core.config import WebConfig
from smarthome.core.envelope import HEARTBEAT_TOPIC, LightState, Message, encode
from smarthome.core.runtime import ConnectionLog, Inbox, Service, subscriber
from smarthome.web.guard import Guard, TokenBucket, listen_host

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
MAX_COMMAND_BYTES = 1024


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
    def __init__(self, service: Service, spec: WebConfig) -> None:
        self.service = service
        self.spec = spec
        self.guard = Guard(spec)
        self.browsers: set[Browser] = set()
        self.latest: dict[tuple[str, str], str] = {}  # (topic, sender) -> last event: a new page starts complete
        self.last_seen: dict[str, float] = {}  # sender -> monotonic time of its last message
        self.online: dict[str, bool] = {}
        self.command_listeners = 0  # subscriptions to the commands topic seen on our XPUB
        self._seq = 0

    # --- zmq side ---------------------------------------------------------------------------------------

    async def receive(self, sock: zmq.asyncio.Socket) -> None:
        inbox = Inbox(self.spec.name, self.spec.subscribe.topics, None)
        while True:
            accepted = inbox.accept(await sock.recv_multipart())
            if not accepted:
                continue
            message, _ = accepted
            self.seen(message.sender)
            if message.topic != HEARTBEAT_TOPIC:  # heartbeats only feed presence
                self.send_all(message)

    async def count_command_listeners(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            event = await sock.recv()
            self.command_listeners += 1 if event[:1] == b"\x01" else -1

    def seen(self, sender: str) -> None:
        self.last_seen[sender] = time.monotonic()
        if not self.online.get(sender):
            self.online[sender] = True
            self.send_all(self.own_event("presence", {"sender": sender, "online": True}))

    async def watch_presence(self) -> None:
        interval = self.service.config.heartbeat_interval
        while True:
            await asyncio.sleep(interval)  # a periodic check on the event loop, not synchronisation
            self.service.health.touch()
            deadline = time.monotonic() - interval * self.spec.offline_after
            for sender, seen in self.last_seen.items():
                if self.online[sender] and seen < deadline:
                    self.online[sender] = False
                    log.info("%s %s is offline", self.spec.name, sender)
                    self.send_all(self.own_event("presence", {"sender": sender, "online": False}))

    # --- browser side -----------------------------------------------------------------------------------

    def own_event(self, topic: str, body: dict[str, Any]) -> Message:
        self._seq += 1
        return Message(topic, self.service.sender, self.service.boot, self._seq, time.time(), body)

    def send_all(self, message: Message) -> None:
        text = as_json(message)
        if message.topic not in ("presence", "error"):
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
        ws = web.WebSocketResponse(max_msg_size=MAX_COMMAND_BYTES)
        await ws.prepare(request)
        topics = {t for t in request.query.get("topics", "").split(",") if t}
        browser = Browser(ws, topics, self.spec.client_queue, request.remote or "?", self.guard.bucket())
        self.browsers.add(browser)
        log.info("%s browser %s connected (topics: %s)", self.spec.name, browser.peer, ",".join(topics) or "all")
        for (topic, _), text in list(self.latest.items()):  # what a page needs to draw the current state
            if browser.wants(topic):
                self.offer(browser, text)
        for sender, online in self.online.items():
            self.offer(browser, as_json(self.own_event("presence", {"sender": sender, "online": online})))
        writer = asyncio.create_task(self.write(browser))
        try:
            async for frame in ws:
                self.received(browser, frame)
        finally:
            writer.cancel()
            if browser in self.browsers:
                self.browsers.discard(browser)
                log.info("%s browser %s disconnected", self.spec.name, browser.peer)
        return ws

    async def write(self, browser: Browser) -> None:
        with contextlib.suppress(ConnectionError):  # the browser went away; its handler cleans up
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
        self.guard.warn(f"browser {browser.peer}: {problem}")
        self.offer(browser, as_json(self.own_event("error", {"error": problem})))

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
        if self.command_listeners <= 0:
            self.offer(browser, as_json(self.own_event("error", {"error": "no light switch is listening"})))
            return
        message = self.own_event(self.spec.commands.topic, msgspec.to_builtins(state))
        self.commands.send_multipart(encode(message))
        log.info("%s browser %s switched the light %s", self.spec.name, browser.peer, state.state)


async def log_connections(monitor: zmq.asyncio.Socket, connections: ConnectionLog) -> None:
    while True:
        connections.record(await monitor.recv_multipart())


def as_json(message: Message) -> str:
    return json.dumps({k: getattr(message, k) for k in ("topic", "sender", "seq", "ts", "body")})


FORWARDER = web.AppKey("forwarder", Forwarder)


def make_app(service: Service, spec: WebConfig) -> web.Application:
    """The aiohttp application, its zmq sockets opened on start-up and closed on clean-up."""
    forwarder = Forwarder(service, spec)
    app = web.Application()
    app[FORWARDER] = forwarder
    forwarder.guard.install(app)  # Host, Origin, token, browser cap and security headers on every route

    async def zmq_sockets(app: web.Application) -> Any:
        context = zmq.asyncio.Context()
        context.linger = 0
        sub = subscriber(context, spec.subscribe, service.config.max_message_bytes)
        monitor = sub.get_monitor_socket(ConnectionLog.EVENTS)  # before connecting, so no event is missed
        for endpoint in spec.subscribe.connect:
            sub.connect(endpoint)
        forwarder.commands = context.socket(zmq.XPUB)  # XPUB: we see whether a light switch listens
        forwarder.commands.connect(spec.commands.connect or "")
        tasks = [
            asyncio.create_task(forwarder.receive(sub)),
            asyncio.create_task(forwarder.count_command_listeners(forwarder.commands)),
            asyncio.create_task(forwarder.watch_presence()),
            asyncio.create_task(log_connections(monitor, ConnectionLog(spec.name))),
        ]
        service.health.touch()
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        context.destroy()
        service.health.remove()

    async def going_away(app: web.Application) -> None:
        for browser in list(forwarder.browsers):
            with contextlib.suppress(Exception):
                await browser.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "browsers": len(forwarder.browsers)})

    app.cleanup_ctx.append(zmq_sockets)
    app.on_shutdown.append(going_away)

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    app.router.add_get("/", index)
    app.router.add_get("/ws", forwarder.websocket)
    app.router.add_get("/healthz", healthz)
    app.router.add_static("/static", STATIC)
    return app


def main(service: Service, spec: WebConfig) -> int:
    """Serve until SIGTERM/SIGINT, then close browsers with 'going away' and exit 0."""
    app = make_app(service, spec)
    asyncio.run(serve(app, listen_host(spec), spec.port, spec.name, **app[FORWARDER].guard.server_options()))
    log.info("%s stopped", spec.name)
    return 0


async def serve(app: web.Application, host: str, port: int, label: str, **options: Any) -> None:
    # Our own signal handling rather than run_app's: a second signal (Ctrl-C reaches a whole process group,
    # and `smarthome local` forwards SIGTERM too) must not interrupt a shutdown already under way.
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1, **options)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("%s started on port %d", label, port)  # only now: a client may connect as soon as it reads this
    await stop.wait()
    await runner.cleanup()
