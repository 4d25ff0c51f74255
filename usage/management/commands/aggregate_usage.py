from __future__ import annotations

import argparse
from datetime import date

from django.core.management.base import BaseCommand, CommandError

from console.models import Workspace
from usage.services import usage_backfill


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date; use YYYY-MM-DD") from None


class Command(BaseCommand):
    help = (
        "Recompute usage rollups from the usage events, synchronously (backfill or repair). "
        "Safe to rerun: each day's rows are replaced, never added to."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--since", type=_day, help="First day to recompute (YYYY-MM-DD, in each workspace's time zone). Default: all history."
        )
        parser.add_argument("--workspace", metavar="SLUG", help="Only this workspace. Default: all.")

    def handle(self, *args, since: date | None, workspace: str | None, **options):
        target = None
        if workspace:
            target = Workspace.objects.filter(slug=workspace).first()
            if target is None:
                raise CommandError(f"No workspace with slug {workspace!r}.")
        report = usage_backfill(since=since, workspace=target)
        scope = f"workspace {target.slug}" if target else "all workspaces"
        start = since.isoformat() if since else "the first event"
        self.stdout.write(
            f"Rolled up {scope} from {start}: {report.day_buckets} day bucket(s) and {report.hour_buckets} hour bucket(s) "
            f"recomputed, {report.rows_written} rollup row(s) written."
        )
