"""The waits between failed steps (indexer/backoff.py): equal jitter, bounded, reset."""

from __future__ import annotations

from indexer.backoff import Backoff


def test_delays_double_within_equal_jitter_up_to_the_cap() -> None:
    backoff = Backoff(first=0.5, cap=30.0)
    for n in range(1, 41):
        ceiling = min(30.0, 0.5 * 2 ** (n - 1))
        delay = backoff.next_delay()
        assert ceiling / 2 <= delay <= ceiling, (n, delay)
    assert backoff.failures == 40


def test_delays_are_random_and_reset_starts_over() -> None:
    backoff = Backoff(first=1.0, cap=8.0)
    seen = set()
    for _ in range(20):
        backoff.reset()
        seen.add(round(backoff.next_delay(), 6))
    assert len(seen) > 1 and all(0.5 <= d <= 1.0 for d in seen)
    backoff.failures = 10_000  # no overflow far past the cap
    assert 4.0 <= backoff.next_delay() <= 8.0
