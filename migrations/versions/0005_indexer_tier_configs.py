"""``indexer_tier_configs``: the IPO tier configuration each master's shares were last given.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

A master's ``ipo_configs`` row may be added or changed after its shares were minted (the
backend writes it); a fresh index would tier every share by the row as it is (SPEC §3,
§4.1). The engine compares each poll the digests of ``ipo_configs`` with the ones kept here
and re-tiers the shares of the masters that differ, in the same transaction as it updates
this table — so a change made while no engine ran, or during a backfill, is seen too.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "indexer_tier_configs",
        sa.Column("chain_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("master_id", sa.UUID(), nullable=False),
        sa.Column("digest", sa.Text(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("chain_id", "master_id", name="indexer_tier_configs_pkey"),
    )


def downgrade() -> None:
    op.drop_table("indexer_tier_configs")
