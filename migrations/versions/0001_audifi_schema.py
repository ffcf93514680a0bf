"""The AudiFi schema of the seed design, with its defects fixed.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Creates every enum, table, column, default, constraint and index of
``seed/database-architecture.md`` plus ``dividend_events``, the partitioned
``analytics_events`` (monthly partitions from January 2024 to a few months ahead, and a
DEFAULT partition) and ``mv_daily_master_stats`` with a unique index. Each deviation from the
seed is listed with its reason in ``docs/schema.md``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from indexer.schema.partitions import (
    SEED_FIRST_MONTH,
    add_months,
    create_default_partition,
    ensure_partitions,
    month_floor,
)

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the enum types as this revision creates them.
ENUMS: dict[str, tuple[str, ...]] = {
    "master_status": ("DRAFT", "IN_VSTUDIO", "LOCKED", "MINTED", "LISTED", "SOLD"),
    "access_type": ("PUBLIC", "NFT_GATED", "COIN_GATED", "SUBSCRIPTION"),
    "session_status": ("DRAFT", "SCHEDULED", "ACTIVE", "VOTING", "LOCKED", "COMPLETE"),
    "decision_status": ("PENDING", "OPEN", "CLOSED", "FINALIZED"),
    "subscription_plan": ("FREE", "PRO", "ENTERPRISE"),
    "subscription_status": ("ACTIVE", "PAST_DUE", "CANCELLED", "INCOMPLETE"),
}
PARTITION_MONTHS_AHEAD = 3

MV_SQL = """
CREATE MATERIALIZED VIEW mv_daily_master_stats AS
SELECT
  date_trunc('day', created_at) AS date,
  master_id,
  COUNT(*) FILTER (WHERE event_type = 'view') AS views,
  COUNT(*) FILTER (WHERE event_type = 'play') AS plays,
  COUNT(*) FILTER (WHERE event_type = 'purchase') AS purchases
