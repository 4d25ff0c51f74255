from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from console.access import access_workspace


@login_required
@require_GET
def secrets_page(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws)
    return render(request, "keys/secrets_page.html", {"access": access, "nav": "secrets"})
