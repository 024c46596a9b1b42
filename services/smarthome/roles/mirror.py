"""The smart mirror: the N -> 1 subscriber. Shows which appliances are ready, one summary line per change.

It also publishes its view (if configured), so the dashboard can show what the mirror shows.
"""

import json
import logging

import msgspec

from smarthome.core.config import MirrorConfig
from smarthome.core.envelope import ApplianceStatus, Message, MirrorView
from smarthome.core.identity import Identity
from smarthome.core.runtime import Loop

log = logging.getLogger(__name__)


def main(me: Identity, spec: MirrorConfig) -> int:
    loop = Loop(me)
    display = {topic: me.config.publisher_of(topic)[1].name for topic in spec.subscribe.topics}
    # (topic, sender) -> ready: scaled appliances share a topic and are told apart by sender.
    view: dict[tuple[str, str], bool] = {}
    shown: dict[str, str] = {}
    publisher = loop.publisher(spec.publish) if spec.publish else None

    def labelled() -> dict[str, str]:
        shown: dict[str, str] = {}
        for topic in spec.subscribe.topics:
            senders = sorted(sender for t, sender in view if t == topic)
            if not senders:
                shown[topic] = "unknown"
            for sender in senders:
                label = topic if len(senders) == 1 else f"{topic}@{sender.partition('@')[2]}"
                shown[label] = "ready" if view[topic, sender] else "idle"
        return shown

    def show() -> None:
        nonlocal shown
        if (now := labelled()) != shown:
            shown = now
            log.info("%s %s", spec.name, " ".join(f"{label}={state}" for label, state in now.items()))
            if publisher:
                publisher.publish(MirrorView(now))

    def on_status(message: Message, status: ApplianceStatus) -> None:
        log.info("Topic: %s => %s", display[message.topic], json.dumps(msgspec.to_builtins(status)))
        view[message.topic, message.sender] = status.status
        show()

    def on_gone(sender: str) -> None:  # a crashed, recreated or scaled-down instance: no ghost on the mirror
        for key in [key for key in view if key[1] == sender]:
            del view[key]
        show()

    loop.subscribe(spec.subscribe, ApplianceStatus, on_status, on_gone)
    return loop.run()
