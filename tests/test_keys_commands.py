"""Operator commands: create_api_key prints the key alone on the last line; revoke_api_key revokes by name."""

from __future__ import annotations

import datetime as dt
import io
import os
import shlex
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

from console.models import AuditEvent
from keys import tokens
from keys.models import ApiKey
from keys.selectors import api_key_secret_for_presented
from tests.keys_helpers import make_key, make_scope


def run(*args) -> list[str]:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().splitlines()


def test_create_api_key_with_every_option(world):
    scope = make_scope(world)
    lines = run(
        "create_api_key",
        "--workspace",
        "acme",
        "--name",
        "ops-key",
        "--deployment",
        scope.qwen.model_id,
        "--deployment",
        scope.llama.model_id,
        "--tpm",
        "60000",
        "--yearly-tokens",
        "10000000",
        "--ip",
        "10.0.0.1/32",
        "--ip",
        "192.168.0.0/16,2001:db8::/32",
        "--expires",
        "2099-01-31T12:00:00",
    )
    key = lines[-1]
    assert tokens.is_well_formed(key) and key not in "\n".join(lines[:-1])
    api_key = api_key_secret_for_presented(key).api_key
    assert api_key.name == "ops-key" and api_key.workspace == world.org
    assert {d.model_id for d in api_key.deployments.all()} == {scope.qwen.model_id, scope.llama.model_id}
    assert (api_key.tpm_limit, api_key.yearly_token_limit) == (60000, 10_000_000)
    assert api_key.ip_allowlist == ["10.0.0.1/32", "192.168.0.0/16", "2001:db8::/32"]
    assert api_key.expires_at == dt.datetime(2099, 1, 31, 12, tzinfo=dt.UTC)  # acme's time zone is UTC
    assert api_key.created_by_label == "manage.py create_api_key"
    assert "Created API key 'ops-key' in workspace acme" in lines[0]
    assert AuditEvent.objects.get(action="api_key.created").actor_label == "manage.py create_api_key"


@pytest.mark.django_db(transaction=True)
def test_create_api_key_in_a_real_process_piped_to_tail(world):
    """The documented idiom, in a real shell: KEY=$(manage.py create_api_key ... | tail -n1)."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}",
    }
    command = f"{shlex.quote(sys.executable)} manage.py create_api_key --workspace acme --name piped --all-models | tail -n1"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], cwd=settings.BASE_DIR, capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert tokens.is_well_formed(key)
    assert api_key_secret_for_presented(key).api_key.name == "piped"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workspace", "nope", "--name", "x", "--all-models"], "No workspace with slug 'nope'."),
        (["--workspace", "acme", "--name", "bad name", "--all-models"], "name: The name may not contain a space."),
        (
            ["--workspace", "acme", "--name", "x", "--deployment", "@globex/model"],
            "acme may not call a deployment with model id '@globex/model'",
        ),
        (["--workspace", "acme", "--name", "x", "--all-models", "--ip", "10.0.0.1/8"], "ip_allowlist: “10.0.0.1/8” has host bits set"),
        (["--workspace", "acme", "--name", "x", "--all-models", "--tpm", "0"], "tpm_limit: TPM must be a whole number"),
        (["--workspace", "acme", "--name", "x", "--all-models", "--expires", "tomorrow"], "is not an ISO 8601 date-time"),
        (
            ["--workspace", "acme", "--name", "x", "--all-models", "--expires", "2001-01-01T00:00:00+00:00"],
            "The expiry must be in the future.",
        ),
    ],
)
def test_create_api_key_refuses_bad_input(world, args, message):
    make_scope(world)
    with pytest.raises(CommandError) as exc:
        run("create_api_key", *args)
    assert message in str(exc.value)
    assert not ApiKey.objects.exists()


def test_create_api_key_needs_a_scope(world):
    with pytest.raises(CommandError, match="one of the arguments --deployment --all-models is required"):
        run("create_api_key", "--workspace", "acme", "--name", "x")


def test_revoke_api_key(world):
    api_key, key = make_key(world.org, name="old-job")
    lines = run("revoke_api_key", "--workspace", "acme", "--name", "old-job")
    assert lines == [f"Revoked API key 'old-job' in acme ({api_key.hint})."]
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    again = run("revoke_api_key", "--workspace", "acme", "--name", "old-job")
    assert "was already revoked" in again[0]
    assert AuditEvent.objects.filter(action="api_key.revoked").count() == 1
    with pytest.raises(CommandError, match="No API key named 'missing' in acme."):
        run("revoke_api_key", "--workspace", "acme", "--name", "missing")
    with pytest.raises(CommandError, match="No API key named 'old-job' in globex."):
        run("revoke_api_key", "--workspace", "globex", "--name", "old-job")  # names are per workspace
