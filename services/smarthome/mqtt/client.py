"""paho-mqtt's client for the bridge: connects, reconnects and keeps alive on a thread of its own.

Each of its events is handed over to the service's loop (`soon`), which alone touches the home's sockets and
state; the only thing done on paho's thread is the rate limit, so what it hands over is bounded: commands past
it are dropped there and counted, and the loop tells the count.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

import paho.mqtt.client as paho

from smarthome.core.limits import TokenBucket
from smarthome.mqtt.home import OFFLINE, MqttHome

RECONNECT_AFTER = (0.25, 1.0)  # seconds: the first wait to reconnect, doubled up to the second
STOP_WAIT = 0.3  # seconds to say offline, and then to leave: a stop takes well under a second
QUEUED_MAX = 1000  # messages paho may hold while it connects (each connect republishes everything anyway)
log = logging.getLogger(__name__)


def nodelay(client: paho.Client, _: object, sock: socket.socket) -> None:
    """Each small message sent at once: with Nagle, the second of a burst waits for the first's delayed ACK (40 ms)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Mqtt:
    """One MQTT connection: `on_connected()` after each (re)connect, `on_command(payload)` for each command taken."""

    def __init__(self, home: MqttHome, password: str, soon: Callable[[Callable[[], None]], None]) -> None:
        self.home, self.soon, self.broker = home, soon, home.spec.mqtt_broker
        self.on_connected: Callable[[], None] = lambda: None
        self.on_command: Callable[[bytes], None] = lambda payload: None
        self.commands = TokenBucket(home.spec.command_rate, home.spec.command_burst)  # on paho's thread only
        self.over_limit = 0  # commands dropped there, told by the loop
        self.trouble = ""  # the last problem told: a broker that stays away is one line, not one a second
        self.stopping, self.left = False, threading.Event()
        self.client = client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"{home.prefix}-{home.bridge}", protocol=paho.MQTTv311
        )
        client.username_pw_set(home.bridge, password)
        client.will_set(home.bridge_availability, OFFLINE, qos=1, retain=True)  # a crash says offline too
        client.reconnect_delay_set(*RECONNECT_AFTER)
        client.max_queued_messages_set(QUEUED_MAX)
        client.on_connect, client.on_disconnect = self._guarded(self._on_connect), self._guarded(self._on_disconnect)
        client.on_connect_fail = self._guarded(self._on_connect_fail)
        client.on_message, client.on_socket_open = self._guarded(self._on_message), self._guarded(nodelay)

    def start(self) -> None:
        host, _, port = self.broker.removeprefix("tcp://").rpartition(":")
        self.client.connect_async(host, int(port), keepalive=self.home.spec.keepalive)
        self.client.loop_start()

    def publish(self, topic: str, payload: str | bytes) -> None:
        """Retained, at least once; skipped while not connected, for every connect publishes everything."""
        if self.client.is_connected():
            self.client.publish(topic, payload, qos=1, retain=True)

    def stop(self) -> None:
        """Say offline (a clean leave sends no last will), and leave."""
        self.stopping = True
        if self.client.is_connected():
            self.client.publish(self.home.bridge_availability, OFFLINE, qos=1, retain=True).wait_for_publish(STOP_WAIT)
        self.client.disconnect()
        self.left.wait(STOP_WAIT)  # paho's thread is a daemon: one stuck in a name lookup ends with the process

    def told_over_limit(self) -> int:
        """Commands dropped over the rate limit since the last call (one lost to paho's thread is only a count)."""
        dropped, self.over_limit = self.over_limit, 0
        return dropped

    # --- on paho's thread: hand over, nothing more ---

    def _guarded(self, callback: Callable[..., None]) -> Callable[..., None]:
        """`callback` for paho's thread: what it raises ends the service (exit 1), not paho's thread in silence."""

        def run(*args: object) -> None:
            try:
                callback(*args)
            except Exception as exc:
                self.soon(lambda failure=exc: self._failed(failure))  # bound now: `exc` is gone after the block

        return run

    def _on_connect(self, client: paho.Client, _: object, __: object, reason: paho.ReasonCode, ___: object) -> None:
        if reason.is_failure:
            self.soon(lambda: self._tell(f"was refused by MQTT broker {self.broker}: {reason}"))
            return
        client.subscribe(self.home.command_topic, qos=1)  # the one subscription: nothing else is ever taken
        self.soon(self._connected)

    def _on_connect_fail(self, client: paho.Client, _: object) -> None:
        self.soon(lambda: self._tell(f"cannot reach MQTT broker {self.broker}; retrying"))

    def _on_disconnect(self, client: paho.Client, _: object, __: object, reason: paho.ReasonCode, ___: object) -> None:
        if self.stopping:
            self.left.set()
            return
        self.soon(lambda: self._tell(f"lost MQTT broker {self.broker} ({reason}); reconnecting"))

    def _on_message(self, client: paho.Client, _: object, message: paho.MQTTMessage) -> None:
        if message.topic != self.home.command_topic:
            return
        if not self.commands.take():
            self.over_limit += 1
            return
        payload = message.payload
        self.soon(lambda: self.on_command(payload))

    # --- on the loop ---

    def _connected(self) -> None:
        self.trouble = ""
        self.on_connected()

    def _failed(self, exc: Exception) -> None:
        log.error("%s MQTT client failed: %r", self.home.spec.name, exc)
        raise SystemExit(1)

    def _tell(self, trouble: str) -> None:
        if trouble != self.trouble:
            self.trouble = trouble
            log.warning("%s %s", self.home.spec.name, trouble)
