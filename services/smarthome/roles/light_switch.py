"""The light switch: the 1 -> N publisher.

Publishes 'light is ON' at start, then toggles every toggle_period seconds (if not 0), and switches
on command: `smarthome light on|off` or the dashboard publish a LightState on its commands topic.
"""

import logging

from smarthome.core.config import LightSwitchConfig
from smarthome.core.envelope import LightState, Message
from smarthome.core.identity import Identity
from smarthome.core.runtime import Loop

log = logging.getLogger(__name__)


def main(me: Identity, spec: LightSwitchConfig) -> int:
    loop = Loop(me)
    light = loop.publisher(spec.publish)
    state = LightState("ON")

    def switch(new: LightState) -> None:
        nonlocal state
        state = new
        message = light.publish(state)
        log.info("%s published '%s is %s' (seq %d)", spec.name, light.topic, state.state, message.seq)

    def on_command(message: Message, command: LightState) -> None:
        log.info("%s switched %s by %s", spec.name, command.state, message.sender)
        if command != state:
            switch(command)

    switch(state)  # nobody may be listening yet: the publisher re-sends it to every subscriber that joins
    if spec.toggle_period > 0:
        loop.every(spec.toggle_period, lambda: switch(LightState("OFF" if state.state == "ON" else "ON")))
    if spec.commands:
        loop.subscribe(spec.commands, LightState, on_command)
    return loop.run()
