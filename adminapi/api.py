"""The admin API, assembled: `api.urls` is mounted at /api/admin/v1/ (console/urls.py)."""

from __future__ import annotations

from adminapi import routes_deployments, routes_keys, routes_usage, routes_workspaces
from adminapi.core import api

api.add_router("", routes_workspaces.router)
api.add_router("", routes_deployments.router)
api.add_router("", routes_keys.router)
api.add_router("", routes_keys.budgets)
api.add_router("", routes_usage.router)

__all__ = ["api"]
