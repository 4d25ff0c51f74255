"""Append-only tables in PostgreSQL: a trigger that refuses UPDATE and DELETE of a table's rows,
except where the rule it is given lets a row through. Used by migrations (the audit log, the usage
events), so what it generates must never change for a table already migrated: a new rule is a new
migration. SQLite, the single-user embedded default, gets no trigger.
"""

from __future__ import annotations

from django.db import migrations


def _on_postgresql(sql: str):
    def apply(apps, schema_editor) -> None:
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql, params=None)

    return apply


def append_only_sql(*, table: str, function: str, rule: str) -> tuple[str, str]:
    """(create, drop) SQL for trigger `<table>_append_only`, which runs `function`: `rule` (PL/pgSQL)
    returns the row to let it through, and the function raises after it otherwise."""
    trigger = f"{table}_append_only"
    create = f"""
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger AS $$
BEGIN
{rule.strip(chr(10))}
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS {trigger} ON {table};
CREATE TRIGGER {trigger}
    BEFORE UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {function}();
"""
    drop = f"""
DROP TRIGGER IF EXISTS {trigger} ON {table};
DROP FUNCTION IF EXISTS {function}();
"""
    return create, drop


def append_only(*, table: str, function: str, rule: str) -> migrations.RunPython:
    """The migration operation that makes `table` append-only (and, reversed, lifts it again)."""
    create, drop = append_only_sql(table=table, function=function, rule=rule)
    return migrations.RunPython(_on_postgresql(create), _on_postgresql(drop))
