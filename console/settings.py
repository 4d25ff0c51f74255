"""Gatehouse settings: one module, driven by the environment (see README "Configuration")."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

from lib.env import env_bool, env_int, env_list, env_secret, env_str
from lib.net import parse_networks
from lib.upstream import default_allowed_networks, parse_network_policy

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("GATEHOUSE_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)

# Development gets fixed, obviously-fake secrets so `make run` works on a fresh machine;
# anything else must be given real ones.
_DEV_SECRET = "dev-only-insecure-secret-key-do-not-use-in-production-0123456789"
SECRET_KEY = env_secret("SECRET_KEY", _DEV_SECRET if DEBUG else None, min_length=50)
if SECRET_KEY is None:
    raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) must be set when DEBUG is off")
API_KEY_PEPPER = env_secret("API_KEY_PEPPER", "dev-only-insecure-pepper-0123456789abcdef" if DEBUG else None, min_length=32)
if API_KEY_PEPPER is None:
    raise ImproperlyConfigured("API_KEY_PEPPER (or API_KEY_PEPPER_FILE) must be set when DEBUG is off")
# Encrypts upstream and BYOK provider keys at rest. Falls back to a key derived from
# SECRET_KEY so small installs need one secret fewer; set it to rotate independently.
ENCRYPTION_KEY = env_secret("ENCRYPTION_KEY", None, min_length=32)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
if not DEBUG and (not ALLOWED_HOSTS or "*" in ALLOWED_HOSTS):
    raise ImproperlyConfigured("ALLOWED_HOSTS must list this site's host names when DEBUG is off ('*' is refused)")
PUBLIC_BASE_URL = (env_str("PUBLIC_BASE_URL", "http://127.0.0.1:8000") or "").rstrip("/")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# Where the worker reaches the gateway for console test calls (defaults to PUBLIC_BASE_URL).
GATEWAY_INTERNAL_URL = (env_str("GATEWAY_INTERNAL_URL", "") or "").rstrip("/")
TRUSTED_PROXY_NETWORKS = parse_networks(env_list("TRUSTED_PROXIES", []))
# Where upstream calls (deployments, router providers, BYOK, health probes) may connect: lib.upstream.
UPSTREAM_ALLOWED_NETWORKS = tuple(env_list("UPSTREAM_ALLOWED_NETWORKS", default_allowed_networks(DEBUG)))
try:
    parse_network_policy(UPSTREAM_ALLOWED_NETWORKS)
except ValueError as exc:
    raise ImproperlyConfigured(f"UPSTREAM_ALLOWED_NETWORKS: {exc}") from None

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",  # allauth's passkey list
    "django_htmx",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "console",
    "keys",
    "deployments",
    "gateway",
    "usage",
    "adminapi",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "console.middleware.PasswordChangeRequiredMiddleware",
    "console.middleware.MfaEnrolmentRequiredMiddleware",
]

ROOT_URLCONF = "console.urls"
AUTH_USER_MODEL = "console.User"
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "account_login"
AUTHENTICATION_BACKENDS = ["allauth.account.auth_backends.AuthenticationBackend"]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.csp",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "console.context_processors.shell",
            ],
            "builtins": ["lib.dates"],  # |when and |day: the one date format of every page
        },
    },
]

WSGI_APPLICATION = "console.wsgi.application"
ASGI_APPLICATION = "console.asgi.application"

_database_url = env_str("DATABASE_URL")
if _database_url:
    try:
        DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=env_int("DB_CONN_MAX_AGE", 60, minimum=0))}
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL cannot be parsed: {exc}") from None
    # The password may come apart from the URL, e.g. from a secret file (compose.yaml).
    _database_password = env_secret("DATABASE_PASSWORD", None)
    if _database_password is not None:
        DATABASES["default"]["PASSWORD"] = _database_password
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # A database that drops packets must fail a connection attempt in seconds, not after the
        # kernel's TCP timeout (minutes): the gateway's key loads then fall back to cached keys.
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "gatehouse.sqlite3",
            # WAL lets the web server, worker and beat read while one of them writes. IMMEDIATE
            # transactions take the write lock up front (waiting up to `timeout`), instead of
            # failing with "database is locked" when a read transaction later needs to write.
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
            },
        }
    }

REDIS_URL = env_str("REDIS_URL")
CACHES = (
    {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    if REDIS_URL
    else {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
# The container image builds its static files (and WhiteNoise's manifest) at image-build time into
# a directory of its own, so a data volume mounted on VAR_DIR never hides them.
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Security. HTTPS is on unless DEBUG; GATEHOUSE_HTTPS=0 is for plain-HTTP test servers only.
_HTTPS = env_bool("GATEHOUSE_HTTPS", not DEBUG)
SECURE_SSL_REDIRECT = _HTTPS
SESSION_COOKIE_SECURE = _HTTPS
CSRF_COOKIE_SECURE = _HTTPS
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if _HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _HTTPS
SECURE_HSTS_PRELOAD = _HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY", False) else None
SECURE_REDIRECT_EXEMPT = [r"^(healthz|readyz)$"]
CSRF_FAILURE_VIEW = "console.views.csrf_failure"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
    "form-action": [CSP.SELF],
    "base-uri": [CSP.NONE],
    "object-src": [CSP.NONE],
}

# Celery: Redis when configured; otherwise a broker on the filesystem, so the embedded default
# needs no server at all.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or REDIS_URL or "filesystem://"
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {
        "data_folder_in": str(VAR_DIR / "broker"),
        "data_folder_out": str(VAR_DIR / "broker"),
        "processed_folder": str(VAR_DIR / "broker-processed"),
        "store_processed": False,
        # The broadcast (pidbox) exchange tables; kombu's default is ./control in the repo.
        "control_folder": str(VAR_DIR / "broker-control"),
        # kombu polls the folder once a second by default; test calls under `make run` start sooner.
        "polling_interval": 0.2,
    }
    if CELERY_BROKER_URL == "filesystem://"
    else {"visibility_timeout": 3600}
)
if CELERY_BROKER_URL == "filesystem://":
    for _folder in ("broker", "broker-processed", "broker-control"):
        (VAR_DIR / _folder).mkdir(parents=True, exist_ok=True)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Graceful stop (README "Production"): the entrypoint maps SIGTERM to Celery's cold shutdown
# (REMAP_SIGTERM=SIGQUIT), which first gives running tasks this many seconds to finish, then
# cancels the rest and puts their (late-acked) messages back on the queue for another worker.
# Keep it below the orchestrator's grace period (compose.yaml: stop_grace_period).
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = float(env_int("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", 20, minimum=0))

# Usage aggregation (usage/rollup.py). Buckets recomputed per transaction; how long an event id
# that is missing between committed ones is re-checked (a concurrent insert may still commit it);
# how far back hourly rollups are kept; how many days the frequent reconciliation covers.
USAGE_ROLLUP_BATCH_SIZE = env_int("USAGE_ROLLUP_BATCH_SIZE", 500, minimum=1)
USAGE_GAP_TTL_SECONDS = env_int("USAGE_GAP_TTL_SECONDS", 900, minimum=0)
USAGE_HOURLY_RETENTION_HOURS = env_int("USAGE_HOURLY_RETENTION_HOURS", 48, minimum=1)
USAGE_RECONCILE_DAYS = env_int("USAGE_RECONCILE_DAYS", 2, minimum=1)
# Test-only: sleep this long inside each rollup batch transaction, so a fault test can kill the
# worker while a bucket is half written. Always 0 in production.
USAGE_ROLLUP_TEST_PAUSE_MS = env_int("USAGE_ROLLUP_TEST_PAUSE_MS", 0, minimum=0)

# The console's own access log (console/asgi.py): method, path without the query string, status,
# time. uvicorn's access log is off in every start command because it prints full URLs.
CONSOLE_ACCESS_LOG = env_bool("CONSOLE_ACCESS_LOG", True)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "client_error_tracebacks": {"()": "console.logs.DropClientErrorTracebacks"},
        "redact_keys": {"()": "console.logs.RedactKeys"},
    },
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact_keys"]}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        # Django's default config gives the "django" logger a handler of its own under DEBUG; its
        # records also reach ours, so each warning (and traceback) was printed twice. Ours only.
        "django": {"handlers": [], "propagate": True},
        "django.db.backends": {"level": "WARNING"},
        # A 403 or 404 is a one-line warning, not a traceback (500s keep theirs).
        "django.request": {"filters": ["client_error_tracebacks"]},
        # httpx logs every upstream request at INFO; the gateway writes its own access log.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}

# Gateway (data plane, gateway/). See README "Gateway".
GATEWAY_MAX_BODY_BYTES = env_int("GATEWAY_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024)
# The completion cap sent upstream (and reserved) when a key with token limits, or a workspace
# with a blocking budget, sends a request without max_tokens.
GATEWAY_DEFAULT_MAX_TOKENS = env_int("GATEWAY_DEFAULT_MAX_TOKENS", 1024, minimum=1)
# Below this many completion tokens left under a limit, a request is refused instead of capped.
GATEWAY_MIN_COMPLETION_TOKENS = env_int("GATEWAY_MIN_COMPLETION_TOKENS", 16, minimum=1)
# Credentials not in the key cache that a client IP may send per minute before lookups are refused
# with 429 (each costs a database lookup; a key that is found is not counted).
GATEWAY_AUTH_FAILURES_PER_MINUTE = env_int("GATEWAY_AUTH_FAILURES_PER_MINUTE", 30, minimum=1)
GATEWAY_UPSTREAM_TIMEOUT = env_int("GATEWAY_UPSTREAM_TIMEOUT", 120, minimum=1)
GATEWAY_UPSTREAM_CONNECTIONS = env_int("GATEWAY_UPSTREAM_CONNECTIONS", 200, minimum=1)
# "native" (gateway/upstream.py, lean HTTP/1.1 on httptools) or "httpx"; see docs/BENCHMARKS.md.
GATEWAY_UPSTREAM_CLIENT = env_str("GATEWAY_UPSTREAM_CLIENT", "native")
if GATEWAY_UPSTREAM_CLIENT not in ("native", "httpx"):
    raise ImproperlyConfigured(f"GATEWAY_UPSTREAM_CLIENT must be 'native' or 'httpx', not {GATEWAY_UPSTREAM_CLIENT!r}")
# Cached keys are refreshed in the background after this many seconds (deployment status,
# grants, prices); key edits and revocations reach every process at once through Redis.
GATEWAY_KEY_CACHE_TTL = env_int("GATEWAY_KEY_CACHE_TTL", 10, minimum=1)
# A failing replica is skipped for GATEWAY_EJECT_SECONDS, doubling per consecutive failure up to the max.
GATEWAY_EJECT_SECONDS = env_int("GATEWAY_EJECT_SECONDS", 5, minimum=1)
GATEWAY_EJECT_MAX_SECONDS = env_int("GATEWAY_EJECT_MAX_SECONDS", 120, minimum=1)
GATEWAY_ACCESS_LOG = env_bool("GATEWAY_ACCESS_LOG", True)
# A usage event is queued before the answer goes out and its group commit awaited after it (the
# commit is off the client's latency; docs/GATEWAY.md "Metering"). 1: await the commit first.
GATEWAY_USAGE_COMMIT_BEFORE_ANSWER = env_bool("GATEWAY_USAGE_COMMIT_BEFORE_ANSWER", False)
# Per-stage wall and CPU time in each access log line (gateway/timing.py; bench/gateway.py --stages).
GATEWAY_STAGE_TIMING = env_bool("GATEWAY_STAGE_TIMING", False)
# Usage events are committed with PostgreSQL's synchronous commit (a WAL flush per batch) unless
# this is 0; see docs/BENCHMARKS.md for what that costs on a slow disk and what 0 risks.
GATEWAY_USAGE_SYNCHRONOUS_COMMIT = env_bool("GATEWAY_USAGE_SYNCHRONOUS_COMMIT", True)
# When the database cannot take usage events, each gateway process spools them to a local
# SQLite file here and replays them later (gateway/spool.py). Seconds a batch may take before
# it is spooled instead, and how old a spooled event may get before admins see a banner.
GATEWAY_SPOOL_DIR = Path(env_str("GATEWAY_SPOOL_DIR", str(VAR_DIR / "spool")))
GATEWAY_USAGE_WRITE_TIMEOUT = env_int("GATEWAY_USAGE_WRITE_TIMEOUT", 5, minimum=1)
GATEWAY_SPOOL_ALERT_SECONDS = env_int("GATEWAY_SPOOL_ALERT_SECONDS", 300, minimum=1)
# /metrics answers only with `Authorization: Bearer <METRICS_TOKEN>`; unset = /metrics is 404.
METRICS_TOKEN = env_secret("METRICS_TOKEN", None, min_length=16)
DEMO_MODEL_PORT = env_int("DEMO_MODEL_PORT", 8001, minimum=1)

# Sign-in (django-allauth; README "Sign-in, SSO and email"). People sign in with a username or
# an email address; accounts are made by invitation (or by an admin, with a one-time password),
# never by open sign-up, so the invitation link is what proves the email address.
ACCOUNT_ADAPTER = "console.signin.AccountAdapter"
SOCIALACCOUNT_ADAPTER = "console.signin.SocialAccountAdapter"
ACCOUNT_LOGIN_METHODS = {"username", "email"}
ACCOUNT_SIGNUP_FIELDS = ["username*", "email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_PRESERVE_USERNAME_CASING = False
ACCOUNT_SESSION_REMEMBER = False
ACCOUNT_LOGIN_ON_PASSWORD_RESET = False
ACCOUNT_REAUTHENTICATION_TIMEOUT = env_int("SIGNIN_REAUTHENTICATION_SECONDS", 300, minimum=30)
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Gatehouse] "
# Failed sign-ins are counted in the cache (Redis when REDIS_URL is set, shared by every web
# process; in-process otherwise): per account and per client address.
SIGNIN_FAILURES_PER_ACCOUNT = env_int("SIGNIN_FAILURES_PER_ACCOUNT", 5, minimum=1)
SIGNIN_FAILURES_PER_IP = env_int("SIGNIN_FAILURES_PER_IP", 20, minimum=1)
SIGNIN_LOCKOUT_SECONDS = env_int("SIGNIN_LOCKOUT_SECONDS", 900, minimum=1)
ACCOUNT_RATE_LIMITS = {
    "login_failed": f"{SIGNIN_FAILURES_PER_IP}/{SIGNIN_LOCKOUT_SECONDS}s/ip,{SIGNIN_FAILURES_PER_ACCOUNT}/{SIGNIN_LOCKOUT_SECONDS}s/key",
    "reset_password": "20/m/ip,3/m/key",
}
MFA_SUPPORTED_TYPES = ["totp", "webauthn", "recovery_codes"]
MFA_TOTP_ISSUER = "Gatehouse"
# Accept the code of the neighbouring 30-second window too (phone clocks drift); each code works once.
MFA_TOTP_TOLERANCE = 1
MFA_PASSKEY_LOGIN_ENABLED = True
# WebAuthn needs a secure origin; plain-HTTP development and test servers are allowed only when
# HTTPS is off on purpose.
MFA_WEBAUTHN_ALLOW_INSECURE_ORIGIN = not _HTTPS
MFA_TRUST_ENABLED = False
SOCIALACCOUNT_ONLY = False
SOCIALACCOUNT_AUTO_SIGNUP = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION = False
SOCIALACCOUNT_STORE_TOKENS = False


def _oidc_providers() -> dict:
    """One OpenID Connect provider (Keycloak, Entra ID, Okta, Google, ...) from OIDC_* variables."""
    issuer = env_str("OIDC_ISSUER_URL", "")
    if not issuer:
        return {}
    client_id = env_str("OIDC_CLIENT_ID", "")
    secret = env_secret("OIDC_CLIENT_SECRET", "")
    if not client_id:
        raise ImproperlyConfigured("OIDC_CLIENT_ID must be set when OIDC_ISSUER_URL is")
    return {
        "openid_connect": {
            "OAUTH_PKCE_ENABLED": True,
            "APPS": [
                {
                    "provider_id": env_str("OIDC_PROVIDER_ID", "sso"),
                    "name": env_str("OIDC_NAME", "Single sign-on"),
                    "client_id": client_id,
                    "secret": secret,
                    "settings": {
                        "server_url": issuer,
                        "token_auth_method": env_str("OIDC_TOKEN_AUTH_METHOD", "client_secret_basic"),
                        "scope": env_list("OIDC_SCOPES", ["openid", "profile", "email"]),
                    },
                }
            ],
        }
    }


SOCIALACCOUNT_PROVIDERS = _oidc_providers()
if SOCIALACCOUNT_PROVIDERS:
    # Starting SSO is a form POST that redirects to the identity provider; CSP's form-action
    # applies to that redirect too, so the provider's origin must be allowed.
    _issuer = urlsplit(env_str("OIDC_ISSUER_URL", ""))
    SECURE_CSP["form-action"] = [
        *SECURE_CSP["form-action"],
        f"{_issuer.scheme}://{_issuer.netloc}",
        *env_list("OIDC_EXTRA_FORM_ACTION_ORIGINS", []),
    ]
# The claim of the ID token / userinfo that lists the user's groups (mapped to roles per workspace).
OIDC_GROUPS_CLAIM = env_str("OIDC_GROUPS_CLAIM", "groups")


# Email (invitations, password reset), through Django's mailers. Without EMAIL_HOST: under DEBUG
# (`make run`) mail is written to the web process's stdout (the console backend); in production
# email is off, the console hides invitations and password reset, and new members get accounts
# with one-time passwords instead.
def _mailers() -> dict:
    host = env_str("EMAIL_HOST", "")
    if not host:
        return {"default": {"BACKEND": "django.core.mail.backends.console.EmailBackend"}} if DEBUG else {}
    port = env_int("EMAIL_PORT", 587, minimum=1)
    options = {
        "host": host,
        "port": port,
        "username": env_str("EMAIL_HOST_USER", "") or None,
        "password": env_secret("EMAIL_HOST_PASSWORD", None),
        "use_tls": env_bool("EMAIL_USE_TLS", port == 587),
        "use_ssl": env_bool("EMAIL_USE_SSL", port == 465),
        "timeout": env_int("EMAIL_TIMEOUT", 10, minimum=1),
    }
    if options["use_tls"] and options["use_ssl"]:
        raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL cannot both be on")
    return {"default": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend", "OPTIONS": options}}


EMAIL_ENABLED = bool(_mailers())
if EMAIL_ENABLED:
    # Left undefined without email, so `check --deploy` does not ask for a mailer nobody uses.
    MAILERS = _mailers()
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Gatehouse <gatehouse@localhost>")
INVITATION_DAYS = env_int("INVITATION_DAYS", 7, minimum=1)

# The admin API (/api/admin/v1/, adminapi/): requests per minute per admin key.
ADMIN_API_REQUESTS_PER_MINUTE = env_int("ADMIN_API_REQUESTS_PER_MINUTE", 600, minimum=1)
