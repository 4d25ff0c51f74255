"""ASGI entry point: the gateway's paths go to the lean gateway app, everything else to Django.

The gateway (gateway/app.py) serves /v1/, /api/v2/, /api/v1/services/ (DashScope) and /metrics without Django's request stack
(no middleware, sessions or templates): that is what keeps its added latency near a millisecond.
Lifespan events go to the gateway, which opens its pools there.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
django_application = get_asgi_application()

from gateway.app import gateway  # noqa: E402  (needs the app registry that get_asgi_application set up)
from lib.runtime import freeze_startup_objects  # noqa: E402

freeze_startup_objects()

GATEWAY_PREFIXES = ("/v1/", "/api/v2/", "/api/v1/services/")  # the last: DashScope-native calls


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        return await gateway(scope, receive, send)
    path = scope.get("path", "")
    if path.startswith(GATEWAY_PREFIXES) or path == "/metrics" or path == "/v1":
        return await gateway(scope, receive, send)
    return await django_application(scope, receive, send)
