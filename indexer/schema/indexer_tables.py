"""The indexer's own bookkeeping tables (all named ``indexer_*``).

Guarantees these tables carry (enforced by the engine, see ``indexer/sync.py``):

* ``indexer_events`` is the decoded event log: every accepted AudiFi event of the canonical
  chain between the start block and the cursor, once. The AudiFi domain tables are derived
  from it and can be rebuilt from it.
* ``indexer_blocks`` holds (number, hash, parent hash) of the blocks inside the reorg window,
  so every new block can be linked to the stored chain and a fork's common ancestor found.
* ``indexer_state`` is the cursor (last fully indexed block and its hash) plus the halt flag;
  it is written in the same transaction as the data it covers.
* ``indexer_contracts`` lists the master contracts the registry registered, with the position
  of the registering log: their Transfer logs are trusted from that position on.
* ``indexer_snapshots`` keeps before-images of backend rows changed by events (undo on reorg).
* ``indexer_dead_letters`` keeps logs from trusted emitters that failed to decode, raw.
* ``indexer_outbox`` holds messages for the Redis stream, written with the data they describe
  and published after commit (at least once, in ``id`` order).
* ``indexer_tier_configs`` keeps, per master, the digest of the ``ipo_configs`` tiers its
  shares were last given: a configuration added or changed later re-tiers them.
* ``indexer_wallet_changes`` lists the (lowercased) wallets whose users changed, noted by
  triggers on ``users`` in the backend's own transaction (migration ``0006``; NULL: the table
  was truncated). The engine takes them each poll and re-links the shares those wallets hold.
* ``indexer_tier_changes`` lists the masters whose ``ipo_configs`` rows changed, noted by
  triggers on ``ipo_configs`` (migration ``0007``; NULL: the table was truncated). The engine
  takes them each poll and compares only their tiers with ``indexer_tier_configs``.

Every row but a wallet or tier change's carries ``chain_id``: one database may only ever hold one
chain (checked at start), but keeping the key makes a mix-up detectable instead of silent.
``users`` and ``ipo_configs`` belong to no chain.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from indexer.schema.base import metadata

TZ = sa.DateTime(timezone=True)
NOW = sa.text("now()")
HASH = sa.String(66)
ADDRESS = sa.String(42)

indexer_state = sa.Table(
    "indexer_state",
    metadata,
    sa.Column("chain_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("start_block", sa.BigInteger, nullable=False),
    sa.Column("indexed_block", sa.BigInteger),
    # The node's head as last seen by the daemon (for lag without asking the node).
    sa.Column("head_block", sa.BigInteger),
    sa.Column("indexed_hash", HASH),
    sa.Column("halted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("halt_reason", sa.Text),
    # Ignored logs leave no row anywhere (SPEC §8); this running total is their only trace.
    sa.Column("ignored_logs", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("halted_at", TZ),
    sa.Column("created_at", TZ, nullable=False, server_default=NOW),
    sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
)

indexer_blocks = sa.Table(
    "indexer_blocks",
    metadata,
    sa.Column("chain_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("number", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", HASH, nullable=False),
    sa.Column("parent_hash", HASH, nullable=False),
    sa.Column("block_time", TZ, nullable=False),
)

indexer_contracts = sa.Table(
    "indexer_contracts",
    metadata,
    sa.Column("chain_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("address", ADDRESS, primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("master_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("registered_block", sa.BigInteger, nullable=False),
    sa.Column("registered_log_index", sa.Integer, nullable=False),
    sa.Column("registered_block_hash", HASH, nullable=False),
)
sa.Index(
    "idx_indexer_contracts_block",
    indexer_contracts.c.chain_id,
    indexer_contracts.c.registered_block,
)

indexer_events = sa.Table(
    "indexer_events",
    metadata,
    # The natural key is the primary key (no surrogate id: no reader needs one).
    sa.Column("chain_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("block_number", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("block_hash", HASH, nullable=False),
    sa.Column("block_time", TZ, nullable=False),
    sa.Column("tx_hash", HASH, nullable=False),
    sa.Column("tx_index", sa.Integer, nullable=False),
    sa.Column("log_index", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("address", ADDRESS, nullable=False),
    sa.Column("event_type", sa.String(40), nullable=False),
    sa.Column("args", pg.JSONB, nullable=False),
    # Chain reads made for the event at its block (an artist coin's name, symbol, supply), so
    # projections can be rebuilt from the event log alone, without the node.
    sa.Column("context", pg.JSONB),
    # False while the event waits for its master / artist row (pending, SPEC §3).
    sa.Column("applied", sa.Boolean, nullable=False, server_default=sa.false()),
)
sa.Index(
    "idx_indexer_events_address_block",
    indexer_events.c.chain_id,
    indexer_events.c.address,
    indexer_events.c.block_number,
)
sa.Index(
    "idx_indexer_events_pending",
    indexer_events.c.chain_id,
    indexer_events.c.block_number,
    indexer_events.c.log_index,
    postgresql_where=sa.not_(indexer_events.c.applied),
)

# Before-images of backend-owned rows (masters, artist_coins) that an event changed, so a
# reorg or a rebuild puts them back exactly as they were. ``before`` NULL: the indexer created
# the row and undoing the event deletes it.
indexer_snapshots = sa.Table(
    "indexer_snapshots",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
    sa.Column("chain_id", sa.BigInteger, nullable=False),
    sa.Column("block_number", sa.BigInteger, nullable=False),
    sa.Column("log_index", sa.Integer, nullable=False),
    sa.Column("table_name", sa.String(40), nullable=False),
    sa.Column("row_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("before", pg.JSONB),
)
sa.Index(
    "idx_indexer_snapshots_block", indexer_snapshots.c.chain_id, indexer_snapshots.c.block_number
)

indexer_dead_letters = sa.Table(
    "indexer_dead_letters",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
    sa.Column("chain_id", sa.BigInteger, nullable=False),
    sa.Column("block_number", sa.BigInteger, nullable=False),
    sa.Column("block_hash", HASH, nullable=False),
    sa.Column("tx_hash", HASH, nullable=False),
    sa.Column("log_index", sa.Integer, nullable=False),
    sa.Column("address", ADDRESS, nullable=False),
    sa.Column("topics", pg.ARRAY(sa.Text), nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_at", TZ, nullable=False, server_default=NOW),
    sa.UniqueConstraint(
        "chain_id", "block_number", "log_index", name="indexer_dead_letters_chain_block_log_key"
    ),
)

indexer_outbox = sa.Table(
    "indexer_outbox",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
    sa.Column("chain_id", sa.BigInteger, nullable=False),
    sa.Column("message_id", sa.String(160), nullable=False),
    sa.Column("message_type", sa.String(40), nullable=False),
    sa.Column("block_number", sa.BigInteger, nullable=False),
    sa.Column("payload", pg.JSONB, nullable=False),
    sa.Column("created_at", TZ, nullable=False, server_default=NOW),
    sa.Column("published_at", TZ),
)
sa.Index(
    "idx_indexer_outbox_unpublished",
    indexer_outbox.c.id,
    postgresql_where=indexer_outbox.c.published_at.is_(None),
)

indexer_tier_configs = sa.Table(
    "indexer_tier_configs",
    metadata,
    sa.Column("chain_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("master_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("digest", sa.Text, nullable=False),
    sa.Column("updated_at", TZ, nullable=False, server_default=NOW),
)

indexer_wallet_changes = sa.Table(
    "indexer_wallet_changes",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
    sa.Column("wallet", sa.Text),
    sa.Column("noted_at", TZ, nullable=False, server_default=NOW),
)

indexer_tier_changes = sa.Table(
    "indexer_tier_changes",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
    sa.Column("master_id", pg.UUID(as_uuid=True)),
    sa.Column("noted_at", TZ, nullable=False, server_default=NOW),
)
