from __future__ import annotations

import secrets

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from console.audit import Actor
from console.models import Membership, Role, User, Workspace
from console.services import membership_add, workspace_create

DEMO_ADMIN = "admin"
DEMO_MODEL_ID = "@acme/gatehouse-demo"
DEMO_EMBEDDING_ID = "@acme/gatehouse-demo-embed"


class Command(BaseCommand):
    help = "Create demo data for the embedded default: an admin, a default workspace and a sub-workspace. Safe to rerun."

    def add_arguments(self, parser):
        parser.add_argument("--password", help="Admin password (default: a new random one each time the admin is created).")

    @transaction.atomic
    def handle(self, *args, password, **options):
        actor = Actor.system("manage.py seed_demo")
        admin = User.objects.filter(username=DEMO_ADMIN).first()
        created_password = None
        if admin is None:
            created_password = password or secrets.token_urlsafe(9)
            admin = User.objects.create_superuser(DEMO_ADMIN, "admin@example.com", created_password)
        elif password:
            admin.set_password(password)
            admin.save(update_fields=["password"])
            created_password = password

        default = Workspace.objects.filter(slug="acme").first() or workspace_create(name="Acme", slug="acme", time_zone="UTC", actor=actor)
        if not Membership.objects.filter(workspace=default, user=admin).exists():
            membership_add(workspace=default, user=admin, role=Role.OWNER, actor=actor)
        if not Workspace.objects.filter(slug="acme-research").exists():
            workspace_create(name="Research", slug="acme-research", parent=default, time_zone="Europe/Berlin", actor=actor)

        demo = self._demo_deployment(default, actor)
        embed = self._demo_deployment(
            default,
            actor,
            model_id=DEMO_EMBEDDING_ID,
            name="Embedding demo",
            kind="embedding",
            description="The demo model's deterministic embeddings (16 dimensions), for /v1/embeddings.",
            prices=("0.10", "0"),
        )
        self.stdout.write("Demo data ready: workspace 'acme' with sub-workspace 'acme-research'.")
        self.stdout.write(f"Demo model deployment '{demo.model_id}' -> {demo.upstream_base_url} (the `demo:` process).")
        self.stdout.write(f"Demo embedding deployment '{embed.model_id}' -> {embed.upstream_base_url}.")
        # The embedded default is a single-user local demo: the first password is kept in a
        # 0600 file under var/ so `make run` can print the login again on every start.
        password_file = settings.VAR_DIR / "demo-admin-password"
        if created_password:
            settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
            password_file.touch(mode=0o600)
            password_file.write_text(created_password)
        if password_file.exists():
            self.stdout.write(f"Sign in as {DEMO_ADMIN} with password: {password_file.read_text().strip()}")
            self.stdout.write("(If you changed it since, use yours; `manage.py seed_demo --password NEW` resets it.)")
        else:
            self.stdout.write(f"User {DEMO_ADMIN} already existed; its password is unchanged (rerun with --password to set one).")

    def _demo_deployment(
        self,
        workspace: Workspace,
        actor: Actor,
        *,
        model_id: str = DEMO_MODEL_ID,
        name: str = "Demo model",
        kind: str = "chat",
        description: str = "Gatehouse's built-in demo model: deterministic answers, honest token counts.",
        prices: tuple[str, str] = ("2.50", "10.00"),
    ):
        """A deployment behind the demo model server (Procfile `demo:` on DEMO_MODEL_PORT), so the
        gateway can be called right after `make run`. Kept pointing at the current port."""
        from deployments.models import Deployment
        from deployments.services import deployment_create, deployment_update

        base_url = f"http://127.0.0.1:{settings.DEMO_MODEL_PORT}/v1"
        existing = Deployment.objects.filter(workspace=workspace, model_id=model_id).first()
        if existing is None:
            return deployment_create(
                workspace=workspace,
                actor=actor,
                name=name,
                model_id=model_id,
                kind=kind,
                upstream_base_url=base_url,
                upstream_model="gatehouse-demo",
                description=description,
                input_per_million=prices[0],
                output_per_million=prices[1],
            )
        if existing.upstream_base_url != base_url:
            return deployment_update(
                deployment=existing,
                actor=actor,
                name=existing.name,
                model_id=existing.model_id,
                description=existing.description,
                upstream_base_url=base_url,
                upstream_model=existing.upstream_model,
                timeout_seconds=existing.timeout_seconds,
            )
        return existing
