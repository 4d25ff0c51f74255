#!/usr/bin/env bash
# The embedded default: SQLite and a filesystem Celery broker unless DATABASE_URL / REDIS_URL are set.
# Starts the web server, Celery worker and beat (Procfile) in the foreground; Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBUG="${DEBUG:-1}"
export GATEHOUSE_PORT="${PORT:-8000}"
export PUBLIC_BASE_URL="${PUBLIC_BASE_URL:-http://127.0.0.1:${GATEHOUSE_PORT}}"
unset PORT  # honcho hands out its own PORT per process; ours is GATEHOUSE_PORT
# The demo model server (Procfile `demo:`): 8001 unless taken, then any free port; seed_demo points
# the demo deployment at it. (honcho stops everything if one process cannot start.)
if [ -z "${DEMO_MODEL_PORT:-}" ]; then
  DEMO_MODEL_PORT="$(python - <<'PY'
import socket
for port in (8001, 0):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(s.getsockname()[1])
        break
PY
)"
fi
export DEMO_MODEL_PORT
# This script migrates itself (below) and DEBUG serves static files from the source tree, so the
# web role skips `manage.py prepare`. The worker uses threads: honcho stops a process by sending
# SIGTERM to its whole process group, which would kill prefork pool children under the worker's
# feet and leave it hung until honcho's SIGKILL 5 s later.
export GATEHOUSE_PREPARE=0
export CELERY_POOL="${CELERY_POOL:-threads}"
# honcho sends SIGKILL 5 s after SIGTERM. A worker on the filesystem broker needs about that long
# to stop when idle (its polling loop and timer each finish their current wait), and up to
# CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT (20 s) more to let a running task finish: give it 30 s.
HONCHO_KILL_WAIT="${HONCHO_KILL_WAIT:-30}"

python manage.py migrate --no-input -v 0
python manage.py seed_demo
python manage.py seed_demo_usage  # a month of demo traffic, once, so the dashboards have something to show
echo
echo "  Gatehouse console: ${PUBLIC_BASE_URL}/"
echo "  Database: ${DATABASE_URL:-SQLite at var/gatehouse.sqlite3}   Broker: ${CELERY_BROKER_URL:-${REDIS_URL:-filesystem (var/broker)}}"
echo "  Press Ctrl-C to stop."
echo
exec python - start -f Procfile <<PY
import sys
import honcho.manager
from honcho.command import main
honcho.manager.KILL_WAIT = ${HONCHO_KILL_WAIT}
sys.argv[0] = "honcho"
main()
PY
