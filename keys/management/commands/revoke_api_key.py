from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from console.audit import Actor
from console.models import Workspace
from keys.selectors import visible_api_keys
from keys.services import api_key_revoke


class Command(BaseCommand):
    help = "Revoke an application access key at once. Revoking an already revoked key changes nothing."

    def add_arguments(self, parser):
        parser.add_argument("--workspace", required=True, metavar="SLUG")
        parser.add_argument("--name", required=True)

    def handle(self, *args, workspace, name, **options):
        ws = Workspace.objects.filter(slug=workspace).first()
        if ws is None:
            raise CommandError(f"No workspace with slug {workspace!r}.")
        api_key = visible_api_keys(ws).filter(name__iexact=name).first()
        if api_key is None:
            raise CommandError(f"No API key named {name!r} in {ws.slug}.")
        if api_key.revoked_at is not None:
            self.stdout.write(
                f"API key {api_key.name!r} in {ws.slug} ({api_key.hint}) was already revoked at {api_key.revoked_at.isoformat()}."
            )
            return
        api_key_revoke(api_key=api_key, actor=Actor.system("manage.py revoke_api_key"))
        self.stdout.write(f"Revoked API key {api_key.name!r} in {ws.slug} ({api_key.hint}).")
