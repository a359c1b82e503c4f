"""Counter tables (browse_counts, browse_scope_counts, browse_tag_counts): deltas added in the write
transaction that changes the rows they count."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite


class CounterTable:
    """Adds deltas to one counter table: an upsert on its key columns, built once per dialect (compiled
    once, not for every flush) and executed with one parameter set per counter."""

    def __init__(self, model: Any, key_columns: list[str]) -> None:
        self.key_columns = key_columns
        self.upserts = {}
        for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite)):
            statement = dialect.insert(model)
            self.upserts[name] = statement.on_conflict_do_update(
                index_elements=key_columns, set_={"count": model.count + statement.excluded["count"]}
            )

    def add(self, connection: Connection, deltas: Counter[Any]) -> None:
        """Add ``deltas`` (key tuples in ``key_columns`` order) in one executemany, keys sorted so that
        concurrent transactions lock counter rows in the same order."""
        rows = [
            {**dict(zip(self.key_columns, key, strict=True)), "count": delta}
            for key, delta in sorted(deltas.items())
            if delta != 0
        ]
        if rows:
            connection.execute(self.upserts[connection.dialect.name], rows)
