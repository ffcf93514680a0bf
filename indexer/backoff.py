"""Bounded exponential backoff with jitter, for the loops that wait between failures
(the daemon's step loop, its start-up waits for the node and PostgreSQL, the outbox
publisher). The chain client retries inside one call with tenacity's ``Retrying``; these loops
wait *between* calls and must stay interruptible (a stop request ends the wait at once), so
they take only the delays from tenacity's wait strategy and sleep on their own events."""

from __future__ import annotations

from dataclasses import dataclass, field

from tenacity import RetryCallState, Retrying, wait_exponential, wait_random_exponential
from tenacity.wait import wait_base

_RETRYING = Retrying()  # the owner tenacity's RetryCallState requires; never called


@dataclass
class Backoff:
    """Delay n (n = 1, 2, …) is uniform in [ceiling/2, ceiling], ceiling = min(cap, first·2ⁿ⁻¹)
    ("equal jitter": tenacity's ``wait_exponential`` for the half that is certain plus
    ``wait_random_exponential`` for the half that is random)."""

    first: float = 0.5
    cap: float = 30.0
    failures: int = 0
    _wait: wait_base = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        half, half_cap = self.first / 2, self.cap / 2
        self._wait = wait_exponential(multiplier=half, max=half_cap) + wait_random_exponential(
            multiplier=half, max=half_cap
        )

    def next_delay(self) -> float:
        self.failures += 1
        state = RetryCallState(_RETRYING, None, (), {})
        state.attempt_number = self.failures
        return float(self._wait(state))

    def reset(self) -> None:
        self.failures = 0
