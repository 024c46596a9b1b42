"""The broker: N-to-N pub/sub. Every publisher connects to its XSUB, every subscriber to its XPUB.

A poller loop rather than zmq.proxy, because the broker must see the traffic: it keeps the last message
of each topic from each sender and hands them to every new subscription (so late joiners learn the whole
state at once), forgets a sender that stopped heartbeating (so no ghost is handed out), and logs each
subscribe and unsubscribe. Both sockets live on the one loop; neither is touched by a thread.
"""

import logging
import re
from collections import OrderedDict

import zmq

from smarthome.core.config import BrokerConfig
from smarthome.core.envelope import HEARTBEAT_TOPIC, sender_of
from smarthome.core.identity import Identity
from smarthome.core.messaging import Liveness, Subscription, send_frames
from smarthome.core.runtime import Loop
from smarthome.core.sockets import warnings

log = logging.getLogger(__name__)
LAST_VALUES_MAX = 10_000  # (topic, sender) pairs remembered; the least recently updated is forgotten first
LAST_VALUES_MAX_BYTES = 16 << 20  # and no more bytes than this
UPSTREAM_MAX = 1_000  # distinct subscriptions passed on to the publishers; beyond it they are refused
HEARTBEAT = HEARTBEAT_TOPIC.encode()
TOPIC_PREFIX = re.compile(rb"^([a-z][a-z0-9_-]{0,63})?$")  # a subscription is a prefix of a topic name, or


def main(me: Identity, spec: BrokerConfig) -> int:
    loop = Loop(me)
    from_publishers = loop.sockets.make(zmq.XSUB, bind=spec.publishers)
    # Every subscribe, repeats included (each new subscriber gets the last values), and an unsubscribe only
    # once no subscriber holds it any more: libzmq tracks them per peer, so nobody takes back another's.
    to_subscribers = loop.sockets.make(zmq.XPUB, bind=spec.subscribers, xpub_verbose=True)
    last_values: OrderedDict[tuple[bytes, str], list[bytes]] = OrderedDict()
    cached_bytes = 0
    liveness = Liveness(me.config.gone_after)
    upstream: set[bytes] = set()  # subscriptions the publishers have from us

    def forward(frames: list[bytes], peer: str | None = None) -> None:
        nonlocal cached_bytes
        sender = sender_of(frames[-1]) if len(frames) == 2 else None
        if loop.sockets.policy:  # the first hop: only here is the publisher's key known, so only here can it be checked
            topic = frames[0].decode(errors="replace")
            if refused := loop.sockets.policy.refuses(peer or "?", sender or "?", topic):
                warnings.warn("%s dropped a message on '%s': %s", spec.name, topic, refused)
                return
        send_frames(to_subscribers, frames)
        if sender is None:
            return  # not ours to keep; every subscriber drops it as malformed
        if evicted := liveness.hear(sender):
            forget(evicted)
        if frames[0] == HEARTBEAT:
            return  # "alive now" is not state: a late subscriber must not take it for a live sender
        key = (frames[0], sender)
        uncache(key)
        last_values[key] = frames
        cached_bytes += len(frames[0]) + len(frames[1])
        while len(last_values) > LAST_VALUES_MAX or cached_bytes > LAST_VALUES_MAX_BYTES:
            uncache(next(iter(last_values)))

    def uncache(key: tuple[bytes, str]) -> None:
        nonlocal cached_bytes
        if frames := last_values.pop(key, None):
            cached_bytes -= len(frames[0]) + len(frames[1])

    def forget(sender: str) -> None:
        for key in [key for key in last_values if key[1] == sender]:
            uncache(key)

    def expire() -> None:
        for sender in liveness.gone():
            log.info("%s forgot %s: no heartbeat for %gs", spec.name, sender, me.config.gone_after)
            forget(sender)

    def on_subscription(frames: list[bytes]) -> None:
        subscription = Subscription.parse(frames)
        if not subscription or not TOPIC_PREFIX.match(subscription.prefix):
            return  # XPUB peers have nothing else to say, and no topic looks like this
        prefix = subscription.prefix
        shown = f"'{prefix.decode()}'" if prefix else "all topics"
        log.info("%s %s %s", spec.name, "subscribe" if subscription.on else "unsubscribe", shown)
        # Upstream, only the first subscribe and the last unsubscribe: the XSUB counts what it is sent, and
        # a publisher learns of a new subscriber anyway, from the last values we hand out below.
        if subscription.on and prefix not in upstream and len(upstream) < UPSTREAM_MAX:
            upstream.add(prefix)
            from_publishers.send(frames[0])  # publishers re-send their state: how an empty cache fills
        elif not subscription.on and prefix in upstream:
            upstream.discard(prefix)
            from_publishers.send(frames[0])
        if subscription.on:
            for (topic, _), last in list(last_values.items()):
                if topic.startswith(subscription.prefix):
                    send_frames(to_subscribers, last)

    loop.on_message(from_publishers, forward, peer=loop.sockets.policy is not None)
    loop.on_message(to_subscribers, on_subscription)
    loop.every(me.config.heartbeat_interval, expire)
    return loop.run()
