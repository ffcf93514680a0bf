"""What the backend changes after the mints reaches the shares at the next poll, found from
what triggers note, not by reading every row at each poll:

* ``owner_id`` follows the users' wallets (SPEC §3, §8): the triggers on ``users`` note the
  wallets a change touches (migration 0006), and only those wallets' shares are re-linked;
* tier and royalty follow ``ipo_configs`` (SPEC §3, §4.1): the triggers on ``ipo_configs``
  note the masters a change touches (migration 0007), and only those masters' tiers are
  compared.

Either way a poll costs O(changes), not O(users), O(masters) or O(shares), with the same
result as a poll that looks at everything."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from indexer import projections
from tests.fixtures.chains import send_tx
from tests.fixtures.indexing import Harness
from tests.test_projections import add_master, add_user, register_shares

MakeHarness = Callable[..., Harness]

EXPECTED_OWNERS = (
    "SELECT s.master_id, s.token_id, (SELECT u.id FROM users u "
    "WHERE lower(u.wallet_address) = s.owner_wallet ORDER BY u.created_at, u.id LIMIT 1) "
    "FROM nft_shares s ORDER BY 1, 2"
)
"""The rule, share by share: the first created user whose wallet matches, case-insensitively."""

STORED_OWNERS = "SELECT master_id, token_id, owner_id FROM nft_shares ORDER BY 1, 2"


def changes(conn: Any) -> list[str | None]:
    return [row[0] for row in conn.execute("SELECT wallet FROM indexer_wallet_changes ORDER BY id")]


@pytest.fixture
def relinks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every :func:`projections.relink_owners` call from here on: "all" (every share) or
    "some" (scoped to shares or wallets)."""
    calls: list[str] = []
    relinked = projections.relink_owners

    def relink_spy(conn: Any, shares: Any = None, wallets: Any = None) -> None:
        calls.append("all" if shares is None and wallets is None else "some")
        relinked(conn, shares, wallets)

    monkeypatch.setattr(projections, "relink_owners", relink_spy)
    return calls


