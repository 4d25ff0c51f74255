"""Router providers are granted to workspaces and priced.

Until now any key could scope any active provider. So that nothing that works today breaks, each
provider is granted to every workspace whose keys already scope it, and to every workspace whose
deployments route through it. Providers get no price here: their calls stay at cost 0 until an
installation admin sets one (the console says so on the provider's page).
"""

import django.db.models.deletion
from decimal import Decimal
from django.conf import settings
from django.db import migrations, models


def grant_existing_scopes(apps, schema_editor) -> None:
    ApiKey = apps.get_model("keys", "ApiKey")
    Deployment = apps.get_model("deployments", "Deployment")
    Grant = apps.get_model("keys", "RouterProviderGrant")
    pairs = set(
        ApiKey.router_providers.through.objects.values_list("routerprovider_id", "apikey__workspace_id")
    )
    pairs |= set(
        Deployment.objects.filter(upstream_kind="router", router_provider__isnull=False).values_list("router_provider_id", "workspace_id")
    )
    Grant.objects.bulk_create(
        [Grant(provider_id=provider_id, workspace_id=workspace_id) for provider_id, workspace_id in sorted(pairs)],
        ignore_conflicts=True,
    )


class Migration(migrations.Migration):

    dependencies = [
        ('console', '0002_audit_append_only'),
        ('keys', '0002_key_name_rules_and_limits'),
        ('deployments', '0002_initial'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='RouterProviderGrant',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('granted_by', models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('provider', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='grants', to='keys.routerprovider')),
                ('workspace', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='router_provider_grants', to='console.workspace')),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('provider', 'workspace'), name='router_grant_unique')],
            },
        ),
        migrations.CreateModel(
            name='RouterProviderPrice',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('model_name', models.CharField(blank=True, max_length=200)),
                ('effective_from', models.DateTimeField()),
                ('input_per_million', models.DecimalField(decimal_places=6, default=Decimal('0'), max_digits=12)),
                ('output_per_million', models.DecimalField(decimal_places=6, default=Decimal('0'), max_digits=12)),
                ('currency', models.CharField(default='USD', max_length=3)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('created_by', models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('provider', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='prices', to='keys.routerprovider')),
            ],
            options={
                'ordering': ['model_name', '-effective_from'],
                'constraints': [models.UniqueConstraint(fields=('provider', 'model_name', 'effective_from'), name='router_price_unique_version')],
            },
        ),
        migrations.RunPython(grant_existing_scopes, migrations.RunPython.noop),
    ]
