"""Helpers for admin API tests: admin keys and a JSON client that sends only the bearer header."""

from __future__ import annotations

from adminapi.services import admin_key_create
from console.audit import Actor

BASE = "/api/admin/v1"


def make_admin_key(workspace, role: str = "admin", name: str | None = None, **fields) -> tuple[object, str]:
    return admin_key_create(workspace=workspace, actor=Actor.system("tests"), name=name or f"automation-{role}", role=role, **fields)


def call(client, method: str, path: str, key: str | None, body: dict | None = None, **headers):
    if key is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    kwargs = {"content_type": "application/json"} if body is not None else {}
    return getattr(client, method.lower())(BASE + path, body if body is not None else None, **kwargs, **headers)