FROM analytics_events
GROUP BY date_trunc('day', created_at), master_id
"""


def upgrade() -> None:
    # Seed defect: the enum types are used before they are created. Create them first.
    for name, values in ENUMS.items():
        postgresql.ENUM(*values, name=name).create(op.get_bind(), checkfirst=False)

    op.create_table(
        "users",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column("display_name", sa.String(length=100), nullable=True),
        sa.Column("wallet_address", sa.String(length=42), nullable=True),
        sa.Column("avatar_url", sa.Text(), nullable=True),
        sa.Column("bio", sa.Text(), nullable=True),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("totp_secret", sa.String(length=255), nullable=True),
        sa.Column("totp_enabled", sa.Boolean(), server_default=sa.text("false"), nullable=True),
        sa.Column("subscription_id", sa.UUID(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=True
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=True
        ),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email", name="users_email_key"),
        sa.UniqueConstraint("wallet_address", name="users_wallet_address_key"),
    )
    op.create_index("idx_users_email", "users", ["email"], unique=False)
    op.create_index("idx_users_wallet", "users", ["wallet_address"], unique=False)
    op.create_index(
        "idx_users_wallet_lower",
        "users",
        [sa.literal_column("lower(wallet_address)")],
        unique=False,
    )
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("stripe_customer_id", sa.String(length=100), nullable=True),
        sa.Column("stripe_subscription_id", sa.String(length=100), nullable=True),
        sa.Column(
            "plan",
            postgresql.ENUM(
                "FREE", "PRO", "ENTERPRISE", name="subscription_plan", create_type=False
            ),
            nullable=False,
        ),
        sa.Column(
            "status",
            postgresql.ENUM(
                "ACTIVE",
                "PAST_DUE",
                "CANCELLED",
                "INCOMPLETE",
                name="subscription_status",
                create_type=False,
            ),
            nullable=False,
        ),
        sa.Column("current_period_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("current_period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=True
        ),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="subscriptions_user_id_fkey"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("idx_subscriptions_user", "subscriptions", ["user_id"], unique=False)
    # Seed defect: users.subscription_id and subscriptions.user_id reference each other, so
    # this key can only be added once both tables exist.
    op.create_foreign_key(
        "users_subscription_id_fkey", "users", "subscriptions", ["subscription_id"], ["id"]
    )
    op.create_table(
        "masters",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("artist_id", sa.UUID(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("genre", sa.String(length=50), nullable=True),
        sa.Column("bpm", sa.Integer(), nullable=True),
        sa.Column("mood_tags", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("audio_ipfs_hash", sa.String(length=100), nullable=True),
        sa.Column("cover_ipfs_hash", sa.String(length=100), nullable=True),
        sa.Column("metadata_ipfs_hash", sa.String(length=100), nullable=True),
        sa.Column(
            "status",
            postgresql.ENUM(
                "DRAFT",
                "IN_VSTUDIO",
                "LOCKED",
                "MINTED",
                "LISTED",
                "SOLD",
                name="master_status",
                create_type=False,
            ),
            server_default=sa.text("'DRAFT'"),
            nullable=False,
        ),
        sa.Column("contract_address", sa.String(length=42), nullable=True),
        sa.Column("dividend_contract", sa.String(length=42), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=True
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=True
        ),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["artist_id"], ["users.id"], name="masters_artist_id_fkey"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("idx_masters_artist", "masters", ["artist_id"], unique=False)
    op.create_index("idx_masters_contract", "masters", ["contract_address"], unique=False)
    op.create_index("idx_masters_status", "masters", ["status"], unique=False)
    op.create_index(
        "idx_masters_status_published",
        "masters",
        ["status", sa.literal_column("published_at DESC")],
        unique=False,
        postgresql_where=sa.text("status IN ('LISTED', 'MINTED')"),
    )
    op.create_table(
        "ipo_configs",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("master_id", sa.UUID(), nullable=False),
        sa.Column("initial_price", sa.Numeric(precision=18, scale=8), nullable=False),
        sa.Column("currency", sa.String(length=10), server_default=sa.text("'ETH'"), nullable=True),
        sa.Column("total_supply", sa.Integer(), nullable=False),
        sa.Column("artist_reserve", sa.Integer(), server_default=sa.text("0"), nullable=True),
        sa.Column(
            "public_supply",
            sa.Integer(),
            sa.Computed("total_supply - artist_reserve", persisted=True),
            nullable=True,
        ),
        sa.Column("tier1_count", sa.Integer(), server_default=sa.text("10"), nullable=True),
        sa.Column(
            "tier1_royalty",
            sa.Numeric(precision=5, scale=2),
            server_default=sa.text("10.00"),
            nullable=True,
        ),
        sa.Column("tier2_count", sa.Integer(), server_default=sa.text("40"), nullable=True),
        sa.Column(
            "tier2_royalty",
            sa.Numeric(precision=5, scale=2),
            server_default=sa.text("5.00"),
            nullable=True,
        ),
        sa.Column("tier3_count", sa.Integer(), server_default=sa.text("50"), nullable=True),
        sa.Column(
            "tier3_royalty",
            sa.Numeric(precision=5, scale=2),
            server_default=sa.text("3.00"),
            nullable=True,
        ),
        sa.Column(
            "tier4_royalty",
            sa.Numeric(precision=5, scale=2),
            server_default=sa.text("1.00"),
            nullable=True,
        ),
        sa.Column("start_date", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_date", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=True
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=True
        ),
        sa.ForeignKeyConstraint(["master_id"], ["masters.id"], name="ipo_configs_master_id_fkey"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("idx_ipo_master", "ipo_configs", ["master_id"], unique=True)
    op.create_table(
        "nft_shares",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("master_id", sa.UUID(), nullable=False),
        sa.Column("token_id", sa.Numeric(precision=78, scale=0), nullable=False),
        sa.Column("owner_id", sa.UUID(), nullable=True),
        sa.Column("owner_wallet", sa.String(length=42), nullable=True),
        sa.Column("tier", sa.Integer(), nullable=False),
        sa.Column("royalty_percent", sa.Numeric(precision=5, scale=2), nullable=False),
        sa.Column(
            "minted_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=True
        ),
        sa.Column("last_transfer", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("tier >= 1 AND tier <= 4", name="nft_shares_tier_check"),
        sa.ForeignKeyConstraint(["master_id"], ["masters.id"], name="nft_shares_master_id_fkey"),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name="nft_shares_owner_id_fkey"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("idx_shares_owner", "nft_shares", ["owner_id"], unique=False)
    op.create_index(
        "idx_shares_owner_master", "nft_shares", ["owner_id", "master_id"], unique=False
    )
    op.create_index("idx_shares_token", "nft_shares", ["master_id", "token_id"], unique=True)
    op.create_index("idx_shares_wallet", "nft_shares", ["owner_wallet"], unique=False)
    op.create_table(
        "vstudio_sessions",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("master_id", sa.UUID(), nullable=False),
        sa.Column(
            "access_type",
            postgresql.ENUM(
                "PUBLIC",
                "NFT_GATED",
                "COIN_GATED",
                "SUBSCRIPTION",
                name="access_type",
                create_type=False,
            ),
            server_default=sa.text("'PUBLIC'"),
            nullable=False,
        ),
        sa.Column("required_nft", sa.UUID(), nullable=True),
        sa.Column("required_coin", sa.String(length=42), nullable=True),
        sa.Column(
            "status",
            postgresql.ENUM(
                "DRAFT",
                "SCHEDULED",
                "ACTIVE",
                "VOTING",
                "LOCKED",
                "COMPLETE",
                name="session_status",
                create_type=False,
            ),
            server_default=sa.text("'DRAFT'"),
            nullable=False,
        ),
        sa.Column("scheduled_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("scheduled_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("actual_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("actual_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=True
        ),
        sa.ForeignKeyConstraint(
            ["master_id"], ["masters.id"], name="vstudio_sessions_master_id_fkey"
        ),
        sa.ForeignKeyConstraint(
            ["required_nft"], ["masters.id"], name="vstudio_sessions_required_nft_fkey"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "idx_sessions_active",
        "vstudio_sessions",
        ["status"],
        unique=False,
        postgresql_where=sa.text("status IN ('ACTIVE', 'VOTING')"),
    )
    op.create_table(
        "decisions",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("session_id", sa.UUID(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("decision_type", sa.String(length=50), nullable=False),
        sa.Column("options", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "status",
            postgresql.ENUM(
                "PENDING", "OPEN", "CLOSED", "FINALIZED", name="decision_status", create_type=False
            ),
            server_default=sa.text("'PENDING'"),
            nullable=True,
        ),
        sa.Column("winning_option", sa.String(length=100), nullable=True),
        sa.Column("opens_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closes_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=True
        ),
        sa.ForeignKeyConstraint(
            ["session_id"], ["vstudio_sessions.id"], name="decisions_session_id_fkey"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("idx_decisions_session", "decisions", ["session_id"], unique=False)
    op.create_table(
        "votes",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("decision_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("choice", sa.String(length=100), nullable=False),
        sa.Column(
            "weight",
            sa.Numeric(precision=10, scale=4),
            server_default=sa.text("1.0"),
            nullable=True,
        ),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=True
        ),
        sa.ForeignKeyConstraint(["decision_id"], ["decisions.id"], name="votes_decision_id_fkey"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="votes_user_id_fkey"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("idx_votes_decision", "votes", ["decision_id"], unique=False)
    op.create_index("idx_votes_unique", "votes", ["decision_id", "user_id"], unique=True)
    op.create_table(
        "artist_coins",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("artist_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("symbol", sa.String(length=10), nullable=False),
        sa.Column("contract_address", sa.String(length=42), nullable=True),
        sa.Column("total_supply", sa.Numeric(precision=78, scale=18), nullable=False),
        sa.Column("pool_address", sa.String(length=42), nullable=True),
        sa.Column("initial_liquidity", sa.Numeric(precision=28, scale=18), nullable=True),
        sa.Column("deployed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=True
        ),
        sa.ForeignKeyConstraint(["artist_id"], ["users.id"], name="artist_coins_artist_id_fkey"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("contract_address", name="artist_coins_contract_address_key"),
    )
    op.create_index("idx_coins_artist", "artist_coins", ["artist_id"], unique=True)
    op.create_table(
        "analytics_events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("event_type", sa.String(length=50), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=True),
        sa.Column("master_id", sa.UUID(), nullable=True),
        sa.Column("session_id", sa.UUID(), nullable=True),
        sa.Column("properties", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("ip_address", postgresql.INET(), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", "created_at"),
        postgresql_partition_by="RANGE (created_at)",
    )
    op.create_index(
        "idx_events_time", "analytics_events", [sa.literal_column("created_at DESC")], unique=False
    )
    op.create_table(
        "dividend_events",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("master_id", sa.UUID(), nullable=False),
        sa.Column("amount", sa.Numeric(precision=78, scale=0), nullable=False),
        sa.Column("contract_address", sa.String(length=42), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.String(length=66), nullable=False),
        sa.Column("block_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tx_hash", sa.String(length=66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=True
        ),
        sa.CheckConstraint("amount >= 0", name="dividend_events_amount_check"),
        sa.ForeignKeyConstraint(
            ["master_id"], ["masters.id"], name="dividend_events_master_id_fkey"
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tx_hash", "log_index", name="dividend_events_tx_hash_log_index_key"),
    )
    op.create_index(
        "idx_dividends_master_block", "dividend_events", ["master_id", "block_number"], unique=False
    )

    # Seed defect: analytics_events had no PARTITION BY and only one month's partition.
    bind = op.get_bind()
    create_default_partition(bind)
    today = dt.datetime.now(dt.UTC).date()
    ensure_partitions(
        bind, SEED_FIRST_MONTH, add_months(month_floor(today), PARTITION_MONTHS_AHEAD)
    )

    # Seed defect: REFRESH ... CONCURRENTLY needs a unique index covering all rows; master_id
    # may be NULL, so NULLs are not distinct (one row per day for events without a master).
    op.execute(MV_SQL)
    op.execute(
        "CREATE UNIQUE INDEX idx_mv_daily_stats ON mv_daily_master_stats (date, master_id) "
        "NULLS NOT DISTINCT"
    )


def downgrade() -> None:
    op.execute("DROP MATERIALIZED VIEW IF EXISTS mv_daily_master_stats")
    op.drop_table("dividend_events")
    # Dropping the parent drops every partition with it.
    op.drop_table("analytics_events")
    op.drop_table("artist_coins")
    op.drop_table("votes")
    op.drop_table("decisions")
    op.drop_table("vstudio_sessions")
    op.drop_table("nft_shares")
    op.drop_table("ipo_configs")
    op.drop_table("masters")
    op.drop_constraint("users_subscription_id_fkey", "users", type_="foreignkey")
    op.drop_table("subscriptions")
    op.drop_table("users")
    for name in reversed(list(ENUMS)):
        postgresql.ENUM(name=name).drop(op.get_bind(), checkfirst=False)
