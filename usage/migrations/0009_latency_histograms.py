"""Rollup rows keep a latency histogram and their slowest request instead of their own p50/p95
(which no group of rows could be summarised from). Rows written before have an empty histogram,
so every bucket is marked dirty: the next rollup pass recomputes them from the events (and
likewise when migrating back)."""

from django.db import migrations, models
from django.utils import timezone

import usage.latency


def recompute_everything(apps, schema_editor):
    now = timezone.now()
    for name in ("UsageDayBucket", "UsageHourBucket"):
        apps.get_model("usage", name).objects.update(dirty=True, marked_at=now)


class Migration(migrations.Migration):

    dependencies = [
        ('usage', '0008_drift_coarse'),
    ]

    operations = [
        migrations.AlterField(  # a default, so that migrating back can re-add the column to existing rows
            model_name='usagedaily',
            name='latency_p50_ms',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AlterField(  # a default, so that migrating back can re-add the column to existing rows
            model_name='usagedaily',
            name='latency_p95_ms',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AlterField(  # a default, so that migrating back can re-add the column to existing rows
            model_name='usagehourly',
            name='latency_p50_ms',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AlterField(  # a default, so that migrating back can re-add the column to existing rows
            model_name='usagehourly',
            name='latency_p95_ms',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AlterField(  # a default, so that migrating back can re-add the column to existing rows
            model_name='usagemonthly',
            name='latency_p50_ms',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AlterField(  # a default, so that migrating back can re-add the column to existing rows
            model_name='usagemonthly',
            name='latency_p95_ms',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.RemoveField(
            model_name='usagedaily',
            name='latency_p50_ms',
        ),
        migrations.RemoveField(
            model_name='usagedaily',
            name='latency_p95_ms',
        ),
        migrations.RemoveField(
            model_name='usagehourly',
            name='latency_p50_ms',
        ),
        migrations.RemoveField(
            model_name='usagehourly',
            name='latency_p95_ms',
        ),
        migrations.RemoveField(
            model_name='usagemonthly',
            name='latency_p50_ms',
        ),
        migrations.RemoveField(
            model_name='usagemonthly',
            name='latency_p95_ms',
        ),
        migrations.AddField(
            model_name='usagedaily',
            name='latency_histogram',
            field=usage.latency.LatencyHistogramField(),
        ),
        migrations.AddField(
            model_name='usagehourly',
            name='latency_histogram',
            field=usage.latency.LatencyHistogramField(),
        ),
        migrations.AddField(
            model_name='usagemonthly',
            name='latency_histogram',
            field=usage.latency.LatencyHistogramField(),
        ),
        migrations.AddField(
            model_name='usagedaily',
            name='latency_max_ms',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='usagehourly',
            name='latency_max_ms',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='usagemonthly',
            name='latency_max_ms',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.RunPython(recompute_everything, recompute_everything),
    ]
