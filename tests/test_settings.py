from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from lib import env

ROOT = Path(__file__).resolve().parent.parent

PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "console.settings",
    "DEBUG": "0",
    "SECRET_KEY": "k" * 20 + "-production-secret-key-with-enough-entropy-1234567890",
    "API_KEY_PEPPER": "p" * 40,
    "ALLOWED_HOSTS": "gatehouse.example.com",
    "DATABASE_URL": "postgres://postgres@localhost:5432/gatehouse",
    "PATH": os.environ["PATH"],
}


def run_manage(*args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**PRODUCTION_ENV, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_settings_pass_check_deploy():
    result = run_manage("check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_would_catch_insecure_settings():
    # The same command fails when HTTPS hardening is switched off, so the test above can fail.
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", extra_env={"GATEHOUSE_HTTPS": "0"})
    assert result.returncode != 0
    assert "SECURE_SSL_REDIRECT" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"SECRET_KEY": ""}, "SECRET_KEY"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY must be at least 50"),
        ({"API_KEY_PEPPER": ""}, "API_KEY_PEPPER"),
        ({"ALLOWED_HOSTS": "*"}, "ALLOWED_HOSTS"),
        ({"DEBUG": "maybe"}, "DEBUG must be a boolean"),
        ({"DATABASE_URL": "nosuchdb://x"}, "DATABASE_URL"),
        ({"DB_CONN_MAX_AGE": "ten"}, "DB_CONN_MAX_AGE must be an integer"),
    ],
)
def test_bad_configuration_fails_loudly(override, message):
    result = run_manage("check", extra_env=override)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr
    # A secret's value never appears in the error.
    assert PRODUCTION_ENV["SECRET_KEY"] not in result.stderr


def test_secret_from_file(tmp_path, monkeypatch):
    secret_file = tmp_path / "secret"
    secret_file.write_text("s" * 60 + "\n")
    monkeypatch.setenv("SOME_SECRET_FILE", str(secret_file))
    assert env.env_secret("SOME_SECRET", min_length=50) == "s" * 60
    monkeypatch.setenv("SOME_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="cannot be read"):
        env.env_secret("SOME_SECRET")


def test_env_int_minimum(monkeypatch):
    monkeypatch.setenv("N", "-1")
    with pytest.raises(ImproperlyConfigured, match="at least 0"):
        env.env_int("N", 5, minimum=0)
    monkeypatch.setenv("N", "7")
    assert env.env_int("N", 5, minimum=0) == 7


def test_oidc_settings_configure_the_provider_and_allow_its_origin_in_form_action():
    code = (
        "from django.conf import settings; app = settings.SOCIALACCOUNT_PROVIDERS['openid_connect']['APPS'][0]; "
        "print(app['provider_id'], app['settings']['server_url'], settings.SECURE_CSP['form-action'])"
    )
    result = run_manage(
        "shell",
        "-c",
        code,
        extra_env={"OIDC_ISSUER_URL": "https://idp.example.com/realms/acme", "OIDC_CLIENT_ID": "gatehouse", "OIDC_CLIENT_SECRET": "s" * 20},
    )
    assert result.returncode == 0, result.stderr
    assert "sso https://idp.example.com/realms/acme" in result.stdout
    assert "'https://idp.example.com'" in result.stdout
    # Without SSO, forms may only post to the console itself.
    plain = run_manage("shell", "-c", "from django.conf import settings; print(settings.SECURE_CSP['form-action'])")
    assert "idp.example.com" not in plain.stdout and "self" in plain.stdout


def test_production_settings_with_smtp_pass_check_deploy():
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", extra_env={"EMAIL_HOST": "smtp.example.com"})
    assert result.returncode == 0, result.stdout + result.stderr
