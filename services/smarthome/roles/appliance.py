"""An appliance (coffee maker, toaster): subscribes to the light (1 -> N), publishes its status (N -> 1).

Light ON: prepare for prep_time seconds (a timer on the loop, not a sleep), then publish {"status": true}.
Light OFF: stop preparing, go idle and publish {"status": false}. Which appliance this is lives in config only.
"""

import logging

from smarthome.core.config import ApplianceConfig
from smarthome.core.envelope import ApplianceStatus, LightState, Message
from smarthome.core.identity import Identity
from smarthome.core.runtime import Loop, Timer

log = logging.getLogger(__name__)


def main(me: Identity, spec: ApplianceConfig) -> int:
    loop = Loop(me)
    status = loop.publisher(spec.publish)
    lights: dict[str, bool] = {}  # sender -> on: with several switches (N to N), any light on counts
    preparing: Timer | None = None

    def report(ready: bool) -> None:
        message = status.publish(ApplianceStatus(ready))
        log.info("%s %s (seq %d)", spec.name, "ready" if ready else "idle", message.seq)

    def follow(was_on: bool) -> None:
        nonlocal preparing
        if any(lights.values()) == was_on:
            return  # no change (e.g. a restarted switch announcing the same state)
        if preparing:
            preparing.cancel()
            preparing = None
        if not was_on:
            log.info("%s preparing for %gs", spec.name, spec.prep_time)
            preparing = loop.call_later(spec.prep_time, lambda: report(True))
        else:
            report(False)

    def on_light(message: Message, light: LightState) -> None:
        log.info("%s received '%s is %s' from %s.", spec.name, message.topic, light.state, message.topic)
        was_on = any(lights.values())
        lights[message.sender] = light.state == "ON"
        follow(was_on)

    def on_gone(sender: str) -> None:  # a switch that is gone keeps no light on
        was_on = any(lights.values())
        lights.pop(sender, None)
        follow(was_on)

    report(False)  # the current state, re-sent to every subscriber that joins
    loop.subscribe(spec.subscribe, LightState, on_light, on_gone)
    return loop.run()
