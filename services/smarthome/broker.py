"""The broker: N-to-N pub/sub. Every publisher connects to its XSUB, every subscriber to its XPUB.

A poller loop rather than zmq.proxy, because the broker must see the traffic: it keeps the last message
of each topic and hands it to every new subscription (so late joiners learn the state at once), and it
logs each subscribe and unsubscribe. Both sockets live on the one loop; neither is touched by a thread.
"""

import logging

import zmq

from smarthome.config import BrokerConfig
from smarthome.runtime import Service

log = logging.getLogger(__name__)
LAST_VALUES_MAX = 10_000  # topics remembered; the oldest is forgotten first


def main(service: Service, spec: BrokerConfig) -> None:
    from_publishers = service.socket(zmq.XSUB)
    service.attach(from_publishers, bind=spec.publishers)
    to_subscribers = service.socket(zmq.XPUB)
    to_subscribers.xpub_verboser = True  # hand us every subscribe and every unsubscribe, repeats included
    service.attach(to_subscribers, bind=spec.subscribers)
    last_values: dict[bytes, list[zmq.Frame]] = {}

    def forward() -> None:
        frames = from_publishers.recv_multipart(copy=False)
        to_subscribers.send_multipart(frames, copy=False)
        topic = frames[0].bytes
        last_values.pop(topic, None)  # re-insert, so dict order is least recently updated first
        last_values[topic] = frames
        if len(last_values) > LAST_VALUES_MAX:
            del last_values[next(iter(last_values))]

    def on_subscription() -> None:
        event = to_subscribers.recv()
        from_publishers.send(event)  # upstream too: publishers re-send their own state
        subscribed, topic = event[:1] == b"\x01", event[1:]
        shown = f"'{topic.decode(errors='replace')}'" if topic else "all topics"
        log.info("%s %s %s", spec.name, "subscribe" if subscribed else "unsubscribe", shown)
        if subscribed:
            for name, frames in list(last_values.items()):
                if name.startswith(topic):
                    to_subscribers.send_multipart(frames, copy=False)

    service.on_readable(from_publishers, forward)
    service.on_readable(to_subscribers, on_subscription)
