"""Router provider pages for installation admins (staff and superusers), outside any workspace.

Anyone else gets 404, exactly as for a page that does not exist. Every view: access check →
form → service (keys.router_providers) → redirect or render.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from console.audit import Actor
from console.models import Workspace
from keys.models import RouterProvider
from keys.router_provider_forms import RouterProviderCreateForm, RouterProviderForm, RouterProviderGrantForm, RouterProviderPriceForm
from keys.router_providers import (
    grants_by_provider,
    is_installation_admin,
    router_provider_create,
    router_provider_grant,
    router_provider_list,
    router_provider_price_rows,
    router_provider_price_set,
    router_provider_revoke,
    router_provider_update,
    workspaces_for_grant,
)


def installation_admin_required(view: Callable) -> Callable:
    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not is_installation_admin(request.user):
            raise Http404("No such page.")
        return view(request, *args, **kwargs)

    return wrapped


def access_router_provider(slug: str) -> RouterProvider:
    return get_object_or_404(RouterProvider, slug=slug)


def _form_errors(form, exc: ValidationError) -> None:
    if hasattr(exc, "error_dict"):
        for field, errors in exc.message_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, exc.messages)


def _render(request: HttpRequest, template: str, context: dict, *, status: int = 200) -> HttpResponse:
    return render(request, template, {"installation_nav": "router_providers", **context}, status=status)


@installation_admin_required
@require_GET
def router_providers_page(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    providers = list(router_provider_list())
    defaults = {}
    for provider in providers:
        rows = router_provider_price_rows(provider, now)
        defaults[provider.id] = next((r.current for r in rows if r.model_name == ""), None)
    rows = [(p, defaults[p.id]) for p in providers]
    return _render(request, "keys/router_providers/list_page.html", {"rows": rows})


@sensitive_post_parameters("api_key")
@installation_admin_required
@require_http_methods(["GET", "POST"])
def router_provider_add(request: HttpRequest) -> HttpResponse:
    form = RouterProviderCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            provider = router_provider_create(actor=Actor.from_request(request), **form.cleaned_data)
        except ValidationError as exc:
            _form_errors(form, exc)
        else:
            messages.success(request, f"Added the router provider “{provider.name}”. Grant it to the workspaces that may use it.")
            return redirect("router_provider_detail", provider=provider.slug)
    return _render(request, "keys/router_providers/form_page.html", {"form": form}, status=400 if request.method == "POST" else 200)


@sensitive_post_parameters("api_key")
@installation_admin_required
@require_http_methods(["GET", "POST"])
def router_provider_edit(request: HttpRequest, provider: str) -> HttpResponse:
    found = access_router_provider(provider)
    initial = {"name": found.name, "base_url": found.base_url, "model_names": "\n".join(found.model_names), "is_active": found.is_active}
    form = RouterProviderForm(request.POST or None, initial=initial, editing=True)
    if request.method == "POST" and form.is_valid():
        try:
            router_provider_update(provider=found, actor=Actor.from_request(request), **form.cleaned_data)
        except ValidationError as exc:
            _form_errors(form, exc)
        else:
            messages.success(request, f"Saved the router provider “{form.cleaned_data['name']}”.")
            return redirect("router_provider_detail", provider=found.slug)
    return _render(
        request, "keys/router_providers/form_page.html", {"form": form, "provider": found}, status=400 if request.method == "POST" else 200
    )


def _detail(request: HttpRequest, provider: RouterProvider, *, grant_form=None, price_form=None, status: int = 200) -> HttpResponse:
    context = {
        "provider": provider,
        "grants": list(grants_by_provider(provider)),
        "price_rows": router_provider_price_rows(provider),
        "grant_form": grant_form or RouterProviderGrantForm(workspaces=workspaces_for_grant(provider)),
        "price_form": price_form or RouterProviderPriceForm(),
    }
    return _render(request, "keys/router_providers/detail_page.html", context, status=status)


@installation_admin_required
@require_GET
def router_provider_detail(request: HttpRequest, provider: str) -> HttpResponse:
    return _detail(request, access_router_provider(provider))


@installation_admin_required
@require_POST
def router_provider_grant_add(request: HttpRequest, provider: str) -> HttpResponse:
    found = access_router_provider(provider)
    form = RouterProviderGrantForm(request.POST, workspaces=workspaces_for_grant(found))
    if not form.is_valid():
        return _detail(request, found, grant_form=form, status=400)
    workspace = form.cleaned_data["workspace"]
    router_provider_grant(provider=found, workspace=workspace, actor=Actor.from_request(request))
    messages.success(request, f"{workspace.name} may now use {found.name}.")
    return redirect("router_provider_detail", provider=found.slug)


@installation_admin_required
@require_POST
def router_provider_grant_revoke(request: HttpRequest, provider: str, workspace: str) -> HttpResponse:
    found = access_router_provider(provider)
    target = get_object_or_404(Workspace, public_id=workspace)
    router_provider_revoke(provider=found, workspace=target, actor=Actor.from_request(request))
    messages.success(request, f"{target.name} may no longer use {found.name}; its keys lost this provider from their scope.")
    return redirect("router_provider_detail", provider=found.slug)


@installation_admin_required
@require_POST
def router_provider_price_add(request: HttpRequest, provider: str) -> HttpResponse:
    found = access_router_provider(provider)
    form = RouterProviderPriceForm(request.POST)
    with timezone.override(UTC):  # the form says its times are UTC, whatever the server's TIME_ZONE
        valid = form.is_valid()
    if valid:
        try:
            router_provider_price_set(provider=found, actor=Actor.from_request(request), **form.cleaned_data)
        except ValidationError as exc:
            _form_errors(form, exc)
        else:
            model = form.cleaned_data["model_name"] or "the default"
            messages.success(request, f"Saved the price for {model}.")
            return redirect("router_provider_detail", provider=found.slug)
    return _detail(request, found, price_form=form, status=400)
