"""The access chokepoints for keys: every key or BYOK credential a view touches is fetched here.

An outsider gets Http404 exactly as for an id that does not exist (console.access decides who is
an outsider); a member whose role is too low gets PermissionDenied. Hidden test-call keys are
not reachable at all.
"""

from __future__ import annotations

from django.http import Http404

from console.access import WorkspaceAccess, access_workspace
from console.models import Role
from keys.models import ApiKey, ByokCredential
from keys.selectors import visible_api_keys


def access_api_key(user, ws_slug: str, public_id, *, min_role: Role = Role.VIEWER) -> tuple[WorkspaceAccess, ApiKey]:
    access = access_workspace(user, ws_slug, min_role=min_role)
    api_key = visible_api_keys(access.workspace).select_related("created_by").filter(public_id=public_id).first()
    if api_key is None:
        raise Http404("No such key.")
    return access, api_key


def access_byok_credential(user, ws_slug: str, public_id, *, min_role: Role = Role.ADMIN) -> tuple[WorkspaceAccess, ByokCredential]:
    access = access_workspace(user, ws_slug, min_role=min_role)
    credential = ByokCredential.objects.filter(workspace=access.workspace, public_id=public_id).first()
    if credential is None:
        raise Http404("No such credential.")
    return access, credential