def test_triggers_note_the_wallets_a_change_touches(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        user = add_user_row(conn, "0xAbC0000000000000000000000000000000000001")
        add_user_row(conn, None)
        assert changes(conn) == ["0xabc0000000000000000000000000000000000001"]
        conn.execute("DELETE FROM indexer_wallet_changes")

        conn.execute("UPDATE users SET display_name = 'x', bio = 'y' WHERE id = %s", (user,))
        conn.execute(  # the same wallet in another case: the link cannot change
            "UPDATE users SET wallet_address = lower(wallet_address) WHERE id = %s", (user,)
        )
        assert changes(conn) == []

        new = "0xdef0000000000000000000000000000000000002"
        conn.execute("UPDATE users SET wallet_address = %s WHERE id = %s", (new, user))
        assert changes(conn) == ["0xabc0000000000000000000000000000000000001", new]
        conn.execute("DELETE FROM indexer_wallet_changes")

        conn.execute("UPDATE users SET created_at = created_at - interval '1 day' WHERE id = %s",
                     (user,))  # fmt: skip
        assert changes(conn) == [new]  # the tie-break between users of one wallet may change
        conn.execute("DELETE FROM indexer_wallet_changes")

        # A logical-replication subscriber or a restore runs with the replica role: still noted.
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM users WHERE id = %s", (user,))
        conn.execute("RESET session_replication_role")
        assert changes(conn) == [new]
        with conn.transaction():
            assert projections._take_changes(conn, "indexer_wallet_changes", "wallet", 10) == {new}
        assert changes(conn) == []

        conn.execute("TRUNCATE users CASCADE")
        assert changes(conn) == [None]
        with conn.transaction():
            assert (
                projections._take_changes(conn, "indexer_wallet_changes", "wallet", 10) is None
            )  # every share
        assert changes(conn) == []


def add_user_row(conn: Any, wallet: str | None) -> uuid.UUID:
    user = uuid.uuid4()
    conn.execute(
        "INSERT INTO users (id, email, wallet_address) VALUES (%s, %s, %s)",
        (user, f"{user}@example.org", wallet),
    )
    return user


@pytest.mark.anvil
@pytest.mark.parametrize("seed", [1, 2])
def test_owner_links_follow_random_user_changes_without_relinking_every_share(
    make_harness: MakeHarness, relinks: list[str], seed: int
) -> None:
    """Users are added, re-walleted (in any case), re-dated and deleted at random between
    polls, and shares move; after each poll every share's ``owner_id`` is what the rule gives
    — and after the first poll no re-link covers every share."""
    calls = relinks
    rnd = random.Random(seed)
    h = make_harness()
    holders = h.node.accounts[1:7]
    artist = add_user(h)
    master_id = uuid.uuid4()
    add_master(h, master_id, artist)
    own = register_shares(h, master_id)
    tokens: dict[int, str] = {}
    for token in range(1, 25):
        holder = rnd.choice(holders)
        send_tx(h.w3, own.functions.mint(holder, token))
        tokens[token] = holder
    h.sync()
    h.syncer.reconcile()
    assert calls == ["all"]  # a new engine re-links every share once
    calls.clear()

    def variant(wallet: str) -> str:
        return rnd.choice([wallet, wallet.lower(), "0x" + wallet[2:].upper()])

    users: list[uuid.UUID] = []
    for _ in range(30):
        for _ in range(rnd.randint(1, 3)):
            action = rnd.choice(["add", "add", "rewallet", "unlink", "redate", "delete", "move"])
            try:
                with h.conn.transaction():
                    if action == "add" or not users:
                        users.append(add_user(h, wallet=variant(rnd.choice(holders))))
                    elif action == "rewallet":
                        h.conn.execute(
                            "UPDATE users SET wallet_address = %s WHERE id = %s",
                            (variant(rnd.choice(holders)), rnd.choice(users)),
                        )
                    elif action == "unlink":
                        h.conn.execute(
                            "UPDATE users SET wallet_address = NULL WHERE id = %s",
                            (rnd.choice(users),),
                        )
                    elif action == "redate":
                        h.conn.execute(
                            "UPDATE users SET created_at = now() - %s * interval '1 hour' "
                            "WHERE id = %s",
                            (rnd.randint(0, 100), rnd.choice(users)),
                        )
                    elif action == "delete":
                        gone = rnd.choice(users)
                        h.conn.execute("DELETE FROM users WHERE id = %s", (gone,))
                        users.remove(gone)
            except (psycopg.errors.UniqueViolation, psycopg.errors.ForeignKeyViolation):
                pass  # the same wallet text twice, or a user who still owns shares
            if action == "move":
                token = rnd.choice(list(tokens))
                to = rnd.choice([h for h in holders if h != tokens[token]])
                fn = own.functions.transferFrom(tokens[token], to, token)
                send_tx(h.w3, fn, sender=tokens[token])
                tokens[token] = to
        h.sync()
        h.syncer.reconcile()
        stored = h.conn.execute(STORED_OWNERS).fetchall()
        assert stored == h.conn.execute(EXPECTED_OWNERS).fetchall()
    assert "all" not in calls and "some" in calls, calls
    linked = h.conn.execute("SELECT count(owner_id) FROM nft_shares").fetchone()
    assert linked is not None and linked[0] > 0  # the run did link shares


def test_a_backend_role_without_rights_on_the_indexer_tables_still_writes_users(
    database_url: str,
) -> None:
    """The triggers' function runs as its owner: the backend's own role, which may write
    ``users`` and nothing of the indexer's, is not refused by them."""
    role = f"audifi_backend_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role}")
        try:
            conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON users TO {role}")
            with conn.transaction():
                conn.execute(f"SET LOCAL ROLE {role}")
                user = add_user_row(conn, "0x00000000000000000000000000000000000000Aa")
                conn.execute("UPDATE users SET wallet_address = NULL WHERE id = %s", (user,))
                with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                    conn.execute("SELECT * FROM indexer_wallet_changes")
            wallet = "0x00000000000000000000000000000000000000aa"
            assert changes(conn) == [wallet, wallet]
        finally:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


# --------------------------------------------------------------------------------- tiers

TIER_COLUMNS = ("tier1_count", "tier2_count", "tier3_count", "tier1_royalty", "tier2_royalty",
                "tier3_royalty", "tier4_royalty")  # fmt: skip
DEFAULT_TIERS = (10, 40, 50, Decimal("10.00"), Decimal("5.00"), Decimal("3.00"), Decimal("1.00"))


def add_ipo_config(conn: Any, master: uuid.UUID, tiers: tuple[Any, ...]) -> None:
    conn.execute(
        f"INSERT INTO ipo_configs (master_id, initial_price, total_supply, "
        f"{', '.join(TIER_COLUMNS)}) VALUES (%s, 0.1, 100, %s, %s, %s, %s, %s, %s, %s)",
        (master, *tiers),
    )


