"""The light switch: the 1 -> N publisher.

Publishes 'light is ON' at start, then toggles every toggle_period seconds (if not 0), and switches on command:
`smarthome light on|off` or the dashboard publish a LightState on its commands topic. Restarted where a broker
keeps the states (broker wiring), it starts from the state it had before (docs/protocol.md, P4), else ON.
"""

import logging

from smarthome.core.config import LightSwitchConfig, Subscribe
from smarthome.core.envelope import LightState, Message
from smarthome.core.identity import Identity
from smarthome.core.runtime import Loop

log = logging.getLogger(__name__)


def main(me: Identity, spec: LightSwitchConfig) -> int:
    loop = Loop(me)
    state = LightState("ON")

    def start(kept: LightState | None) -> None:
        light = loop.publisher(spec.publish)

        def switch(new: LightState) -> None:
            nonlocal state
            state = new
            message = light.publish(state)
            log.info("%s published '%s is %s' (seq %d)", spec.name, light.topic, state.state, message.seq)

        def on_command(message: Message, command: LightState) -> None:
            log.info("%s switched %s by %s", spec.name, command.state, message.sender)
            if command != state:
                switch(command)

        if kept:
            log.info("%s restored '%s is %s' from its life before", spec.name, light.topic, kept.state)
        switch(kept or state)  # nobody may be listening yet: the publisher answers every subscriber that joins
        if spec.toggle_period > 0:
            loop.every(spec.toggle_period, lambda: switch(LightState("OFF" if state.state == "ON" else "ON")))
        if spec.commands:
            loop.subscribe(spec.commands, LightState, on_command)

    if spec.commands and spec.commands.connect:  # through a broker, which keeps our last state [P4]
        loop.restore(Subscribe([spec.publish.topic], connect=spec.commands.connect), LightState, start)
    else:
        start(None)
    return loop.run()
