"""SQL aggregates the rollups need, one ORM expression on PostgreSQL and SQLite alike.

PostgreSQL has PERCENTILE_CONT; SQLite gets the same function as a Python aggregate registered
on each new connection (usage.apps), so the rollup query is one code path on both.
"""

from __future__ import annotations

import math

from django.db.models import Aggregate, FloatField


class Percentile(Aggregate):
    """The continuous percentile (linear interpolation between the two nearest values)."""

    function = "PERCENTILE_CONT"
    name = "Percentile"
    output_field = FloatField()
    template = "%(function)s(%(fraction)r) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression, fraction: float, **extra):
        if not 0 <= fraction <= 1:
            raise ValueError("fraction must be between 0 and 1")
        super().__init__(expression, fraction=float(fraction), **extra)

    def as_sqlite(self, compiler, connection, **extra_context):
        return self.as_sql(
            compiler, connection, function="GH_PERCENTILE_CONT", template="%(function)s(%(expressions)s, %(fraction)r)", **extra_context
        )


class PercentileCont:
    """SQLite aggregate with PostgreSQL's PERCENTILE_CONT arithmetic (same float formula)."""

    def __init__(self):
        self.values: list[float] = []
        self.fraction = 0.0

    def step(self, value, fraction) -> None:
        self.fraction = fraction
        if value is not None:
            self.values.append(value)

    def finalize(self) -> float | None:
        if not self.values:
            return None
        self.values.sort()
        position = self.fraction * (len(self.values) - 1)
        low, high = math.floor(position), math.ceil(position)
        first, second = float(self.values[low]), float(self.values[high])
        return first + (second - first) * (position - low)


def register_sqlite_functions(sender, connection, **kwargs) -> None:
    if connection.vendor == "sqlite":
        connection.connection.create_aggregate("GH_PERCENTILE_CONT", 2, PercentileCont)