def tier_changes(conn: Any) -> list[uuid.UUID | None]:
    return [r[0] for r in conn.execute("SELECT master_id FROM indexer_tier_changes ORDER BY id")]


def test_triggers_note_the_masters_a_tier_change_touches(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        artist = add_user_row(conn, None)
        first, second = uuid.uuid4(), uuid.uuid4()
        for master in (first, second):
            conn.execute(
                "INSERT INTO masters (id, artist_id, title) VALUES (%s, %s, 'Song')",
                (master, artist),
            )
        add_ipo_config(conn, first, (1, 2, 3, 4, 3, 2, 1))
        assert tier_changes(conn) == [first]
        conn.execute("DELETE FROM indexer_tier_changes")

        conn.execute("UPDATE ipo_configs SET initial_price = 2, tier1_count = 1")  # price only
        assert tier_changes(conn) == []
        conn.execute("UPDATE ipo_configs SET tier4_royalty = 0.5")
        assert tier_changes(conn) == [first]
        conn.execute("DELETE FROM indexer_tier_changes")

        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE ipo_configs SET master_id = %s", (second,))
        conn.execute("RESET session_replication_role")
        assert tier_changes(conn) == [first, second]
        conn.execute("DELETE FROM ipo_configs")
        assert tier_changes(conn) == [first, second, second]
        with conn.transaction():
            taken = projections._take_changes(conn, "indexer_tier_changes", "master_id", 10)
        assert taken == {first, second}
        assert tier_changes(conn) == []

        conn.execute("TRUNCATE ipo_configs")
        assert tier_changes(conn) == [None]


def expected_tiers(conn: Any, master: uuid.UUID, minted: int) -> list[tuple[int, Decimal]]:
    """SPEC §3's Mover Advantage for ``minted`` shares minted in token order, by the master's
    configuration as it is now (or the seed's defaults)."""
    row = conn.execute(
        f"SELECT {', '.join(TIER_COLUMNS)} FROM ipo_configs WHERE master_id = %s", (master,)
    ).fetchone()
    t1, t2, t3, *royalties = row if row is not None else DEFAULT_TIERS
    out = []
    for k in range(1, minted + 1):
        tier = 1 if k <= t1 else 2 if k <= t1 + t2 else 3 if k <= t1 + t2 + t3 else 4
        out.append((tier, Decimal(royalties[tier - 1]).quantize(Decimal("0.01"))))
    return out


@pytest.mark.anvil
def test_tiers_follow_random_ipo_config_changes_comparing_only_the_masters_noted(
    make_harness: MakeHarness,
) -> None:
    rnd = random.Random(7)
    h = make_harness()
    holder = h.node.accounts[1]
    artist = add_user(h)
    masters = [uuid.uuid4() for _ in range(3)]
    contracts = {}
    minted = dict.fromkeys(masters, 0)
    for master in masters:
        add_master(h, master, artist)
        contracts[master] = register_shares(h, master)

    def stored(master: uuid.UUID) -> list[tuple[int, Decimal]]:
        rows = h.conn.execute(
            "SELECT tier, royalty_percent FROM nft_shares WHERE master_id = %s ORDER BY token_id",
            (master,),
        ).fetchall()
        return [(int(r[0]), Decimal(r[1])) for r in rows]

    for _ in range(25):
        master = rnd.choice(masters)
        action = rnd.choice(["mint", "mint", "set", "set", "price", "drop"])
        has = h.conn.execute("SELECT 1 FROM ipo_configs WHERE master_id = %s", (master,))
        configured = has.fetchone() is not None
        tiers = (rnd.randint(0, 3), rnd.randint(0, 3), rnd.randint(0, 3),
                 *(Decimal(rnd.randint(0, 2000)) / 100 for _ in range(4)))  # fmt: skip
        if action == "mint":
            for _ in range(rnd.randint(1, 3)):
                minted[master] += 1
                send_tx(h.w3, contracts[master].functions.mint(holder, minted[master]))
        elif action == "set" and not configured:
            add_ipo_config(h.conn, master, tiers)
        elif action == "set":
            h.conn.execute(
                f"UPDATE ipo_configs SET ({', '.join(TIER_COLUMNS)}) = "
                "(%s, %s, %s, %s, %s, %s, %s) WHERE master_id = %s",
                (*tiers, master),
            )
        elif action == "price":
            h.conn.execute("UPDATE ipo_configs SET initial_price = initial_price + 1")
        else:
            h.conn.execute("DELETE FROM ipo_configs WHERE master_id = %s", (master,))
        h.sync()
        h.syncer.reconcile()
        for m in masters:
            assert stored(m) == expected_tiers(h.conn, m, minted[m]), (action, m)

    # Only the masters noted are compared: a digest out of step with nothing noted (as after
    # a change made with the triggers disabled) stays until the engine starts again.
    victim = next(m for m in masters if minted[m])
    h.conn.execute("UPDATE nft_shares SET tier = 4, royalty_percent = 0 WHERE master_id = %s",
                   (victim,))  # fmt: skip
    h.conn.execute(
        "INSERT INTO indexer_tier_configs (chain_id, master_id, digest) VALUES (%s, %s, 'stale') "
        "ON CONFLICT (chain_id, master_id) DO UPDATE SET digest = 'stale'",
        (h.chain_id, victim),
    )
    h.syncer.reconcile()
    assert stored(victim) == [(4, Decimal("0.00"))] * minted[victim]
    h.syncer.forget_cache()  # as at start
    h.syncer.reconcile()
    assert stored(victim) == expected_tiers(h.conn, victim, minted[victim])


def test_a_temporary_table_of_the_same_name_takes_no_note(database_url: str) -> None:
    """Found by review: the triggers' functions run as their owner; with the table named
    through the writer's ``search_path``, a temporary table of the same name (``pg_temp`` is
    searched first) took the notes — and a temporary function would have run with the owner's
    rights. The functions name their schema's tables and search ``pg_catalog, pg_temp``."""
    role = f"audifi_backend_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role}")
        try:
            conn.execute(
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON users, masters, ipo_configs TO {role}"
            )
            artist = add_user_row(conn, None)
            master = uuid.uuid4()
            conn.execute(
                "INSERT INTO masters (id, artist_id, title) VALUES (%s, %s, 'Song')",
                (master, artist),
            )
            conn.execute("DELETE FROM indexer_wallet_changes")
            with conn.transaction():
                conn.execute(f"SET LOCAL ROLE {role}")
                for decoy in ("indexer_wallet_changes (wallet text)",
                              "indexer_tier_changes (master_id uuid)"):  # fmt: skip
                    conn.execute(f"CREATE TEMP TABLE {decoy} ON COMMIT DROP")
                add_user_row(conn, "0x00000000000000000000000000000000000000bb")
                add_ipo_config(conn, master, (1, 1, 1, 4, 3, 2, 1))
                temp = conn.execute(
                    "SELECT (SELECT count(*) FROM pg_temp.indexer_wallet_changes), "
                    "(SELECT count(*) FROM pg_temp.indexer_tier_changes)"
                ).fetchone()
                assert temp == (0, 0)
            assert changes(conn) == ["0x00000000000000000000000000000000000000bb"]
            assert tier_changes(conn) == [master]
        finally:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


