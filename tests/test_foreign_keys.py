"""Foreign keys checked once per batch (indexer/foreign_keys.py) on a real PostgreSQL: the
referenced rows are locked as the row-level triggers lock them, a missing row or a trigger of
someone else's turns the fast path off, and a role without the privileges keeps the triggers;
and the time-ordered ids of inserted shares (indexer/ids.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors

from indexer import foreign_keys
from indexer.ids import ordered_uuids
from tests.fixtures.chains import send_tx
from tests.fixtures.indexing import Harness

WRITTEN = ("nft_shares", "dividend_events")
SHARE = (
    "INSERT INTO nft_shares (master_id, token_id, owner_id, owner_wallet, tier, royalty_percent) "
    "VALUES (%s, %s, %s, %s, 1, 10.00)"
)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url) as connection:
        yield connection


def backend_rows(conn: psycopg.Connection[Any]) -> tuple[uuid.UUID, uuid.UUID]:
    """An artist, a holder with a wallet and a master; returns (master id, holder id)."""
    artist, holder, master = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    conn.execute(
        "INSERT INTO users (id, email, wallet_address) VALUES (%s, 'a@example.org', NULL), "
        "(%s, 'h@example.org', '0x' || repeat('ab', 20))",
        (artist, holder),
    )
    conn.execute(
        "INSERT INTO masters (id, artist_id, title) VALUES (%s, %s, 'Song')", (master, artist)
    )
    conn.commit()
    return master, holder


def add_audit_trigger(conn: psycopg.Connection[Any], column: str, type_: str) -> None:
    """Someone else's trigger on nft_shares: it copies ``column`` of each new row to a table."""
    conn.execute(f"CREATE TABLE audit_log ({column} {type_})")
    conn.execute(
        "CREATE FUNCTION audit_share() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"INSERT INTO audit_log VALUES (NEW.{column}); RETURN NEW; END $$"
    )
    conn.execute(
        "CREATE TRIGGER audit AFTER INSERT ON nft_shares "
        "FOR EACH ROW EXECUTE FUNCTION audit_share()"
    )


