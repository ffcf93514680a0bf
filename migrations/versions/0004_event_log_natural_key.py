"""The event log's primary key is its natural key (chain, block, log index); the surrogate
``id`` column goes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

No query of the indexer, the query module or the docs used ``indexer_events.id``; every
reader goes by (chain, block, log index), by emitter or by pending state. The column cost a
sequence draw and an index entry per event (≈ 0.1 s per 100,000 events in the benchmark,
``bench/``), and the (chain, block, log index) key was a second unique index beside it.
Upgrading rebuilds that one index, as the primary key.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("indexer_events_pkey", "indexer_events", type_="primary")
    op.drop_column("indexer_events", "id")
    op.drop_constraint("indexer_events_chain_block_log_key", "indexer_events", type_="unique")
    op.create_primary_key(
        "indexer_events_pkey", "indexer_events", ["chain_id", "block_number", "log_index"]
    )


def downgrade() -> None:
    op.drop_constraint("indexer_events_pkey", "indexer_events", type_="primary")
    op.create_unique_constraint(
        "indexer_events_chain_block_log_key",
        "indexer_events",
        ["chain_id", "block_number", "log_index"],
    )
    op.add_column(
        "indexer_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
    )
    op.create_primary_key("indexer_events_pkey", "indexer_events", ["id"])
