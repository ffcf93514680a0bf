"""Foreign keys of a batch's bulk writes checked once per batch instead of once per row.

PostgreSQL checks a foreign key with a row-level trigger: for every inserted ``nft_shares`` row
it looks up the master and the owner, each with a ``FOR KEY SHARE`` lock on the referenced
row. A backfill batch writes tens of thousands of shares that refer to a few dozen masters and
users, and those 2 × n lookups are about half of what PostgreSQL spends on ``nft_shares``
(benchmark: ≈ 0.75 s of ≈ 1.45 s per 76,000 shares; see ``bench/README.md``).

:func:`checked_per_batch` does the same check once per batch and then lets the write skip the
row-level triggers:

1. it locks every row the batch refers to ``FOR KEY SHARE`` — the lock the trigger takes, held
   to the end of the transaction, so no referenced row can be deleted or have its key changed
   before the batch commits — and counts them;
2. only when every referenced row is there, the written tables have no trigger or rule of their
   own (anything but the internal triggers of constraints) and the role may take the lock and
   set the parameter, it sets
   ``session_replication_role = replica`` for the write (the mechanism
   ``pg_restore --disable-triggers`` uses), and sets it back when the write is done.

Guarantees:

* **The same integrity as the triggers.** A row refers only to rows that exist and stay until
  commit. When a referenced row is missing the fast path declines and the write runs with the
  triggers, which raise PostgreSQL's own ``ForeignKeyViolation`` as before.
* **No one else's trigger is silenced.** A trigger or rule on a written table (an audit
  trigger, a NOTIFY) turns the fast path off; it is looked up in every batch, so one added
  while the daemon runs is honoured from the next batch on.
* **Only inserts and updates that keep the referenced keys.** Replica mode would also skip the
  ``ON DELETE``/``ON UPDATE`` actions of tables that refer to the written rows, so the callers
  use it only for inserts and for updates that leave the written table's own keys alone
  (``nft_shares.id`` is never updated); deletes always run with the triggers.
* **Without the privilege, the old way.** Setting ``session_replication_role`` needs a
  superuser or, from PostgreSQL 15, ``GRANT SET ON PARAMETER session_replication_role TO
  <role>`` (``docs/operations.md``); without it every row is checked by its trigger — slower,
  the same rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager

from indexer import store

REFERENCED_TABLES = ("masters", "users")
"""The tables a batch's rows may refer to (each keyed by a uuid ``id``)."""

_PARAMETER_PRIVILEGE_SINCE = 150000
"""``GRANT SET ON PARAMETER`` (and ``has_parameter_privilege``) exist from PostgreSQL 15."""


def _may_set_replication_role(conn: store.Conn) -> str:
    if conn.info.server_version >= _PARAMETER_PRIVILEGE_SINCE:
        return (
            "(current_setting('is_superuser') = 'on' "
            "OR has_parameter_privilege('session_replication_role', 'SET'))"
        )
    return "current_setting('is_superuser') = 'on'"


def fast_path_allowed(
    conn: store.Conn, written: Sequence[str], referenced: Collection[str]
) -> bool:
    """Whether the row-level triggers of ``written`` may be skipped: none of the tables has a
    trigger or rule of its own, the role may set ``session_replication_role``, and it may lock
    rows of the ``referenced`` tables ``FOR KEY SHARE`` (which needs the UPDATE privilege on a
    column: the triggers run as the table owner, this lock runs as the indexer's role)."""
    row = conn.execute(
        "SELECT NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = ANY(%s::regclass[]) "
        "AND NOT tgisinternal) "
        "AND NOT EXISTS (SELECT 1 FROM pg_rewrite WHERE ev_class = ANY(%s::regclass[])) "
        "AND (SELECT coalesce(bool_and(has_any_column_privilege(t, 'UPDATE')), true) "
        "     FROM unnest(%s::regclass[]) AS t) "
        "AND " + _may_set_replication_role(conn),
        (list(written), list(written), list(referenced)),
    ).fetchone()
    return bool(row and row[0])


def _lock_all(conn: store.Conn, wanted: Mapping[str, list[uuid.UUID]]) -> bool:
    """Lock the rows ``FOR KEY SHARE``; True when every one of them exists."""
    ctes = ", ".join(
        f"{table} AS (SELECT id FROM {table} WHERE id = ANY(%s::uuid[]) FOR KEY SHARE)"
        for table in wanted
    )
    found = " + ".join(f"(SELECT count(*) FROM {table})" for table in wanted)
    row = conn.execute(f"WITH {ctes} SELECT {found}", list(wanted.values())).fetchone()
    return bool(row and row[0] == sum(len(ids) for ids in wanted.values()))


@contextmanager
def checked_per_batch(
    conn: store.Conn, written: Sequence[str], references: Mapping[str, Collection[uuid.UUID]]
) -> Iterator[bool]:
    """Run the body's inserts/updates of the ``written`` tables with their foreign keys checked
    once for the batch: ``references`` maps each referenced table (:data:`REFERENCED_TABLES`)
    to the ids the written rows refer to. Yields whether the row-level triggers are skipped.

    In the caller's transaction. On an error in the body the transaction is aborted and
    PostgreSQL drops the ``SET LOCAL`` with it; on success the role is set back to the
    session's own before returning.
    """
    wanted = {table: sorted(set(ids)) for table, ids in references.items() if ids}
    unknown = set(wanted) - set(REFERENCED_TABLES)
    if unknown:
        raise ValueError(f"foreign keys to {sorted(unknown)} are not checked per batch")
    fast = fast_path_allowed(conn, written, wanted) and (not wanted or _lock_all(conn, wanted))
    if fast:
        conn.execute("SET LOCAL session_replication_role = replica")
    yield fast
    if fast:
        conn.execute("SET LOCAL session_replication_role TO DEFAULT")
