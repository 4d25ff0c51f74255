"""Small factories for tests: keys with their secret, deployments with a price."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from django.conf import settings

from deployments.models import Deployment, DeploymentPrice
from keys import tokens
from keys.models import ApiKey, ApiKeySecret


def make_key(workspace, *, name: str | None = None, **fields) -> tuple[ApiKey, str]:
    """An application key and its plaintext. `deployments=[...]` sets a deployment scope."""
    deployments = fields.pop("deployments", None)
    plaintext = tokens.generate()
    key = ApiKey.objects.create(
        workspace=workspace, name=name or f"key-{uuid.uuid4().hex[:8]}", hint=tokens.display_hint(plaintext), **fields
    )
    if deployments:
        key.deployments.set(deployments)
    ApiKeySecret.objects.create(api_key=key, digest=tokens.digest(plaintext, settings.API_KEY_PEPPER), hint=tokens.display_hint(plaintext))
    return key, plaintext


def make_deployment(
    workspace,
    *,
    base_url: str,
    model_id: str | None = None,
    upstream_api_key: str = "",
    input_price: str = "0.50",
    output_price: str = "1.50",
    **fields,
) -> Deployment:
    from lib.crypto import encrypt

    deployment = Deployment.objects.create(
        workspace=workspace,
        name=fields.pop("name", "Demo"),
        model_id=model_id or f"@{workspace.slug}/demo-{uuid.uuid4().hex[:8]}",
        upstream_base_url=base_url,
        upstream_api_key_encrypted=encrypt(upstream_api_key) if upstream_api_key else "",
        **fields,
    )
    DeploymentPrice.objects.create(
        deployment=deployment,
        effective_from=datetime(2000, 1, 1, tzinfo=UTC),
        input_per_million=Decimal(input_price),
        output_per_million=Decimal(output_price),
    )
    return deployment


_PER_REQUEST_TOKENS = re.compile(rb'(nonce="|"X-CSRFToken": "|name="csrfmiddlewaretoken" value=")[^"]*"')


def page_without_per_request_tokens(content: bytes) -> bytes:
    """A page's bytes with its CSP nonce and CSRF token blanked.

    Both change on every request, so two answers can only be compared for
    "says exactly the same thing" once they are taken out.
    """
    return _PER_REQUEST_TOKENS.sub(rb'\1"', content)
