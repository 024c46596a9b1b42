"""The smart mirror: the N -> 1 subscriber. Shows which appliances are ready, one summary line per change."""

import json
import logging

from smarthome.config import MirrorConfig
from smarthome.envelope import ApplianceStatus, Message
from smarthome.runtime import Service

log = logging.getLogger(__name__)


def main(service: Service, spec: MirrorConfig) -> None:
    display = {topic: service.config.publisher_of(topic)[1].name for topic in spec.subscribe.topics}
    # (topic, sender) -> ready: scaled appliances share a topic and are told apart by sender.
    view: dict[tuple[str, str], bool] = {}
    shown = ""

    def summary() -> str:
        parts = []
        for topic in spec.subscribe.topics:
            senders = sorted(sender for t, sender in view if t == topic)
            if not senders:
                parts.append(f"{topic}=unknown")
            for sender in senders:
                label = topic if len(senders) == 1 else f"{topic}@{sender.partition('@')[2]}"
                parts.append(f"{label}={'ready' if view[topic, sender] else 'idle'}")
        return f"{spec.name} " + " ".join(parts)

    def on_status(message: Message, status: ApplianceStatus) -> None:
        nonlocal shown
        log.info("Topic: %s => %s", display[message.topic], json.dumps(message.body))
        view[message.topic, message.sender] = status.status
        if (line := summary()) != shown:
            shown = line
            log.info("%s", line)

    service.subscribe(spec.subscribe, ApplianceStatus, on_status)
