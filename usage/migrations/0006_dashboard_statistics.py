"""Extended statistics for the dashboards' breakdown query (PostgreSQL only).

The usage page sums a range of UsageDaily rows grouped by (workspace, key, deployment, model).
Without multi-column statistics PostgreSQL multiplies the columns' distinct counts, expects tens
of thousands of groups where there are a few hundred, and sorts every row (spilling to disk over
a year of a busy organisation) instead of hashing: 2-3x slower. See docs/BENCHMARKS.md, "Dashboards".
"""

from django.db import migrations

STATISTICS = "usage_daily_breakdown"


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        f"CREATE STATISTICS IF NOT EXISTS {STATISTICS} (ndistinct) ON workspace_id, api_key_id, deployment_id, model, currency "
        "FROM usage_usagedaily"
    )
    schema_editor.execute("ANALYZE usage_usagedaily")


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP STATISTICS IF EXISTS {STATISTICS}")


class Migration(migrations.Migration):

    dependencies = [
        ("usage", "0005_rollup_price_versions"),
    ]

    operations = [migrations.RunPython(create, drop)]