@pytest.mark.anvil
def test_tiers_changed_and_changed_back_around_a_mint_follow_the_configuration(
    make_harness: MakeHarness,
) -> None:
    """Found by review: a configuration changed, a mint tiered by it, the configuration
    changed back before the next poll — the digests matched, the mint kept the passing
    configuration's tier. Every noted master is re-tiered."""
    h = make_harness()
    holder = h.node.accounts[1]
    master, own = configured_master_with_one_share(h, holder)
    update = (
        f"UPDATE ipo_configs SET ({', '.join(TIER_COLUMNS)}) = (%s, %s, %s, %s, %s, %s, %s) "
        "WHERE master_id = %s"
    )
    h.conn.execute(update, (3, 1, 1, 9, 6, 3, 1, master))
    send_tx(h.w3, own.functions.mint(holder, 2))
    send_tx(h.w3, own.functions.mint(holder, 3))
    h.sync()  # tiered by the passing configuration: (1, 9.00) each
    h.conn.execute(update, (1, 1, 1, 20, 15, 10, 5, master))
    h.syncer.reconcile()
    assert stored_tiers(h.conn, master) == expected_tiers(h.conn, master, 3)


@pytest.mark.anvil
def test_a_tier_change_committed_during_a_reconcile_is_applied_by_the_next(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: the re-tier reads the configuration, then its digest is stored by a
    later statement; a change committed between the two left the new digest stored with the
    old tiers, and the change's note then compared as unchanged."""
    h = make_harness()
    holder = h.node.accounts[1]
    master, _ = configured_master_with_one_share(h, holder)
    update = f"UPDATE ipo_configs SET ({', '.join(TIER_COLUMNS)}) = (%s, %s, %s, %s, %s, %s, %s)"
    h.conn.execute(update, (1, 1, 1, 30, 15, 10, 5))
    retier, done = projections.retier_shares, []

    def retier_then_change(conn: Any, chain_id: int, masters: Any) -> int:
        shares = retier(conn, chain_id, masters)
        if not done:  # another session commits a third configuration right now
            done.append(True)
            with psycopg.connect(h.database_url, autocommit=True) as other:
                other.execute(update, (1, 1, 1, 40, 15, 10, 5))
        return shares

    monkeypatch.setattr(projections, "retier_shares", retier_then_change)
    h.syncer.reconcile()
    h.syncer.reconcile()
    assert done and stored_tiers(h.conn, master) == [(1, Decimal("40.00"))]


def stored_tiers(conn: Any, master: uuid.UUID) -> list[tuple[int, Decimal]]:
    rows = conn.execute(
        "SELECT tier, royalty_percent FROM nft_shares WHERE master_id = %s ORDER BY token_id",
        (master,),
    ).fetchall()
    return [(int(r[0]), Decimal(r[1])) for r in rows]


def test_only_the_owner_may_attach_the_note_functions(database_url: str) -> None:
    """Found by review: the functions were executable by PUBLIC, so any role could attach
    them to a table of its own and write notes with the owner's rights (a NULL note: every
    share re-linked at each poll). Triggers need no EXECUTE right to fire."""
    role = f"audifi_nobody_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role}")
        try:
            for function in ("indexer_note_wallet_change", "indexer_note_tier_change"):
                with conn.transaction():
                    conn.execute(f"SET LOCAL ROLE {role}")
                    conn.execute("CREATE TEMP TABLE decoy (x int) ON COMMIT DROP")
                    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                        conn.execute(
                            f"CREATE TRIGGER decoy AFTER INSERT ON decoy FOR EACH STATEMENT "
                            f"EXECUTE FUNCTION {function}()"
                        )
            assert changes(conn) == [] and tier_changes(conn) == []
        finally:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


