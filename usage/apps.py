from django.apps import AppConfig
from django.db.backends.signals import connection_created

from usage.aggregates import register_sqlite_functions


class UsageConfig(AppConfig):
    name = "usage"

    def ready(self) -> None:
        # Plumbing, not business logic: SQLite lacks functions the rollups use (usage.aggregates).
        connection_created.connect(register_sqlite_functions, dispatch_uid="usage_sqlite_functions")
