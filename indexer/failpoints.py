"""Named crash points for the fault suite (``kill -9`` at an exact point of a step).

When the environment variable ``AUDIFI_FAILPOINT`` names a point, the process sends itself
SIGKILL the first time it reaches that point — no cleanup, no rollback by the process itself,
exactly like ``kill -9`` from outside. Unset (production), :func:`hit` is a dictionary lookup.

Points in a step (``indexer/sync.py``): ``after_fetch`` (RPC answers in hand, nothing
written), ``mid_write`` (inside the transaction, part of the batch written), ``before_commit``
(everything written, not committed), ``after_commit`` (committed, before the caller learns).
"""

from __future__ import annotations

import os
import signal

ENV = "AUDIFI_FAILPOINT"
POINTS = ("after_fetch", "mid_write", "before_commit", "after_commit")


def hit(point: str) -> None:
    if os.environ.get(ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
