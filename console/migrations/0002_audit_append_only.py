"""Make the audit log append-only in the database itself (PostgreSQL; SQLite, the single-user
embedded default, relies on the application and the read-only admin).

The trigger refuses UPDATE and DELETE of audit rows, whoever sends them (the admin, a shell, a
compromised web process). Two exceptions keep ordinary operations working:
- deleting a user sets actor_id to NULL (on_delete=SET_NULL); an UPDATE that changes nothing but
  actor_id to NULL is let through, and actor_label still names who it was;
- a transaction that has run `SET LOCAL gatehouse.audit_erasure = 'on'` (console.audit.audit_erasure,
  for a deliberate, audited erasure such as deleting a workspace) may delete rows.
TRUNCATE is not covered: it needs table ownership, which the application role should not have.
"""

from django.db import migrations

from lib.append_only import append_only

RULE = """
    IF current_setting('gatehouse.audit_erasure', true) = 'on' THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.actor_id IS NULL AND (to_jsonb(NEW) - 'actor_id') = (to_jsonb(OLD) - 'actor_id') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit events are append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
"""


class Migration(migrations.Migration):
    dependencies = [("console", "0001_initial")]

    operations = [append_only(table="console_auditevent", function="gatehouse_audit_append_only", rule=RULE)]
