"""ASGI entry point: the gateway's paths go to the lean gateway app, everything else to Django.

The gateway (gateway/app.py) serves /v1/, /api/v2/, /api/v1/services/ (DashScope) and /metrics without Django's request stack
(no middleware, sessions or templates): that is what keeps its added latency near a millisecond.
/healthz and /readyz are answered here too, before Django (gateway/health.py). Lifespan events
go to the gateway, which opens its pools there.

Console requests get an access log line of their own (method, path without the query string,
status, milliseconds): uvicorn's access log is off in every start command, because it prints
full URLs and a URL can carry a key.
"""

import logging
import os
import time

import orjson
from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
django_application = get_asgi_application()

from gateway import health  # noqa: E402  (needs the app registry that get_asgi_application set up)
from gateway.app import gateway  # noqa: E402
from lib.logsafe import loggable_path  # noqa: E402
from lib.runtime import freeze_startup_objects  # noqa: E402

freeze_startup_objects()

GATEWAY_PREFIXES = ("/v1/", "/api/v2/", "/api/v1/services/")  # the last: DashScope-native calls
access_log = logging.getLogger("console.access")


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        return await gateway(scope, receive, send)
    path = scope.get("path", "")
    if path.startswith(GATEWAY_PREFIXES) or path == "/metrics" or path == "/v1":
        return await gateway(scope, receive, send)
    if path == "/healthz":
        return await health.healthz(send)
    if path == "/readyz":
        if not gateway.ready:
            await gateway.startup()
        return await health.readyz(gateway, send)
    if scope["type"] != "http" or not settings.CONSOLE_ACCESS_LOG:
        return await django_application(scope, receive, send)
    return await _logged(scope, receive, send)


async def _logged(scope, receive, send):
    started = time.monotonic()
    status = 0

    async def send_and_note(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    try:
        await django_application(scope, receive, send_and_note)
    finally:
        client = scope.get("client")
        access_log.info(
            orjson.dumps(
                {
                    "method": scope.get("method"),
                    "path": loggable_path(scope.get("path", "")),
                    "status": status or 500,
                    "ms": round((time.monotonic() - started) * 1000, 2),
                    "client_ip": client[0] if client else None,
                }
            ).decode()
        )
