"""Checks of the fields every upstream provider has, shared by BYOK credentials (keys.services)
and router providers (keys.router_providers): its base URL, its API key and the models it serves."""

from __future__ import annotations

from collections.abc import Iterable

from django import forms
from django.core.exceptions import ValidationError
from django.views.decorators.debug import sensitive_variables

from lib.upstream import validate_upstream_url

MAX_MODEL_NAMES = 200


def parse_model_names(value: str | Iterable[str], *, required: bool = True) -> list[str]:
    """Model names separated by commas or new lines; each without spaces, at most 200 characters."""
    raw = value.replace(",", "\n").splitlines() if isinstance(value, str) else list(value)
    names = list(dict.fromkeys(name.strip() for name in raw if name.strip()))
    for name in names:
        if len(name) > 200 or any(ch.isspace() or not ch.isprintable() for ch in name):
            raise ValidationError(f"“{name[:60]}” is not a model name (no spaces, at most 200 characters).")
    if required and not names:
        raise ValidationError("List at least one model this provider serves.")
    if len(names) > MAX_MODEL_NAMES:
        raise ValidationError(f"At most {MAX_MODEL_NAMES} models.")
    return names


def check_base_url(value: str) -> str:
    """The same server-side-request policy as deployment upstreams: link-local and cloud
    metadata addresses are refused, including via DNS."""
    return validate_upstream_url(value, allow_unresolved=True)


@sensitive_variables("value")
def check_provider_key(value: str) -> str:
    value = (value or "").strip()
    if not 8 <= len(value) <= 500 or any(ch.isspace() for ch in value):
        raise ValidationError("Paste the provider's API key: 8–500 characters, no spaces.")
    return value


# ---- The same fields on forms (deployments, replicas, imports, router providers) ----------------


def upstream_url_field(*, placeholder: str, help_text: str, label: str = "Base URL", required: bool = True) -> forms.CharField:
    """A base URL input; the URL policy is checked by the services (check_base_url, validate_upstream_url)."""
    return forms.CharField(
        label=label,
        max_length=300,
        required=required,
        widget=forms.TextInput(attrs={"placeholder": placeholder, "spellcheck": "false"}),
        help_text=help_text,
    )


def upstream_key_field(*, help_text: str, label: str = "Upstream API key", required: bool = False) -> forms.CharField:
    """A secret input that is never rendered back into the page."""
    return forms.CharField(
        label=label,
        max_length=500,
        required=required,
        strip=True,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}, render_value=False),
        help_text=help_text,
    )
