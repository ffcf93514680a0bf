"""Drop ``idx_indexer_events_type_block``: no query of the indexer uses it, and it cost about
an eighth of the cost of writing ``indexer_events`` rows (≈ 0.11 s per 100,000 events in the
benchmark, ``bench/``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

The engine reads the event log by block range (the unique (chain, block, log index) key), by
emitter (``idx_indexer_events_address_block``) and by pending state (the partial index); the
event type is always a filter on top of one of those.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("idx_indexer_events_type_block", table_name="indexer_events")


def downgrade() -> None:
    op.create_index(
        "idx_indexer_events_type_block",
        "indexer_events",
        ["chain_id", "event_type", "block_number"],
        unique=False,
    )
