"""Bounded exponential backoff with jitter, for the loops that wait between failures
(the daemon's step loop, the outbox publisher). The chain client retries inside one call with
tenacity; these loops wait *between* calls and must stay interruptible, so they only need the
delays."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Backoff:
    """Delay n (n = 1, 2, …) is uniform in [ceiling/2, ceiling], ceiling = min(cap, first·2ⁿ⁻¹)."""

    first: float = 0.5
    cap: float = 30.0
    failures: int = 0

    def next_delay(self) -> float:
        self.failures += 1
        ceiling = min(self.cap, self.first * 2 ** min(self.failures - 1, 30))
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0
