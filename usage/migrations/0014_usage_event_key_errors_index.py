"""A partial index on a key's error events, so its page reads "Last refused" with one index probe.

Built CONCURRENTLY on PostgreSQL: a plain CREATE INDEX would block the gateways' usage inserts
for as long as it reads the events table. Only rows with status >= 400 are indexed, so answered
requests do not pay for it.
"""

from django.db import migrations, models
from django.db.migrations.operations import AddIndex


class AddIndexConcurrentlyWherePossible(AddIndex):
    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.add_index(model, self.index, concurrently=True)
        else:
            schema_editor.add_index(model, self.index)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        model = from_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.remove_index(model, self.index, concurrently=True)
        else:
            schema_editor.remove_index(model, self.index)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("usage", "0013_error_rollups")]

    operations = [
        AddIndexConcurrentlyWherePossible(
            model_name="usageevent",
            index=models.Index(
                condition=models.Q(("status_code__gte", 400)), fields=["api_key", "-created_at"], name="usage_event_key_errors"
            ),
        ),
    ]
