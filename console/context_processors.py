from __future__ import annotations

from django.conf import settings
from django.utils.functional import SimpleLazyObject

from console.models import Theme, Workspace


def shell(request) -> dict:
    """The workspaces for the switcher (evaluated only by templates that draw the shell) and the theme."""
    if not request.user.is_authenticated:
        return {"email_enabled": settings.EMAIL_ENABLED, "theme": Theme.SYSTEM}
    return {
        "switcher_workspaces": SimpleLazyObject(lambda: _switcher(request.user)),
        "email_enabled": settings.EMAIL_ENABLED,
        # Rendered on <html data-theme>: the stored choice applies before first paint, with no script.
        "theme": request.user.theme,
        "theme_choices": Theme.choices,
    }


def _switcher(user) -> list[Workspace]:
    workspaces = list(Workspace.objects.visible_to(user).select_related("parent"))
    by_root: dict[int, list[Workspace]] = {}
    for w in workspaces:
        by_root.setdefault(w.root_id, []).append(w)
    ordered: list[Workspace] = []
    for group in sorted(by_root.values(), key=lambda g: min((w.parent.name if w.parent else w.name) for w in g).lower()):
        ordered.extend(sorted(group, key=lambda w: (w.parent_id is not None, w.name.lower())))
    return ordered
