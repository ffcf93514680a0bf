"""``indexer_tier_changes``: the masters whose IPO tiers changed, noted by triggers on
``ipo_configs``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27

A master's ``ipo_configs`` row may be added, changed or removed after its shares were minted;
the engine re-tiers those shares (migration ``0005``). It used to find such masters by digesting
every ``ipo_configs`` row at each poll and comparing the digests with
``indexer_tier_configs``. That is O(masters) per poll: ≈ 0.3 s at 100,000 configured
masters. It also missed a configuration changed and changed back around a mint: the digests
matched, the mint's tier did not. Now triggers on ``ipo_configs`` note the masters a change
touches (the old and the new ``master_id``), in the backend's own transaction. Each poll takes
them and re-tiers every one of them. At start the engine also compares every master's digest.
A ``TRUNCATE`` notes NULL, which means every registered master.

The function runs as its owner (``SECURITY DEFINER``, its table named with its schema,
``search_path = pg_catalog, pg_temp``), and the triggers fire ``ALWAYS``, as in ``0006``.
A change made with the triggers disabled is seen when the engine next starts.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = "indexer_note_tier_change"
_TIERS = (
    "master_id, tier1_count, tier2_count, tier3_count, tier1_royalty, tier2_royalty, "
    "tier3_royalty, tier4_royalty"
)
_TRIGGERS = {
    "indexer_tier_insert_delete": "AFTER INSERT OR DELETE ON ipo_configs FOR EACH ROW",
    "indexer_tier_update": (
        f"AFTER UPDATE OF {_TIERS} ON ipo_configs FOR EACH ROW WHEN ("
        + " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in _TIERS.split(", "))
        + ")"
    ),
    "indexer_tier_truncate": "AFTER TRUNCATE ON ipo_configs FOR EACH STATEMENT",
}


TABLE = "indexer_tier_changes"


def _qualified(name: str) -> str:
    """``name`` in the schema the migration runs in, quoted: the function's body names no
    table through its ``search_path`` (see the module's docstring)."""
    schema = op.get_bind().execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    return f"{schema}.{name}"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("master_id", sa.UUID(), nullable=True),
        sa.Column(
            "noted_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="indexer_tier_changes_pkey"),
    )
    table = _qualified(TABLE)
    op.execute(
        f"""
        CREATE FUNCTION {_FUNCTION}() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            IF TG_LEVEL = 'STATEMENT' THEN
                INSERT INTO {table} (master_id) VALUES (NULL);
                RETURN NULL;
            END IF;
            IF TG_OP IN ('UPDATE', 'DELETE') THEN
                INSERT INTO {table} (master_id) VALUES (OLD.master_id);
            END IF;
            IF TG_OP = 'INSERT'
               OR (TG_OP = 'UPDATE' AND NEW.master_id IS DISTINCT FROM OLD.master_id) THEN
                INSERT INTO {table} (master_id) VALUES (NEW.master_id);
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    # Triggers need no EXECUTE right to fire; anyone else could attach the function to a
    # table of their own and write notes with its owner's rights (found by review).
    op.execute(f"REVOKE EXECUTE ON FUNCTION {_FUNCTION}() FROM PUBLIC")
    for name, when in _TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {when} EXECUTE FUNCTION {_FUNCTION}()")
        op.execute(f"ALTER TABLE ipo_configs ENABLE ALWAYS TRIGGER {name}")


def downgrade() -> None:
    for name in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON ipo_configs")
    op.execute(f"DROP FUNCTION IF EXISTS {_FUNCTION}()")
    op.drop_table(TABLE)