@pytest.mark.anvil
def test_a_failed_batch_write_keeps_the_relink_bookkeeping(
    make_harness: MakeHarness, relinks: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: a database fault inside the projector's write forgot which shares
    were written, so the next poll re-linked every share. Its shares are noted by the pass
    before the write: the next poll re-links them, and only them — with the owner right."""
    calls = relinks
    write = projections._write_pass
    failed: list[bool] = []

    def write_once_failing(*args: Any, **kwargs: Any) -> Any:
        if not failed:
            failed.append(True)
            raise psycopg.errors.SerializationFailure("injected")
        return write(*args, **kwargs)

    h = make_harness(plan_ahead=False)
    holder = h.node.accounts[1]
    artist = add_user(h)
    master = uuid.uuid4()
    add_master(h, master, artist)
    own = register_shares(h, master)
    send_tx(h.w3, own.functions.mint(holder, 1))
    h.sync()
    h.syncer.reconcile()
    assert calls == ["all"]
    calls.clear()
    monkeypatch.setattr(projections, "_write_pass", write_once_failing)
    send_tx(h.w3, own.functions.mint(holder, 2))
    with pytest.raises(psycopg.errors.SerializationFailure):
        h.sync()
    user = add_user(h)  # a user of another wallet: not the holder's
    h.sync()
    h.conn.execute("UPDATE users SET wallet_address = %s WHERE id = %s", (holder, user))
    h.syncer.reconcile()
    assert failed and calls and "all" not in calls, calls
    owners = h.conn.execute("SELECT owner_id FROM nft_shares WHERE master_id = %s", (master,))
    assert [r[0] for r in owners.fetchall()] == [user, user]


def configured_master_with_one_share(h: Harness, holder: str) -> tuple[uuid.UUID, Any]:
    """A registered master configured (1, 1, 1; 20/15/10/5 %), one share minted to
    ``holder``, indexed and reconciled."""
    master = uuid.uuid4()
    add_master(h, master, add_user(h))
    add_ipo_config(h.conn, master, (1, 1, 1, 20, 15, 10, 5))
    own = register_shares(h, master)
    send_tx(h.w3, own.functions.mint(holder, 1))
    h.sync()
    h.syncer.reconcile()
    return master, own
