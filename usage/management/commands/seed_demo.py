from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from usage.demo import DEMO_ADMIN, demo_world_seed


class Command(BaseCommand):
    help = "Create demo data for the embedded default: an admin, a default workspace and a sub-workspace. Safe to rerun."

    def add_arguments(self, parser):
        parser.add_argument("--password", help="Admin password (default: a new random one each time the admin is created).")

    def handle(self, *args, password, **options):
        world = demo_world_seed(password=password)
        self.stdout.write("Demo data ready: workspace 'acme' with sub-workspace 'acme-research'.")
        self.stdout.write(f"Demo model deployment '{world.chat.model_id}' -> {world.chat.upstream_base_url} (the `demo:` process).")
        self.stdout.write(f"Demo embedding deployment '{world.embedding.model_id}' -> {world.embedding.upstream_base_url}.")
        # The embedded default is a single-user local demo: the first password is kept in a
        # 0600 file under var/ so `make run` can print the login again on every start.
        password_file = settings.VAR_DIR / "demo-admin-password"
        if world.password:
            settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
            password_file.touch(mode=0o600)
            password_file.write_text(world.password)
        if password_file.exists():
            self.stdout.write(f"Sign in as {DEMO_ADMIN} with password: {password_file.read_text().strip()}")
            self.stdout.write("(If you changed it since, use yours; `manage.py seed_demo --password NEW` resets it.)")
        else:
            self.stdout.write(f"User {DEMO_ADMIN} already existed; its password is unchanged (rerun with --password to set one).")
