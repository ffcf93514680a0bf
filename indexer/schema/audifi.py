"""SQLAlchemy 2 description of the AudiFi tables of the seed design.

This module is the declared schema; ``migrations/`` creates exactly the same objects and
``tests/test_schema.py`` proves it (``alembic check`` finds no difference). Every deviation
from ``seed/database-architecture.md`` is listed, with its reason, in ``docs/schema.md``.

Constraint names follow PostgreSQL's own defaults (``<table>_pkey``, ``<table>_<col>_key``,
``<table>_<col>_fkey``) so the migrated database looks like the seed's DDL run by hand.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from indexer.schema.base import metadata

# ---------------------------------------------------------------------------------------------
# Enum types (the seed creates them after the tables that use them; we create them first).
# ``create_type=False``: the migration creates and drops them explicitly.
# ---------------------------------------------------------------------------------------------
MASTER_STATUS = pg.ENUM(
    "DRAFT", "IN_VSTUDIO", "LOCKED", "MINTED", "LISTED", "SOLD",
    name="master_status", create_type=False, metadata=metadata,
)  # fmt: skip
ACCESS_TYPE = pg.ENUM(
    "PUBLIC", "NFT_GATED", "COIN_GATED", "SUBSCRIPTION",
    name="access_type", create_type=False, metadata=metadata,
)  # fmt: skip
SESSION_STATUS = pg.ENUM(
    "DRAFT", "SCHEDULED", "ACTIVE", "VOTING", "LOCKED", "COMPLETE",
    name="session_status", create_type=False, metadata=metadata,
)  # fmt: skip
DECISION_STATUS = pg.ENUM(
    "PENDING", "OPEN", "CLOSED", "FINALIZED",
    name="decision_status", create_type=False, metadata=metadata,
)  # fmt: skip
SUBSCRIPTION_PLAN = pg.ENUM(
    "FREE", "PRO", "ENTERPRISE",
    name="subscription_plan", create_type=False, metadata=metadata,
)  # fmt: skip
SUBSCRIPTION_STATUS = pg.ENUM(
    "ACTIVE", "PAST_DUE", "CANCELLED", "INCOMPLETE",
    name="subscription_status", create_type=False, metadata=metadata,
)  # fmt: skip

ENUM_TYPES = (
    MASTER_STATUS,
    ACCESS_TYPE,
    SESSION_STATUS,
    DECISION_STATUS,
    SUBSCRIPTION_PLAN,
    SUBSCRIPTION_STATUS,
)

UINT256 = sa.Numeric(78, 0)
"""A chain ``uint256`` (at most 78 decimal digits), stored exactly."""

NOW = sa.text("now()")
GEN_UUID = sa.text("gen_random_uuid()")


def _uuid_pk() -> sa.Column[object]:
    return sa.Column("id", pg.UUID(as_uuid=True), primary_key=True, server_default=GEN_UUID)


def _created_at() -> sa.Column[object]:
    return sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW)


TZ = sa.DateTime(timezone=True)

users = sa.Table(
    "users",
    metadata,
    _uuid_pk(),
    sa.Column("email", sa.String(255), nullable=False),
    sa.Column("display_name", sa.String(100)),
    sa.Column("wallet_address", sa.String(42)),
    sa.Column("avatar_url", sa.Text),
    sa.Column("bio", sa.Text),
    sa.Column("password_hash", sa.String(255)),
    sa.Column("totp_secret", sa.String(255)),
    sa.Column("totp_enabled", sa.Boolean, server_default=sa.false()),
    # users <-> subscriptions reference each other: this key is added after both tables exist.
    sa.Column(
        "subscription_id",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("subscriptions.id", name="users_subscription_id_fkey", use_alter=True),
    ),
    _created_at(),
    sa.Column("updated_at", TZ, server_default=NOW),
    sa.Column("last_login_at", TZ),
    sa.UniqueConstraint("email", name="users_email_key"),
    sa.UniqueConstraint("wallet_address", name="users_wallet_address_key"),
)
sa.Index("idx_users_email", users.c.email)
sa.Index("idx_users_wallet", users.c.wallet_address)
# Deviation: the indexer matches wallets case-insensitively; this makes that lookup indexable.
sa.Index("idx_users_wallet_lower", sa.func.lower(users.c.wallet_address))

subscriptions = sa.Table(
    "subscriptions",
    metadata,
    _uuid_pk(),
    sa.Column(
        "user_id",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("users.id", name="subscriptions_user_id_fkey"),
        nullable=False,
    ),
    sa.Column("stripe_customer_id", sa.String(100)),
    sa.Column("stripe_subscription_id", sa.String(100)),
    sa.Column("plan", SUBSCRIPTION_PLAN, nullable=False),
    sa.Column("status", SUBSCRIPTION_STATUS, nullable=False),
    sa.Column("current_period_start", TZ),
    sa.Column("current_period_end", TZ),
    _created_at(),
    sa.Column("cancelled_at", TZ),
)
sa.Index("idx_subscriptions_user", subscriptions.c.user_id)

masters = sa.Table(
    "masters",
    metadata,
    _uuid_pk(),
    sa.Column(
        "artist_id",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("users.id", name="masters_artist_id_fkey"),
        nullable=False,
    ),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("genre", sa.String(50)),
    sa.Column("bpm", sa.Integer),
    sa.Column("mood_tags", pg.ARRAY(sa.Text)),
    sa.Column("audio_ipfs_hash", sa.String(100)),
    sa.Column("cover_ipfs_hash", sa.String(100)),
    sa.Column("metadata_ipfs_hash", sa.String(100)),
    sa.Column("status", MASTER_STATUS, nullable=False, server_default=sa.text("'DRAFT'")),
    sa.Column("contract_address", sa.String(42)),
    sa.Column("dividend_contract", sa.String(42)),
    _created_at(),
    sa.Column("updated_at", TZ, server_default=NOW),
    sa.Column("published_at", TZ),
)
sa.Index("idx_masters_artist", masters.c.artist_id)
sa.Index("idx_masters_status", masters.c.status)
sa.Index(
    "idx_masters_status_published",
    masters.c.status,
    masters.c.published_at.desc(),
    postgresql_where=masters.c.status.in_(["LISTED", "MINTED"]),
)
# Deviation (extra index): the indexer resolves Transfer logs to a master by contract address.
sa.Index("idx_masters_contract", masters.c.contract_address)

ipo_configs = sa.Table(
    "ipo_configs",
    metadata,
    _uuid_pk(),
    sa.Column(
        "master_id",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("masters.id", name="ipo_configs_master_id_fkey"),
        nullable=False,
    ),
    sa.Column("initial_price", sa.Numeric(18, 8), nullable=False),
    sa.Column("currency", sa.String(10), server_default=sa.text("'ETH'")),
    sa.Column("total_supply", sa.Integer, nullable=False),
    sa.Column("artist_reserve", sa.Integer, server_default=sa.text("0")),
    sa.Column(
        "public_supply",
        sa.Integer,
        sa.Computed("total_supply - artist_reserve", persisted=True),
    ),
    sa.Column("tier1_count", sa.Integer, server_default=sa.text("10")),
    sa.Column("tier1_royalty", sa.Numeric(5, 2), server_default=sa.text("10.00")),
    sa.Column("tier2_count", sa.Integer, server_default=sa.text("40")),
    sa.Column("tier2_royalty", sa.Numeric(5, 2), server_default=sa.text("5.00")),
    sa.Column("tier3_count", sa.Integer, server_default=sa.text("50")),
    sa.Column("tier3_royalty", sa.Numeric(5, 2), server_default=sa.text("3.00")),
    sa.Column("tier4_royalty", sa.Numeric(5, 2), server_default=sa.text("1.00")),
    sa.Column("start_date", TZ),
    sa.Column("end_date", TZ),
    _created_at(),
    sa.Column("updated_at", TZ, server_default=NOW),
)
sa.Index("idx_ipo_master", ipo_configs.c.master_id, unique=True)

nft_shares = sa.Table(
    "nft_shares",
    metadata,
    _uuid_pk(),
    sa.Column(
        "master_id",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("masters.id", name="nft_shares_master_id_fkey"),
        nullable=False,
    ),
    # Deviation: INTEGER cannot hold a uint256 token id.
    sa.Column("token_id", UINT256, nullable=False),
    sa.Column(
        "owner_id",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("users.id", name="nft_shares_owner_id_fkey"),
    ),
    sa.Column("owner_wallet", sa.String(42)),
    sa.Column("tier", sa.Integer, nullable=False),
    sa.Column("royalty_percent", sa.Numeric(5, 2), nullable=False),
    sa.Column("minted_at", TZ, server_default=NOW),
    sa.Column("last_transfer", TZ),
    sa.CheckConstraint("tier >= 1 AND tier <= 4", name="nft_shares_tier_check"),
)
sa.Index("idx_shares_token", nft_shares.c.master_id, nft_shares.c.token_id, unique=True)
sa.Index("idx_shares_owner", nft_shares.c.owner_id)
sa.Index("idx_shares_wallet", nft_shares.c.owner_wallet)
sa.Index("idx_shares_owner_master", nft_shares.c.owner_id, nft_shares.c.master_id)

vstudio_sessions = sa.Table(
    "vstudio_sessions",
    metadata,
    _uuid_pk(),
    sa.Column(
        "master_id",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("masters.id", name="vstudio_sessions_master_id_fkey"),
        nullable=False,
    ),
    sa.Column("access_type", ACCESS_TYPE, nullable=False, server_default=sa.text("'PUBLIC'")),
    sa.Column(
        "required_nft",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("masters.id", name="vstudio_sessions_required_nft_fkey"),
    ),
    sa.Column("required_coin", sa.String(42)),
    sa.Column("status", SESSION_STATUS, nullable=False, server_default=sa.text("'DRAFT'")),
    sa.Column("scheduled_start", TZ),
    sa.Column("scheduled_end", TZ),
    sa.Column("actual_start", TZ),
    sa.Column("actual_end", TZ),
    _created_at(),
)
sa.Index(
    "idx_sessions_active",
    vstudio_sessions.c.status,
    postgresql_where=vstudio_sessions.c.status.in_(["ACTIVE", "VOTING"]),
)

decisions = sa.Table(
    "decisions",
    metadata,
    _uuid_pk(),
    sa.Column(
        "session_id",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("vstudio_sessions.id", name="decisions_session_id_fkey"),
        nullable=False,
    ),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("decision_type", sa.String(50), nullable=False),
    sa.Column("options", pg.JSONB, nullable=False),
    sa.Column("status", DECISION_STATUS, server_default=sa.text("'PENDING'")),
    sa.Column("winning_option", sa.String(100)),
    sa.Column("opens_at", TZ),
    sa.Column("closes_at", TZ),
    _created_at(),
)
sa.Index("idx_decisions_session", decisions.c.session_id)

votes = sa.Table(
    "votes",
    metadata,
    _uuid_pk(),
    sa.Column(
        "decision_id",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("decisions.id", name="votes_decision_id_fkey"),
        nullable=False,
    ),
    sa.Column(
        "user_id",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("users.id", name="votes_user_id_fkey"),
        nullable=False,
    ),
    sa.Column("choice", sa.String(100), nullable=False),
    sa.Column("weight", sa.Numeric(10, 4), server_default=sa.text("1.0")),
    _created_at(),
)
sa.Index("idx_votes_unique", votes.c.decision_id, votes.c.user_id, unique=True)
sa.Index("idx_votes_decision", votes.c.decision_id)

artist_coins = sa.Table(
    "artist_coins",
    metadata,
    _uuid_pk(),
    sa.Column(
        "artist_id",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("users.id", name="artist_coins_artist_id_fkey"),
        nullable=False,
    ),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("symbol", sa.String(10), nullable=False),
    sa.Column("contract_address", sa.String(42)),
    # Deviation: DECIMAL(28,18) holds at most 10^10 whole tokens; NUMERIC(78,18) holds any
    # uint256 supply scaled by 10^18 exactly.
    sa.Column("total_supply", sa.Numeric(78, 18), nullable=False),
    sa.Column("pool_address", sa.String(42)),
    sa.Column("initial_liquidity", sa.Numeric(28, 18)),
    sa.Column("deployed_at", TZ),
    _created_at(),
    sa.UniqueConstraint("contract_address", name="artist_coins_contract_address_key"),
)
sa.Index("idx_coins_artist", artist_coins.c.artist_id, unique=True)

# Deviation: the seed has no PARTITION BY and a primary key without the partition key.
# The table is range-partitioned by month on created_at (NOT NULL, part of the primary key);
# its monthly partitions and a DEFAULT partition are created by the migration and kept ahead
# of time by the daemon (see indexer.schema.partitions). They are not described here.
analytics_events = sa.Table(
    "analytics_events",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("event_type", sa.String(50), nullable=False),
    sa.Column("user_id", pg.UUID(as_uuid=True)),
    sa.Column("master_id", pg.UUID(as_uuid=True)),
    sa.Column("session_id", pg.UUID(as_uuid=True)),
    sa.Column("properties", pg.JSONB),
    sa.Column("ip_address", pg.INET),
    sa.Column("user_agent", sa.Text),
    sa.Column("created_at", TZ, primary_key=True, server_default=NOW),
    postgresql_partition_by="RANGE (created_at)",
)
sa.Index("idx_events_time", analytics_events.c.created_at.desc())

# Deviation: named by the seed's sync design but never defined there. Columns pinned by SPEC §8.
dividend_events = sa.Table(
    "dividend_events",
    metadata,
    _uuid_pk(),
    sa.Column(
        "master_id",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("masters.id", name="dividend_events_master_id_fkey"),
        nullable=False,
    ),
    sa.Column("amount", UINT256, nullable=False),
    sa.Column("contract_address", sa.String(42), nullable=False),
    sa.Column("block_number", sa.BigInteger, nullable=False),
    sa.Column("block_hash", sa.String(66), nullable=False),
    sa.Column("block_time", TZ, nullable=False),
    sa.Column("tx_hash", sa.String(66), nullable=False),
    sa.Column("log_index", sa.Integer, nullable=False),
    _created_at(),
    sa.UniqueConstraint("tx_hash", "log_index", name="dividend_events_tx_hash_log_index_key"),
    sa.CheckConstraint("amount >= 0", name="dividend_events_amount_check"),
)
sa.Index("idx_dividends_master_block", dividend_events.c.master_id, dividend_events.c.block_number)

MV_DAILY_MASTER_STATS = "mv_daily_master_stats"
"""The seed's materialised view (created, unchanged, by migration 0001 — views are not part of
SQLAlchemy metadata). It has a UNIQUE index (NULLS NOT DISTINCT, since ``master_id`` may be
NULL) so that it can be refreshed CONCURRENTLY (``indexer/upkeep.py``)."""
