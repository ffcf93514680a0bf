"""The indexer's own tables: cursor, block window, event log, contracts, dead letters, outbox.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

What each table guarantees is written in ``indexer/schema/indexer_tables.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = (
    "indexer_state",
    "indexer_blocks",
    "indexer_contracts",
    "indexer_events",
    "indexer_snapshots",
    "indexer_dead_letters",
    "indexer_outbox",
)


def upgrade() -> None:
    op.create_table(
        "indexer_state",
        sa.Column("chain_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("start_block", sa.BigInteger(), nullable=False),
        sa.Column("indexed_block", sa.BigInteger(), nullable=True),
        sa.Column("head_block", sa.BigInteger(), nullable=True),
        sa.Column("indexed_hash", sa.String(length=66), nullable=True),
        sa.Column("halted", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("halt_reason", sa.Text(), nullable=True),
        sa.Column("ignored_logs", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("halted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("chain_id"),
    )
    op.create_table(
        "indexer_blocks",
        sa.Column("chain_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("number", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(length=66), nullable=False),
        sa.Column("parent_hash", sa.String(length=66), nullable=False),
        sa.Column("block_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("chain_id", "number"),
    )
    op.create_table(
        "indexer_contracts",
        sa.Column("chain_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("master_id", sa.UUID(), nullable=False),
        sa.Column("registered_block", sa.BigInteger(), nullable=False),
        sa.Column("registered_log_index", sa.Integer(), nullable=False),
        sa.Column("registered_block_hash", sa.String(length=66), nullable=False),
        sa.PrimaryKeyConstraint("chain_id", "address"),
    )
    op.create_index(
        "idx_indexer_contracts_block",
        "indexer_contracts",
        ["chain_id", "registered_block"],
        unique=False,
    )
    op.create_table(
        "indexer_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.String(length=66), nullable=False),
        sa.Column("block_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tx_hash", sa.String(length=66), nullable=False),
        sa.Column("tx_index", sa.Integer(), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("event_type", sa.String(length=40), nullable=False),
        sa.Column("args", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("context", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("applied", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "chain_id", "block_number", "log_index", name="indexer_events_chain_block_log_key"
        ),
    )
    op.create_index(
        "idx_indexer_events_type_block",
        "indexer_events",
        ["chain_id", "event_type", "block_number"],
        unique=False,
    )
    op.create_index(
        "idx_indexer_events_address_block",
        "indexer_events",
        ["chain_id", "address", "block_number"],
        unique=False,
    )
    op.create_index(
        "idx_indexer_events_pending",
        "indexer_events",
        ["chain_id", "block_number", "log_index"],
        unique=False,
        postgresql_where=sa.text("NOT applied"),
    )
    op.create_table(
        "indexer_snapshots",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("table_name", sa.String(length=40), nullable=False),
        sa.Column("row_id", sa.UUID(), nullable=False),
        sa.Column("before", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "idx_indexer_snapshots_block",
        "indexer_snapshots",
        ["chain_id", "block_number"],
        unique=False,
    )
    op.create_table(
        "indexer_dead_letters",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.String(length=66), nullable=False),
        sa.Column("tx_hash", sa.String(length=66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("topics", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "chain_id", "block_number", "log_index", name="indexer_dead_letters_chain_block_log_key"
        ),
    )
    op.create_table(
        "indexer_outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("message_id", sa.String(length=160), nullable=False),
        sa.Column("message_type", sa.String(length=40), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "idx_indexer_outbox_unpublished",
        "indexer_outbox",
        ["id"],
        unique=False,
        postgresql_where=sa.text("published_at IS NULL"),
    )


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)