def replication_role(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SHOW session_replication_role").fetchone()
    assert row is not None
    return str(row[0])


def test_fast_path_locks_the_referenced_rows_as_the_triggers_do(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    master, holder = backend_rows(conn)
    with foreign_keys.checked_per_batch(
        conn, WRITTEN, {"masters": [master, master], "users": [holder]}
    ) as fast:
        assert fast
        assert replication_role(conn) == "replica"
        conn.execute(SHARE, (master, 1, holder, "0x" + "ab" * 20))
    assert replication_role(conn) == "origin"  # set back inside the same transaction
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("SET lock_timeout = '300ms'")
        # KEY SHARE, the triggers' lock: the referenced rows cannot go away before commit ...
        with pytest.raises(errors.LockNotAvailable):
            other.execute("DELETE FROM masters WHERE id = %s", (master,))
        with pytest.raises(errors.LockNotAvailable):
            other.execute("UPDATE users SET id = %s WHERE id = %s", (uuid.uuid4(), holder))
        # ... while an update that keeps the key goes through, as with the triggers
        other.execute("UPDATE masters SET title = 'Renamed' WHERE id = %s", (master,))
        conn.commit()
        row = other.execute(
            "SELECT s.owner_id, m.title FROM nft_shares s JOIN masters m ON m.id = s.master_id"
        ).fetchone()
        assert row == (holder, "Renamed")
        # once committed, the database's own foreign keys guard the row as before
        with pytest.raises(errors.ForeignKeyViolation):
            other.execute("DELETE FROM masters WHERE id = %s", (master,))


def test_a_missing_referenced_row_leaves_the_check_to_postgres(
    conn: psycopg.Connection[Any],
) -> None:
    master, holder = backend_rows(conn)
    ghost = uuid.uuid4()
    with foreign_keys.checked_per_batch(
        conn, WRITTEN, {"masters": [master, ghost], "users": [holder]}
    ) as fast:
        assert not fast
        assert replication_role(conn) == "origin"
        with pytest.raises(errors.ForeignKeyViolation):
            conn.execute(SHARE, (ghost, 1, None, None))
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM nft_shares").fetchone() == (0,)


def test_a_trigger_of_someone_else_keeps_the_row_triggers(conn: psycopg.Connection[Any]) -> None:
    master, _ = backend_rows(conn)
    add_audit_trigger(conn, "master_id", "uuid")
    conn.commit()
    with foreign_keys.checked_per_batch(conn, WRITTEN, {"masters": [master]}) as fast:
        assert not fast
        conn.execute(SHARE, (master, 7, None, None))
    conn.commit()
    assert conn.execute("SELECT master_id FROM audit_log").fetchall() == [(master,)]


def test_a_role_needs_the_parameter_and_the_lock_privileges(
    conn: psycopg.Connection[Any],
) -> None:
    master, holder = backend_rows(conn)
    role = f"audifi_test_{uuid.uuid4().hex[:12]}"
    references = {"masters": [master], "users": [holder]}
    conn.execute(f"CREATE ROLE {role} NOLOGIN")
    try:
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
        conn.execute(f"GRANT INSERT, UPDATE ON nft_shares, dividend_events TO {role}")
        conn.commit()

        def allowed() -> bool:
            conn.execute(f"SET ROLE {role}")
            try:
                with foreign_keys.checked_per_batch(conn, WRITTEN, references) as fast:
                    conn.execute(SHARE, (master, 1, holder, None))  # checked either way
                conn.rollback()
                return fast
            finally:
                conn.rollback()
                conn.execute("RESET ROLE")
                conn.commit()

        assert not allowed()  # neither the parameter nor UPDATE on masters / users
        conn.execute(f"GRANT SET ON PARAMETER session_replication_role TO {role}")
        conn.commit()
        assert not allowed()  # still no right to lock masters / users FOR KEY SHARE
        conn.execute(f"GRANT UPDATE (title) ON masters TO {role}")
        conn.execute(f"GRANT UPDATE (email) ON users TO {role}")
        conn.commit()
        assert allowed()
    finally:
        conn.rollback()
        conn.execute("RESET ROLE")
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")
        conn.commit()


def test_unknown_referenced_table_is_refused(conn: psycopg.Connection[Any]) -> None:
    with (
        pytest.raises(ValueError, match="artist_coins"),
        foreign_keys.checked_per_batch(conn, WRITTEN, {"artist_coins": [uuid.uuid4()]}),
    ):
        pass


@pytest.mark.anvil
def test_indexing_with_a_trigger_on_nft_shares_fires_it_for_every_share(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    conn = h.conn
    master, _ = backend_rows(conn)
    add_audit_trigger(conn, "token_id", "numeric")
    conn.commit()
    holder = h.node.accounts[1]
    send_tx(
        h.w3,
        h.contracts.registry.functions.deployMasterAndMint(master.bytes, "M", "M", holder, 1, 6),
    )
    h.sync()
    tokens = conn.execute("SELECT token_id FROM audit_log ORDER BY token_id").fetchall()
    assert [int(t) for (t,) in tokens] == [1, 2, 3, 4, 5, 6]
    assert conn.execute("SELECT count(*) FROM nft_shares").fetchone() == (6,)


def test_ordered_uuids_are_version_7_increasing_and_unique() -> None:
    first = ordered_uuids(5_000, now_ms=1_700_000_000_000)
    second = ordered_uuids(5_000, now_ms=1_700_000_000_001)
    parsed = [uuid.UUID(text) for text in first + second]
    assert [str(u) for u in parsed] == first + second  # canonical text, as PostgreSQL prints
    assert {u.version for u in parsed} == {7}
    assert {u.variant for u in parsed} == {uuid.RFC_4122}
    assert parsed == sorted(parsed)  # within a batch, and the later millisecond after
    assert len(set(parsed)) == len(parsed)
    assert parsed[0].int >> 80 == 1_700_000_000_000  # the Unix time in ms leads
    assert ordered_uuids(0) == []


@pytest.mark.anvil
def test_inserted_shares_get_time_ordered_ids(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    conn = h.conn
    master, _ = backend_rows(conn)
    send_tx(
        h.w3,
        h.contracts.registry.functions.deployMasterAndMint(
            master.bytes, "M", "M", h.node.accounts[1], 1, 20
        ),
    )
    h.sync()
    ids = [row[0] for row in conn.execute("SELECT id FROM nft_shares ORDER BY token_id")]
    assert len(ids) == 20
    assert {i.version for i in ids} == {7}
    assert ids == sorted(ids)  # minted in token order, so ids in token order too
