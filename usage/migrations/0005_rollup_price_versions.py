"""Rollup rows carry the price version their events were costed with.

Rows written before this have price 0; every bucket is marked dirty so the next aggregation
run recomputes them from the events (the same replace-not-increment path as always).
"""

from decimal import Decimal

from django.db import migrations, models


def mark_all_buckets_dirty(apps, schema_editor):
    for name in ("UsageDayBucket", "UsageHourBucket"):
        apps.get_model("usage", name).objects.filter(dirty=False).update(dirty=True)


class Migration(migrations.Migration):

    dependencies = [
        ('usage', '0004_rollup_time_zone'),
    ]

    operations = [
        migrations.AddField(
            model_name='usagedaily',
            name='input_price_per_million',
            field=models.DecimalField(decimal_places=6, default=Decimal('0'), max_digits=12),
        ),
        migrations.AddField(
            model_name='usagedaily',
            name='output_price_per_million',
            field=models.DecimalField(decimal_places=6, default=Decimal('0'), max_digits=12),
        ),
        migrations.AddField(
            model_name='usagehourly',
            name='input_price_per_million',
            field=models.DecimalField(decimal_places=6, default=Decimal('0'), max_digits=12),
        ),
        migrations.AddField(
            model_name='usagehourly',
            name='output_price_per_million',
            field=models.DecimalField(decimal_places=6, default=Decimal('0'), max_digits=12),
        ),
        migrations.RunPython(mark_all_buckets_dirty, migrations.RunPython.noop),
    ]
