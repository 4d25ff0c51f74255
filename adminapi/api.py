"""The admin API, assembled: `admin_api_urls()` is mounted at /api/admin/v1/ (console/urls.py)."""

from __future__ import annotations

import functools

from django.http import JsonResponse
from django.urls import URLPattern, re_path
from django.views.decorators.csrf import csrf_exempt

from adminapi import routes_deployments, routes_keys, routes_usage, routes_workspaces
from adminapi.core import api

api.add_router("", routes_workspaces.router)
api.add_router("", routes_deployments.router)
api.add_router("", routes_keys.router)
api.add_router("", routes_keys.budgets)
api.add_router("", routes_usage.router)


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message, "fields": None}}, status=status)


def _json_405(view):
    """django-ninja answers a method a path lacks with Django's plain-text 405: give the API's shape."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        if response.status_code == 405 and not response.get("Content-Type", "").startswith("application/json"):
            allowed = response.get("Allow", "")
            response = _error(405, "method_not_allowed", f"This path answers {allowed}.")
            response["Allow"] = allowed
        return response

    return wrapper


@csrf_exempt
def _unknown_path(request, rest: str = ""):
    return _error(404, "not_found", "Not found.")


def admin_api_urls():
    patterns, app_name, namespace = api.urls
    wrapped = [URLPattern(p.pattern, _json_405(p.callback), p.default_args, p.name) for p in patterns]
    # Anything else under the prefix is the API's 404, not the console's HTML page.
    return [*wrapped, re_path(r"^(?P<rest>.*)$", _unknown_path)], app_name, namespace


__all__ = ["admin_api_urls", "api"]
