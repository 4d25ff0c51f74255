"""SQL aggregates the rollups need, one ORM expression on PostgreSQL and SQLite alike.

PostgreSQL has PERCENTILE_CONT; SQLite gets the same function as a Python aggregate registered
on each new connection (usage.apps), so the rollup query is one code path on both.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from django.db.models import Aggregate, DateField, DecimalField, FloatField, Func, Sum


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


class ExactSum(Sum):
    """SUM of a decimal column, exact on both databases.

    PostgreSQL's numeric SUM is exact. SQLite stores decimals as floats: each value is rounded
    back to its exact nanos (9 decimal places) and the integer-valued floats add exactly.
    """

    output_field = DecimalField(max_digits=24, decimal_places=9)

    def as_sqlite(self, compiler, connection, **extra_context):
        return self.as_sql(compiler, connection, template="(SUM(ROUND(%(expressions)s * 1000000000)) / 1000000000.0)", **extra_context)


class LocalDate(Func):
    """The calendar date of a timestamp in a time zone that may differ per row (an expression)."""

    output_field = DateField()

    def as_postgresql(self, compiler, connection, **extra_context):
        return self.as_sql(compiler, connection, template="((%(expressions)s))::date", arg_joiner=" AT TIME ZONE ", **extra_context)

    def as_sqlite(self, compiler, connection, **extra_context):
        return self.as_sql(compiler, connection, function="GH_LOCAL_DATE", **extra_context)


def local_date(value: str | None, zone: str) -> str | None:
    """SQLite side of LocalDate: Django stores UTC timestamps there as ISO text."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value).replace(tzinfo=UTC)
    return moment.astimezone(ZoneInfo(zone)).date().isoformat()


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
        connection.connection.create_function("GH_LOCAL_DATE", 2, local_date, deterministic=True)
