"""SQL aggregates the rollups need, one ORM expression on PostgreSQL and SQLite alike.

What PostgreSQL has and SQLite lacks (time zone conversion, exact decimal sums, the latency
histograms of usage.latency) SQLite gets as Python functions registered on each new connection
(usage.apps), so the rollup query is one code path on both.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from django.db.models import DateField, DecimalField, Func, Sum

from usage.latency import register_sqlite_aggregates


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


def register_sqlite_functions(sender, connection, **kwargs) -> None:
    if connection.vendor == "sqlite":
        register_sqlite_aggregates(connection.connection)
        connection.connection.create_function("GH_LOCAL_DATE", 2, local_date, deterministic=True)
