"""The broker: N-to-N pub/sub. Every publisher connects to its XSUB, every subscriber to its XPUB.

A poller loop rather than zmq.proxy, because the broker must see the traffic: it keeps the last message
of each topic and hands it to every new subscription (so late joiners learn the state at once), and it
logs each subscribe and unsubscribe. Both sockets live on the one loop; neither is touched by a thread.
"""

import logging

import zmq

from smarthome.core.config import BrokerConfig
from smarthome.core.envelope import HEARTBEAT_TOPIC
from smarthome.core.runtime import Service, send_frames

log = logging.getLogger(__name__)
LAST_VALUES_MAX = 10_000  # topics remembered; the oldest is forgotten first
HEARTBEAT = HEARTBEAT_TOPIC.encode()


def main(service: Service, spec: BrokerConfig) -> None:
    from_publishers = service.socket(zmq.XSUB)
    service.attach(from_publishers, bind=spec.publishers)
    to_subscribers = service.socket(zmq.XPUB)
    to_subscribers.xpub_verboser = True  # hand us every subscribe and every unsubscribe, repeats included
    service.attach(to_subscribers, bind=spec.subscribers)
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
        event = frames[0]
        if event[:1] not in (b"\x00", b"\x01"):
            return  # not a (un)subscription: XPUB peers have nothing else to say
        from_publishers.send(event)  # upstream too: publishers re-send their own state
        subscribed, topic = event[:1] == b"\x01", event[1:]
        shown = f"'{topic.decode(errors='replace')}'" if topic else "all topics"
        log.info("%s %s %s", spec.name, "subscribe" if subscribed else "unsubscribe", shown)
        if subscribed:
            for name, frames in list(last_values.items()):
                if name.startswith(topic):
                    send_frames(to_subscribers, frames)

    # Copying small messages into bytes is cheaper than zero-copy Frames, which pay only above ~64 kB.
    service.on_message(from_publishers, forward)
    service.on_message(to_subscribers, on_subscription)
