"""Rollup rows keep their slowest request's latency (a p95 read from the histogram is clamped to
it). Existing rows get 0, so every bucket is marked dirty and recomputed by the next pass."""

from django.db import migrations, models
from django.utils import timezone


def recompute_everything(apps, schema_editor):
    now = timezone.now()
    for name in ("UsageDayBucket", "UsageHourBucket"):
        apps.get_model("usage", name).objects.update(dirty=True, marked_at=now)


class Migration(migrations.Migration):

    dependencies = [
        ('usage', '0009_latency_histograms'),
    ]

    operations = [
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
        migrations.RunPython(recompute_everything, migrations.RunPython.noop),
    ]
