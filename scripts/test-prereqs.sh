#!/usr/bin/env bash
# What `make test` needs beyond Python packages: Debian's Chromium, PostgreSQL and Redis.
set -uo pipefail

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Debian's chromium for the browser tests..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || { echo "apt-get install chromium failed"; exit 1; }
  else
    echo "The browser tests need Debian's Chromium at /usr/bin/chromium: sudo apt-get install -y chromium"; exit 1
  fi
fi

# Toolchains the code-example tests compile and run the examples with (tests/test_deployments_examples.py),
# and the container test's podman + mmdebstrap + runc. Each is installed from Debian's packages only when missing; without root the tests skip and say why.
missing=()
command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)  # installs the Node.js examples' openai and the browser tests' axe-core, pinned
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v go >/dev/null 2>&1 || missing+=(golang-go)
command -v php >/dev/null 2>&1 || missing+=(php-cli)
php_modules="$(php -m 2>/dev/null || true)"  # captured first: grep -q with pipefail would see SIGPIPE
grep -qx curl <<<"$php_modules" || missing+=(php-curl)
command -v mcs >/dev/null 2>&1 || missing+=(mono-mcs)
command -v mono >/dev/null 2>&1 || missing+=(mono-runtime)
ls /usr/lib/mono/4.5/System.Net.Http.dll >/dev/null 2>&1 || missing+=(libmono-system-net-http4.0-cil)
# The container test (tests/test_container.py) builds the image with podman on a base made by mmdebstrap.
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v runc >/dev/null 2>&1 || missing+=(runc)  # crun (podman's default) refuses hybrid cgroups
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing example toolchains: ${missing[*]}..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null) \
      || echo "apt-get install ${missing[*]} failed; the tests that need them will be skipped"
  else
    echo "Not root: the code-example tests will skip what needs ${missing[*]} (sudo apt-get install -y ${missing[*]})"
  fi
fi

pg_url="${DATABASE_URL:-postgres://postgres@localhost:5432/gatehouse}"
redis_url="${REDIS_URL:-redis://localhost:6379/0}"
.venv/bin/python - "$pg_url" "$redis_url" <<'PY'
import sys
import psycopg, redis
pg_url, redis_url = sys.argv[1:3]
try:
    # Connect to the server's maintenance database: the test database is made by pytest-django.
    conninfo = psycopg.conninfo.conninfo_to_dict(pg_url.replace("postgres://", "postgresql://", 1))
    conninfo["dbname"] = "postgres"
    psycopg.connect(**conninfo, connect_timeout=3).close()
except Exception as exc:
    sys.exit(f"make test needs PostgreSQL ({pg_url}): {exc}\n  Install and start it: apt-get install -y postgresql && pg_ctlcluster 15 main start\n  (or set DATABASE_URL to a server where this user may create databases)")
try:
    redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
except Exception as exc:
    sys.exit(f"make test needs Redis ({redis_url}): {exc}\n  Install and start it: apt-get install -y redis-server && redis-server --daemonize yes\n  (or set REDIS_URL)")
PY
