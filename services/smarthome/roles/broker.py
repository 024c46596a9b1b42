"""The broker: N-to-N pub/sub. Every publisher connects to its XSUB, every subscriber to its XPUB.

A poller loop rather than zmq.proxy, because the broker must see the traffic: it keeps the last message
of each topic and hands it to every new subscription (so late joiners learn the state at once), and it
logs each subscribe and unsubscribe. Both sockets live on the one loop; neither is touched by a thread.
"""

import logging

import zmq

from smarthome.core.config import BrokerConfig
from smarthome.core.envelope import HEARTBEAT_TOPIC
from smarthome.core.identity import Identity
from smarthome.core.messaging import Subscription, send_frames
from smarthome.core.runtime import Loop

log = logging.getLogger(__name__)
LAST_VALUES_MAX = 10_000  # topics remembered; the oldest is forgotten first
HEARTBEAT = HEARTBEAT_TOPIC.encode()


def main(me: Identity, spec: BrokerConfig) -> int:
    loop = Loop(me)
    from_publishers = loop.sockets.make(zmq.XSUB, bind=spec.publishers)
    # Hand us every subscribe and every unsubscribe, repeats included.
    to_subscribers = loop.sockets.make(zmq.XPUB, bind=spec.subscribers, xpub_verboser=True)
    last_values: dict[bytes, list[bytes]] = {}

    def forward(frames: list[bytes]) -> None:
        send_frames(to_subscribers, frames)
        topic = frames[0]
        if topic == HEARTBEAT:
            return  # "alive now" is not state: a late subscriber must not take it for a live sender
        last_values.pop(topic, None)  # re-insert, so dict order is least recently updated first
        last_values[topic] = frames
        if len(last_values) > LAST_VALUES_MAX:
            del last_values[next(iter(last_values))]

    def on_subscription(frames: list[bytes]) -> None:
        subscription = Subscription.parse(frames)
        if not subscription:
            return  # XPUB peers have nothing else to say
        from_publishers.send(frames[0])  # upstream too: publishers re-send their own state
        shown = f"'{subscription.prefix.decode(errors='replace')}'" if subscription.prefix else "all topics"
        log.info("%s %s %s", spec.name, "subscribe" if subscription.on else "unsubscribe", shown)
        if subscription.on:
            for name, last in list(last_values.items()):
                if name.startswith(subscription.prefix):
                    send_frames(to_subscribers, last)

    # Copying small messages into bytes is cheaper than zero-copy Frames, which pay only above ~64 kB.
    loop.on_message(from_publishers, forward)
    loop.on_message(to_subscribers, on_subscription)
    return loop.run()
