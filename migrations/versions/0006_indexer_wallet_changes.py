"""``indexer_wallet_changes``: the wallets whose users changed, noted by triggers on ``users``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

A share's ``owner_id`` is the user whose wallet matches its ``owner_wallet`` (SPEC §3, §8: a
wallet linked later is linked within one poll). The engine used to notice a change of the
users' wallets by digesting every user with a wallet at each poll, and re-linked every share
when the digest moved: O(users) per poll and O(shares) per change. At 500,000 users that was
≈ 0.9 s per poll for the digest alone. Now triggers on ``users`` note the lowercased
wallets a change touches (the old and the new value), in the backend's own transaction; each
poll takes them (``DELETE … RETURNING``) and re-links only the shares held by those wallets —
O(changes). A ``TRUNCATE`` notes NULL: re-link every share.

The function runs as its owner (``SECURITY DEFINER``): the backend's role needs no privilege
on ``indexer_wallet_changes`` to write ``users``. So it names its table with the schema it was
created in and runs with ``search_path = pg_catalog, pg_temp``: a temporary table of the same
name in the writer's session (searched first by default) would otherwise take the notes, and
a temporary function run with the owner's rights (found by review: a role with DML on
``users`` and TEMP became superuser that way).
The triggers fire ``ALWAYS`` (also under ``session_replication_role = replica``: a logical
replication subscriber or a restore that keeps triggers on). A change made with the triggers
disabled (``ALTER TABLE … DISABLE TRIGGER``, ``pg_restore --disable-triggers``) is not
noted: the engine re-links every share when it starts, so restart it after such a change
(``docs/operations.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = "indexer_note_wallet_change"
_TRIGGERS = {
    "indexer_wallet_insert_delete": "AFTER INSERT OR DELETE ON users FOR EACH ROW",
    "indexer_wallet_update": (
        "AFTER UPDATE OF wallet_address, created_at, id ON users FOR EACH ROW WHEN ("
        "lower(OLD.wallet_address) IS DISTINCT FROM lower(NEW.wallet_address) "
        "OR OLD.created_at IS DISTINCT FROM NEW.created_at OR OLD.id IS DISTINCT FROM NEW.id)"
    ),
    "indexer_wallet_truncate": "AFTER TRUNCATE ON users FOR EACH STATEMENT",
}


TABLE = "indexer_wallet_changes"


def _qualified(name: str) -> str:
    """``name`` in the schema the migration runs in, quoted: the function's body names no
    table through its ``search_path`` (see the module's docstring)."""
    schema = op.get_bind().execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    return f"{schema}.{name}"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("wallet", sa.Text(), nullable=True),
        sa.Column(
            "noted_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="indexer_wallet_changes_pkey"),
    )
    table = _qualified(TABLE)
    op.execute(
        f"""
        CREATE FUNCTION {_FUNCTION}() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            IF TG_LEVEL = 'STATEMENT' THEN
                INSERT INTO {table} (wallet) VALUES (NULL);
                RETURN NULL;
            END IF;
            IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.wallet_address IS NOT NULL THEN
                INSERT INTO {table} (wallet) VALUES (lower(OLD.wallet_address));
            END IF;
            IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.wallet_address IS NOT NULL
               AND (TG_OP = 'INSERT' OR OLD.wallet_address IS NULL
                    OR lower(OLD.wallet_address) <> lower(NEW.wallet_address)) THEN
                INSERT INTO {table} (wallet) VALUES (lower(NEW.wallet_address));
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
        op.execute(f"ALTER TABLE users ENABLE ALWAYS TRIGGER {name}")


def downgrade() -> None:
    for name in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON users")
    op.execute(f"DROP FUNCTION IF EXISTS {_FUNCTION}()")
    op.drop_table(TABLE)
