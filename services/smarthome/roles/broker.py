"""The broker: N-to-N pub/sub. Every publisher connects to its XSUB, every subscriber to its XPUB.

A poller loop rather than zmq.proxy, because the broker must see the traffic: it keeps the last message
of each topic from each sender and hands them to every new subscription (so late joiners learn the whole
state at once), forgets a sender that stopped heartbeating (so no ghost is handed out), and logs each
subscribe and unsubscribe. Both sockets live on the one loop; neither is touched by a thread.
"""

import logging
import time
from collections import OrderedDict

import zmq

from smarthome.core.config import BrokerConfig
from smarthome.core.envelope import HEARTBEAT_TOPIC, sender_of
from smarthome.core.identity import Identity
from smarthome.core.messaging import MAX_SENDERS, Subscription, send_frames
from smarthome.core.runtime import Loop

log = logging.getLogger(__name__)
LAST_VALUES_MAX = 10_000  # (topic, sender) pairs remembered; the least recently updated is forgotten first
HEARTBEAT = HEARTBEAT_TOPIC.encode()


def main(me: Identity, spec: BrokerConfig) -> int:
    loop = Loop(me)
    from_publishers = loop.sockets.make(zmq.XSUB, bind=spec.publishers)
    # Hand us every subscribe and every unsubscribe, repeats included.
    to_subscribers = loop.sockets.make(zmq.XPUB, bind=spec.subscribers, xpub_verboser=True)
    last_values: OrderedDict[tuple[bytes, str], list[bytes]] = OrderedDict()
    heard: OrderedDict[str, float] = OrderedDict()  # sender -> when last heard, least recent first

    def forward(frames: list[bytes]) -> None:
        send_frames(to_subscribers, frames)
        sender = sender_of(frames[-1]) if len(frames) == 2 else None
        if sender is None:
            return  # not ours to keep; every subscriber drops it as malformed
        heard[sender] = time.monotonic()
        heard.move_to_end(sender)
        if len(heard) > MAX_SENDERS:
            forget(next(iter(heard)))
        if frames[0] == HEARTBEAT:
            return  # "alive now" is not state: a late subscriber must not take it for a live sender
        key = (frames[0], sender)
        last_values[key] = frames
        last_values.move_to_end(key)
        if len(last_values) > LAST_VALUES_MAX:
            last_values.popitem(last=False)

    def forget(sender: str) -> None:
        heard.pop(sender, None)
        for key in [key for key in last_values if key[1] == sender]:
            del last_values[key]

    def expire() -> None:
        deadline = time.monotonic() - me.config.gone_after
        for sender in [sender for sender, at in heard.items() if at < deadline]:
            log.info("%s forgot %s: no heartbeat for %gs", spec.name, sender, me.config.gone_after)
            forget(sender)

    def on_subscription(frames: list[bytes]) -> None:
        subscription = Subscription.parse(frames)
        if not subscription:
            return  # XPUB peers have nothing else to say
        from_publishers.send(frames[0])  # upstream too: publishers re-send their own state
        shown = f"'{subscription.prefix.decode(errors='replace')}'" if subscription.prefix else "all topics"
        log.info("%s %s %s", spec.name, "subscribe" if subscription.on else "unsubscribe", shown)
        if subscription.on:
            for (topic, _), last in list(last_values.items()):
                if topic.startswith(subscription.prefix):
                    send_frames(to_subscribers, last)

    # Copying small messages into bytes is cheaper than zero-copy Frames, which pay only above ~64 kB.
    loop.on_message(from_publishers, forward)
    loop.on_message(to_subscribers, on_subscription)
    loop.every(me.config.heartbeat_interval, expire)
    return loop.run()
