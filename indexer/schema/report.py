"""A read-only summary of the migrated schema, for ``migrate``/``demo`` output and checks."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from indexer.schema.partitions import PARENT


@dataclass(frozen=True)
class SchemaReport:
    tables: tuple[str, ...]
    enums: tuple[str, ...]
    partitions: tuple[str, ...]
    materialized_views: tuple[str, ...]
    index_count: int

    def lines(self) -> list[str]:
        audifi = [t for t in self.tables if not t.startswith("indexer_")]
        own = [t for t in self.tables if t.startswith("indexer_")]
        return [
            f"AudiFi tables ({len(audifi)}): {', '.join(audifi)}",
            f"indexer tables ({len(own)}): {', '.join(own)}",
            f"enum types ({len(self.enums)}): {', '.join(self.enums)}",
            f"{PARENT} partitions: {len(self.partitions)} "
            f"({self.partitions[0] if self.partitions else '-'} … "
            f"{self.partitions[-1] if self.partitions else '-'})",
            f"materialised views: {', '.join(self.materialized_views) or '-'}",
            f"indexes: {self.index_count}",
        ]


def schema_report(conn: sa.Connection) -> SchemaReport:
    def names(sql: str) -> tuple[str, ...]:
        return tuple(str(row[0]) for row in conn.execute(sa.text(sql)))

    partitions = (
        names(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            f"WHERE i.inhparent = '{PARENT}'::regclass ORDER BY c.relname"
        )
        if conn.execute(sa.text(f"SELECT to_regclass('{PARENT}')")).scalar()
        else ()
    )
    tables = names(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "AND c.relname <> 'alembic_version' ORDER BY c.relname"
    )
    enums = names(
        "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        "WHERE n.nspname = 'public' AND t.typtype = 'e' ORDER BY t.typname"
    )
    views = names("SELECT matviewname FROM pg_matviews WHERE schemaname = 'public' ORDER BY 1")
    index_count = conn.execute(
        sa.text(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' "
            f"AND tablename NOT LIKE '{PARENT}\\_%'"
        )
    ).scalar_one()
    return SchemaReport(tables, enums, partitions, views, int(index_count))
