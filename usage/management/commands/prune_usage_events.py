from __future__ import annotations

import argparse
from datetime import date

from django.core.management.base import BaseCommand, CommandError

from console.audit import Actor
from usage.services import RetentionRefused, usage_events_prune


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date; use YYYY-MM-DD") from None


class Command(BaseCommand):
    help = (
        "Retention: delete usage events of days before --before (in each workspace's time zone). "
        "Usage events are otherwise append-only (a PostgreSQL trigger refuses UPDATE and DELETE); "
        "the daily and monthly rollups of those days, which the bills are read from, are kept. "
        "Only days before the current year can be pruned (this year's events count towards yearly limits)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--before", type=_day, required=True, help="First day to keep (YYYY-MM-DD).")
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")

    def handle(self, *args, before: date, dry_run: bool, **options):
        try:
            deleted = usage_events_prune(before=before, actor=Actor.system("prune_usage_events"), dry_run=dry_run)
        except RetentionRefused as exc:
            raise CommandError(str(exc)) from None
        verb = "Would delete" if dry_run else "Deleted"
        for slug, count in deleted.items():
            self.stdout.write(f"{verb} {count} usage event(s) of workspace {slug}")
        self.stdout.write(f"{verb} {sum(deleted.values())} usage event(s) before {before.isoformat()}.")
