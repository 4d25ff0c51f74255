from __future__ import annotations

import datetime as dt

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from console.audit import Actor
from console.models import Workspace
from deployments.selectors import callable_deployments
from keys.names import NAME_HELP
from keys.selectors import scope_summary
from keys.services import api_key_create


def _errors(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{'' if field == '__all__' else field + ': '}{' '.join(msgs)}" for field, msgs in exc.message_dict.items())
    return "; ".join(exc.messages)


class Command(BaseCommand):
    help = "Create an application access key. Prints what it made, then the key alone on the last line (shown only this once)."

    def add_arguments(self, parser):
        parser.add_argument("--workspace", required=True, metavar="SLUG")
        parser.add_argument("--name", required=True, help=NAME_HELP)
        parser.add_argument("--description", default="")
        scope = parser.add_mutually_exclusive_group(required=True)
        scope.add_argument("--deployment", action="append", default=[], metavar="MODEL_ID", help="Repeat for several deployments.")
        scope.add_argument("--all-models", action="store_true", help="Every model the workspace may call, now and later.")
        parser.add_argument("--tpm", type=int, metavar="N", help="Tokens per minute.")
        parser.add_argument("--yearly-tokens", type=int, metavar="N", help="Tokens per calendar year (workspace time zone).")
        parser.add_argument(
            "--ip", action="append", default=[], metavar="CIDR", help="Allowed address or CIDR; repeat, or separate with commas."
        )
        parser.add_argument(
            "--expires", metavar="ISO8601", help="e.g. 2027-12-31T23:59:00+00:00; without an offset, the workspace's time zone."
        )

    def handle(self, *args, workspace, name, description, deployment, all_models, tpm, yearly_tokens, ip, expires, **options):
        ws = Workspace.objects.filter(slug=workspace).first()
        if ws is None:
            raise CommandError(f"No workspace with slug {workspace!r}.")
        deployments = []
        callable_ = callable_deployments(ws)
        for model_id in deployment:
            found = callable_.filter(model_id=model_id).first()
            if found is None:
                raise CommandError(f"{ws.slug} may not call a deployment with model id {model_id!r} (or it does not exist).")
            deployments.append(found)
        expires_at = None
        if expires:
            try:
                expires_at = dt.datetime.fromisoformat(expires)
            except ValueError:
                raise CommandError(f"--expires {expires!r} is not an ISO 8601 date-time (e.g. 2027-12-31T23:59:00+00:00).") from None
            if expires_at.tzinfo is None:
                expires_at = expires_at.replace(tzinfo=ws.tz)
        try:
            api_key, key = api_key_create(
                workspace=ws,
                actor=Actor.system("manage.py create_api_key"),
                name=name,
                description=description,
                all_models=all_models,
                deployments=deployments,
                tpm_limit=tpm,
                yearly_token_limit=yearly_tokens,
                ip_allowlist=",".join(ip),
                expires_at=expires_at,
            )
        except ValidationError as exc:
            raise CommandError(_errors(exc)) from None
        self.stdout.write(f"Created API key {api_key.name!r} in workspace {ws.slug} ({api_key.hint})")
        self.stdout.write(f"  scope: {', '.join(scope_summary(api_key))}")
        self.stdout.write(f"  TPM: {api_key.tpm_limit or 'no limit'}; yearly tokens: {api_key.yearly_token_limit or 'no limit'}")
        self.stdout.write(f"  IP allowlist: {', '.join(api_key.ip_allowlist) or 'any address'}")
        self.stdout.write(f"  expires: {api_key.expires_at.isoformat() if api_key.expires_at else 'never'}")
        self.stdout.write("Store the key now; it is not shown again:")
        self.stdout.write(key)
