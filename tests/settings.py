"""Test settings: console.settings with the environment a test run needs.

Real PostgreSQL and Redis (the ones on localhost unless DATABASE_URL / REDIS_URL say otherwise).
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@localhost:5432/gatehouse")
os.environ.setdefault("REDIS_URL", "redis://localhost:6379/0")
os.environ.setdefault("SECRET_KEY", "test-secret-key-" + "x" * 50)
os.environ.setdefault("API_KEY_PEPPER", "test-pepper-" + "y" * 32)
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
os.environ.setdefault("GATEHOUSE_HTTPS", "0")
os.environ.setdefault("DEBUG", "0")
# Production's upstream policy plus this machine's loopback, where every test upstream listens
# (tests of the policy itself pass their own). Nothing in the suite connects anywhere else.
os.environ.setdefault("UPSTREAM_ALLOWED_NETWORKS", "public,private,127.0.0.1/32,::1/128")
os.environ.setdefault("GATEHOUSE_VAR_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), "var", "test"))
# Playwright's sync API runs an event loop in the test thread; the ORM calls made by the test
# itself (not by the server under test) are safe there.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
# Gateways started by tests (they inherit this environment) commit a request's usage event before
# answering, so a test can read the event right after the answer; production commits it just
# after (console/settings.py). tests/test_gateway_timing.py runs a gateway in production's mode.
os.environ.setdefault("GATEWAY_USAGE_COMMIT_BEFORE_ANSWER", "1")

from console.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only; production keeps PBKDF2
STORAGES["staticfiles"]["BACKEND"] = "django.contrib.staticfiles.storage.StaticFilesStorage"  # noqa: F405
WHITENOISE_USE_FINDERS = True
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405

# Mail is captured by Django's test runner (mail.outbox); tests that need a real SMTP server start one.
MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}
EMAIL_ENABLED = True

# The suite signs in from 127.0.0.1 far more often than allauth's default 30 sign-ins a minute
# per address (every browser test starts with one), and the limiter's counts live in the shared
# Redis cache across tests: a run that went faster than usual was throttled at random. Failed
# sign-ins keep production's lockout (console/settings.py); the tests of it set their own.
ACCOUNT_RATE_LIMITS = {**ACCOUNT_RATE_LIMITS, "login": "100000/m/ip"}  # noqa: F405
