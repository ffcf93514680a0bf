"""The declared schema: the AudiFi tables of the seed plus the indexer's own tables.

Import :data:`metadata` for alembic and for queries; the table objects are re-exported.
"""

from __future__ import annotations

from indexer.schema import audifi, indexer_tables
from indexer.schema.base import metadata

__all__ = ["audifi", "indexer_tables", "metadata"]
