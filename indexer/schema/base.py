"""The one :class:`~sqlalchemy.MetaData` that describes every table the indexer migrates."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
