"""The loop contract (core/runtime.Runtime) on asyncio: for the web forwarder, whose browsers live on asyncio.

Every socket is a zmq.asyncio socket read by a task of its own; timers are asyncio's. Every task is
supervised: one that dies (it never ends by itself) sets `done` and `failed`, so the service stops with a
non-zero code rather than running on with part of it silently gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from smarthome.core.identity import Identity
from smarthome.core.runtime import Cancellable, Runtime
from smarthome.core.sockets import Handler, connection_of, guarded

log = logging.getLogger("smarthome")


class AsyncioLoop(Runtime):
    """One service's zmq side on the running asyncio loop; `open()` on that loop, `close()` at the end."""

    def __init__(self, me: Identity) -> None:
        self.me = me
        self.tasks: set[asyncio.Task[None]] = set()
        self.done = asyncio.Event()  # set by the service's stop, or by a task that died
        self.failed = False

    def open(self) -> None:
        """Make the context and the socket factory: on the running loop (the ZAP handler is a task of it)."""
        self.running = asyncio.get_running_loop()  # kept: call_soon_threadsafe comes from other threads
        self.context = zmq.asyncio.Context()
        self._open(self.context, zap=AsyncioAuthenticator)
        self.me.health.touch()  # running, as the poller Loop's run() says it at its start

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.sockets.keys:
            self.sockets.zap.stop()
        self.context.destroy()
        self.me.health.remove()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run `coroutine` as a supervised task."""
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self._task_ended)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        # A task never ends by itself: one that died would leave a live process that silently stopped working.
        if not task.cancelled() and task.exception():
            log.error("%s stopping: a background task died: %r", self.me.label, task.exception())
            self.failed = True
            self.done.set()

    # --- the loop's primitives ---------------------------------------------------------------------

    def watch(self, sock: zmq.Socket, handler: Handler, peer: bool = False, source: bool = False) -> None:
        handle = guarded(self.me.label, handler)

        async def read() -> None:
            while True:
                if not (peer or source):
                    handle(await sock.recv_multipart())
                    continue
                frames = await sock.recv_multipart(copy=False)
                first = frames[0]
                handle([frame.bytes for frame in frames], first.get("User-Id") if peer else connection_of(first))

        self.spawn(read())

    def every(self, period: float, callback: Callable[[], None]) -> None:
        async def repeat() -> None:
            while True:
                await asyncio.sleep(period)  # a periodic job on the event loop, not synchronisation
                callback()

        self.spawn(repeat())

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        return self.running.call_later(delay, callback)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        self.running.call_soon_threadsafe(callback)

    def send(self, sock: zmq.Socket, frames: list[bytes]) -> None:
        sock.send_multipart(frames)  # an asyncio socket's own send: it keeps its reads' wakeups right
