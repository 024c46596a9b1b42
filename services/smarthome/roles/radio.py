"""The radio: a subscriber the tutorial does not have, for the N-to-N routine. Plays while any light is on."""

import logging

from smarthome.core.config import RadioConfig
from smarthome.core.envelope import LightState, Message
from smarthome.core.identity import Identity
from smarthome.core.runtime import Loop

log = logging.getLogger(__name__)


def main(me: Identity, spec: RadioConfig) -> int:
    loop = Loop(me)
    lights: dict[str, bool] = {}  # sender -> on, one entry per light switch heard

    def follow(was_playing: bool) -> None:
        if any(lights.values()) != was_playing:
            log.info("%s %s", spec.name, "playing" if not was_playing else "silent")

    def on_light(message: Message, light: LightState) -> None:
        was_playing = any(lights.values())
        lights[message.sender] = light.state == "ON"
        log.info("%s heard '%s is %s' from %s", spec.name, message.topic, light.state, message.sender)
        follow(was_playing)

    def on_gone(sender: str) -> None:  # a switch that is gone keeps no light on
        was_playing = any(lights.values())
        lights.pop(sender, None)
        follow(was_playing)

    loop.subscribe(spec.subscribe, LightState, on_light, on_gone)
    return loop.run()
