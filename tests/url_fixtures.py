"""URL parameter values for the URLconf walk in test_urls.py, one entry per parameter name."""

from __future__ import annotations


def extra_values(world) -> dict:
    from deployments.models import Deployment

    deployment = Deployment.objects.create(workspace=world.org, name="URL walk", model_id="url-walk-model",
                                           upstream_base_url="http://127.0.0.1:9/v1")
    return {"deployment": deployment.public_id}
