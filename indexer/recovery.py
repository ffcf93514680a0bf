"""Operator recovery: ``audifi-indexer rewind --to-block N`` (see docs/operations.md).

:func:`rewind` deletes everything indexed above block ``N`` — event log, dead letters,
registrations, window blocks — rolls the AudiFi tables back with it (exactly as a reorg to
``N`` would), queues a ``rollback`` message for Redis consumers when publishing is on, clears
a stored halt, and leaves the cursor at ``N``: the daemon re-indexes from ``N + 1``. All in
one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from indexer import store
from indexer.errors import IndexerError
from indexer.sync import Projector


@dataclass(frozen=True)
class RewindResult:
    chain_id: int
    to_block: int
    previous_block: int | None
    removed: dict[str, int]
    halt_cleared: bool


def rewind(
    conn: store.Conn,
    chain_id: int,
    to_block: int,
    *,
    outbox: bool,
    projector: Projector | None = None,
) -> RewindResult:
    if projector is None:
        from indexer.projections import AudifiProjector

        projector = AudifiProjector()
    try:
        return _rewind(conn, chain_id, to_block, outbox=outbox, projector=projector)
    except BaseException:
        projector.forget()  # its rollback left caches for a commit that did not happen
        raise


def _rewind(
    conn: store.Conn, chain_id: int, to_block: int, *, outbox: bool, projector: Projector
) -> RewindResult:
    with conn.transaction():
        state = store.lock_state(conn, chain_id)
        if state is None:
            raise IndexerError(f"chain {chain_id} has never been indexed into this database")
        if state.indexed_block is not None and to_block > state.indexed_block:
            raise IndexerError(
                f"--to-block {to_block} is above the indexed block {state.indexed_block}: "
                "nothing to rewind"
            )
        if to_block < state.start_block - 1:
            raise IndexerError(
                f"--to-block {to_block} is below the start block {state.start_block} minus one:"
                f" use {state.start_block - 1} to re-index everything"
            )
        projector.rollback(conn, chain_id, to_block)
        removed = store.rewind_to_block(conn, chain_id, to_block, state.start_block, outbox=outbox)
        store.clear_halt(conn, chain_id)
    return RewindResult(chain_id, to_block, state.indexed_block, removed, state.halted)
