"""Rate limits: what a peer may ask of a service per second, however fast it asks."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """`rate` events per second after a burst of `burst`: take() says whether one more may happen now."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self) -> bool:
        if self.empty():
            return False
        self.tokens -= 1
        return True

    def empty(self) -> bool:
        """Whether no event may happen now (nothing taken)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens < 1
