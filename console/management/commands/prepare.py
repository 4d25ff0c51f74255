"""`python manage.py prepare`: what a web process needs before it serves, safe from many replicas.

Runs `collectstatic` (WhiteNoise's compressed, hashed files and their manifest) unless
GATEHOUSE_COLLECTSTATIC=0 (the container image builds them at image-build time), then `migrate`.
Several replicas may start at once: migrations run under a PostgreSQL advisory lock (a file lock
on SQLite), so one replica migrates while the others wait and then find nothing left to do;
collectstatic runs under a file lock beside STATIC_ROOT.
"""

from __future__ import annotations

import fcntl
import time
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from lib.env import env_bool

# pg_advisory_lock's key: any 64-bit number no other application on the database uses.
MIGRATE_LOCK_ID = 7022349218198418277  # b"gatehouse" as a number, truncated to 63 bits


class Command(BaseCommand):
    help = "Collect static files and apply migrations, safely when several replicas start at once."

    def add_arguments(self, parser):
        parser.add_argument("--lock-timeout", type=float, default=600.0, help="seconds to wait for another replica's migrations")

    def handle(self, *args, lock_timeout: float, verbosity: int, **options):
        if env_bool("GATEHOUSE_COLLECTSTATIC", True):
            static_root = Path(settings.STATIC_ROOT)
            static_root.parent.mkdir(parents=True, exist_ok=True)
            with _file_lock(static_root.parent / f".{static_root.name}.lock", lock_timeout, self):
                call_command("collectstatic", interactive=False, verbosity=0)
            self.stdout.write(f"Static files collected into {static_root}.")
        with self._migration_lock(lock_timeout):
            call_command("migrate", interactive=False, verbosity=max(0, verbosity - 1))
        self.stdout.write("Database migrated.")

    @contextmanager
    def _migration_lock(self, timeout: float):
        if connection.vendor != "postgresql":
            Path(settings.VAR_DIR).mkdir(parents=True, exist_ok=True)
            with _file_lock(Path(settings.VAR_DIR) / ".migrate.lock", timeout, self):
                yield
            return
        # A session-level lock on the same connection migrate uses; released below, or by
        # PostgreSQL itself if this process dies while holding it.
        deadline = time.monotonic() + timeout
        said = False
        with connection.cursor() as cursor:
            while True:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [MIGRATE_LOCK_ID])
                if cursor.fetchone()[0]:
                    break
                if not said:
                    self.stdout.write("Another replica is migrating; waiting for it.")
                    said = True
                if time.monotonic() > deadline:
                    raise CommandError(f"Another replica held the migration lock for over {timeout:.0f} s.")
                time.sleep(0.5)
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [MIGRATE_LOCK_ID])


@contextmanager
def _file_lock(path: Path, timeout: float, command: BaseCommand):
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout
        said = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said:
                    command.stdout.write(f"Waiting for another process holding {path}.")
                    said = True
                if time.monotonic() > deadline:
                    raise CommandError(f"{path} stayed locked for over {timeout:.0f} s.") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
