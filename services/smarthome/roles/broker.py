"""The broker: N-to-N pub/sub. Every publisher connects to its XSUB, every subscriber to its XPUB.

A poller loop rather than zmq.proxy, because the broker must see the traffic: it checks every publisher's key
against what it sends [A1], keeps the last state of each sender and hands it to every new subscription (so late
joiners learn the whole state at once), forgets a sender that went quiet (so no ghost is handed out), and logs
each subscribe and unsubscribe: docs/protocol.md, rules C. Both sockets live on the one loop.
"""

import functools
import logging
import re
import time

import zmq

from smarthome.core.config import BrokerConfig
from smarthome.core.envelope import HEARTBEAT_TOPIC, TOPIC_NAME, EnvelopeError, decode_head, retyped
from smarthome.core.identity import Identity
from smarthome.core.logs import peer_warnings
from smarthome.core.messaging import Subscription, refused_instance, send_frames
from smarthome.core.protocol import Answers, Beat, Kind, LastValues, Receiver
from smarthome.core.runtime import Loop
from smarthome.core.sockets import subscriptions

log = logging.getLogger(__name__)
UPSTREAM_MAX = 1_000  # [C5] distinct subscriptions passed on to the publishers; beyond it they are refused
TOPIC_PREFIX = re.compile(rf"^({TOPIC_NAME})?$".encode())  # a subscription is a prefix of a topic name, or ''


def main(me: Identity, spec: BrokerConfig) -> int:
    loop = Loop(me)
    config, policy = me.config, loop.sockets.policy
    from_publishers = loop.sockets.make(zmq.XSUB, bind=spec.publishers)

    def missed(sender: str, count: int) -> None:
        log.warning("%s missed %d messages from %s", spec.name, count, sender)

    refused = functools.partial(refused_instance, spec.name, max_instances=config.max_instances)
    kept = LastValues(
        Receiver(
            config.topics,
            config.gone_after,
            config.heartbeat_interval,
            missed,
            max_instances=config.max_instances,
            on_refused=refused,
        )
    )
    upstream: set[bytes] = set()  # subscriptions the publishers have from us
    body_types = {t: config.body_type(t) for t, kind in config.topics.items() if kind is Kind.STATE}

    def forward(frames: list[bytes], peer: str | None = None) -> None:
        try:
            topic, concerns, head = decode_head(frames)
        except EnvelopeError as exc:
            peer_warnings.log("%s dropped a malformed message: %s", spec.name, exc, peer=peer)
            return
        if concerns not in config.topics:
            peer_warnings.log("%s dropped a message on '%s': not a declared topic", spec.name, concerns, peer=peer)
            return  # [K1]
        # [A1] The first hop: only here is the publisher's key known, so only here can it be checked.
        if policy and (refused := policy.refuses(peer or "?", head.sender, concerns)):
            peer_warnings.log("%s dropped a message on '%s': %s", spec.name, topic, refused, peer=peer)
            return
        send_frames(to_subscribers, frames)
        if topic != HEARTBEAT_TOPIC:
            if (body_type := body_types.get(topic)) is not None:  # a state: kept in its typed form [C1]
                try:
                    frames = retyped(frames, body_type)
                except EnvelopeError as exc:
                    peer_warnings.log("%s keeps no message it could not read: %s", spec.name, exc, peer=peer)
                    return
            kept.take(head.sender, head.life, topic, head.seq, frames, time.monotonic())  # [C1]
            return
        wanted = concerns.encode()
        if not any(wanted.startswith(prefix) for prefix in upstream):
            return  # [K5] a heartbeat for a topic nobody has from us
        if kept.receiver.heartbeat(head.sender, head.life, concerns, head.seq, time.monotonic()) is Beat.ASK:
            ask(wanted, head.sender)  # [C4]

    def ask(topic: bytes, sender: str) -> None:
        """[R4] Our publishers answer a subscription; the XSUB sends an unsubscribe only for its last holder."""
        log.info("%s asks again for '%s': %s has a newer state than we keep", spec.name, topic.decode(), sender)
        from_publishers.send(b"\x01" + topic)
        from_publishers.send(b"\x00" + topic)

    def expire() -> None:
        for sender in kept.expire(time.monotonic()):  # [C3, F1]
            log.info("%s forgot %s: not heard for %gs", spec.name, sender, config.gone_after)

    def on_subscription(subscription: Subscription, peer: str | None) -> None:
        if not TOPIC_PREFIX.match(subscription.prefix):
            return  # XPUB peers have nothing else to say, and no topic looks like this
        prefix = subscription.prefix
        shown = f"'{prefix.decode()}'" if prefix else "all topics"
        subscribe = "subscribe" if subscription.on else "unsubscribe"
        subscriptions.log("%s %s %s%s", spec.name, subscribe, shown, f" from {peer}" if peer else "", peer=peer)
        # [C5] Upstream, only the first subscribe and the last unsubscribe: the XSUB counts what it is sent, and
        # a publisher learns of a new subscriber anyway, from the last values we hand out below.
        if subscription.on and prefix not in upstream and len(upstream) < UPSTREAM_MAX:
            upstream.add(prefix)
            from_publishers.send(subscription.frame)  # publishers answer it [P2]: how an empty cache fills
        elif not subscription.on and prefix in upstream:
            upstream.discard(prefix)
            from_publishers.send(subscription.frame)
        if not subscription.on or not any(topic.startswith(prefix.decode()) for topic in config.topics):
            return  # nothing kept to answer with: and the prefixes paced are those of the declared topics
        if answers.now(prefix, time.monotonic()):  # [C2, P5]
            answer(prefix)
        elif not held:
            held.append(loop.call_later((answers.next_due() or 0.0) - time.monotonic(), answer_due))

    def answer(prefix: bytes) -> None:
        for last in kept.matching(prefix.decode()):  # [C2]
            send_frames(to_subscribers, last)

    def answer_due() -> None:
        held.clear()
        for prefix in answers.due(time.monotonic()):
            answer(prefix)
        if (due := answers.next_due()) is not None:
            held.append(loop.call_later(due - time.monotonic(), answer_due))

    answers = Answers(config.heartbeat_interval)
    held: list[object] = []  # the timer for the answers held, if one is set
    # Every subscribe, repeats included (each new subscriber gets the last values), and an unsubscribe only
    # once no subscriber holds it any more: libzmq tracks them per peer, so nobody takes back another's.
    to_subscribers = loop.sockets.xpub(on_subscription, bind=spec.subscribers)
    loop.watch(from_publishers, forward, peer=policy is not None)
    loop.every(config.heartbeat_interval, expire)
    return loop.run()
