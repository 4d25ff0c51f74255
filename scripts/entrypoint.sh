#!/bin/sh
# Gatehouse's one start command, for every role: the Procfile, the container image and compose.yaml
# all call it, so a process starts the same way everywhere (README "Production").
#
#   scripts/entrypoint.sh web       prepare (collectstatic + migrate, safe from many replicas), then
#                                   serve the console and the gateway (uvicorn, console.asgi)
#   scripts/entrypoint.sh worker    Celery worker
#   scripts/entrypoint.sh beat      Celery beat (run exactly one)
#   scripts/entrypoint.sh prepare   only collectstatic + migrate
#   scripts/entrypoint.sh manage …  any manage.py command
#   scripts/entrypoint.sh health web|worker|beat   health check of that role (exit 0 = healthy);
#                                   the image's HEALTHCHECK and compose.yaml call it
#
# Each role replaces this shell (exec), so the server itself receives SIGTERM from the
# orchestrator: uvicorn stops accepting, lets in-flight requests and streams finish (up to
# GRACEFUL_TIMEOUT seconds) and flushes usage; the worker finishes or requeues its tasks within
# CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT.
set -eu
cd "$(dirname "$0")/.."

role="${1:-web}"
[ "$#" -gt 0 ] && shift

case "$role" in
  web)
    if [ "${GATEHOUSE_PREPARE:-1}" != "0" ]; then
      python manage.py prepare
    fi
    # Several worker processes: /metrics sums them through prometheus_client's multiprocess mode,
    # which needs a directory that is empty when the server starts.
    if [ "${WEB_CONCURRENCY:-1}" -gt 1 ] && [ -z "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
      PROMETHEUS_MULTIPROC_DIR="$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-metrics.XXXXXX")"
      export PROMETHEUS_MULTIPROC_DIR
    fi
    # uvicorn's access log is off: it prints full URLs, query strings included (a URL can carry
    # a key). The console and the gateway write their own access logs without query strings.
    exec uvicorn console.asgi:application \
      --host "${HOST:-127.0.0.1}" --port "${GATEHOUSE_PORT:-8000}" \
      --workers "${WEB_CONCURRENCY:-1}" --loop uvloop --http httptools \
      --no-server-header --no-proxy-headers --no-access-log \
      --timeout-graceful-shutdown "${GRACEFUL_TIMEOUT:-30}" "$@"
    ;;
  worker)
    # SIGTERM starts Celery's soft shutdown: running tasks get CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT
    # seconds, then the rest are cancelled and requeued (they are acks_late and idempotent).
    # Plain SIGTERM would wait for every task however long it runs, past any grace period.
    export REMAP_SIGTERM="${REMAP_SIGTERM:-SIGQUIT}"
    exec celery -A console worker --loglevel "${LOG_LEVEL:-INFO}" \
      --pool "${CELERY_POOL:-prefork}" --concurrency "${CELERY_CONCURRENCY:-2}" "$@"
    ;;
  beat)
    exec celery -A console beat --loglevel "${LOG_LEVEL:-INFO}" "$@"
    ;;
  prepare)
    exec python manage.py prepare "$@"
    ;;
  manage)
    exec python manage.py "$@"
    ;;
  health)
    case "${1:-web}" in
      web)  # liveness: the server answers (no dependencies; /readyz is for load balancers)
        exec python -c 'import os, urllib.request; urllib.request.urlopen("http://127.0.0.1:%s/healthz" % os.environ.get("GATEHOUSE_PORT", "8000"), timeout=3)' ;;
      worker)  # this container's worker answers a ping through the broker
        exec celery -A console inspect ping --timeout 5 --destination "celery@$(python -c 'import socket; print(socket.gethostname())')" ;;
      beat)  # beat rewrites its schedule file as it sends tasks (due at least every minute)
        var_dir="${GATEHOUSE_VAR_DIR:-var}"
        [ -n "$(find "$var_dir" -maxdepth 1 -name 'celerybeat-schedule*' -mmin -10 2>/dev/null)" ] || { echo "beat has not written $var_dir/celerybeat-schedule for 10 minutes" >&2; exit 1; }
        exit 0 ;;
      *) echo "usage: $0 health web|worker|beat" >&2; exit 64 ;;
    esac
    ;;
  *)
    echo "usage: $0 web|worker|beat|prepare|manage|health [args...]" >&2
    exit 64
    ;;
esac
