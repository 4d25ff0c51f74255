from __future__ import annotations

import os
import subprocess
import sys

import pytest

from console.audit import Actor
from deployments.examples import EXAMPLES_BY_ID, render_example, target_for
from deployments.services import deployment_create
from keys import tokens
from tests import gateway_support
from tests.conftest import World
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY
from usage.models import UsageEvent

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures
MODEL_ID = '@acme/Qwen "3" \\ 0.6B'


def make_world():
    world = World()
    deployment = deployment_create(
        workspace=world.org,
        actor=Actor.system("tests"),
        name="Qwen3 0.6B",
        model_id=MODEL_ID,
        upstream_base_url="http://10.0.0.5:8000/v1",
        input_per_million="0.20",
        output_per_million="0.60",
        description="Small base model on the lab GPU",
    )
    return world, deployment


def test_copy_the_python_example_from_the_details_page(page, sign_in, screenshot, live_server):
    world, deployment = make_world()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    sign_in("dev")
    page.click("text=Deployments")
    page.wait_for_selector("[data-testid=deployments-table]")
    screenshot(page, "1-list")
    page.click("text=Qwen3 0.6B")
    page.wait_for_selector("[data-testid=tab-overview]")
    screenshot(page, "2-overview")

    # Tabs are links enhanced by htmx: only the panel is swapped and the URL follows.
    page.evaluate("window.__sameDocument = true")
    page.click("[data-testid=detail-tabs] >> text=Code Examples")
    page.wait_for_selector("[data-testid=tab-examples]")
    assert page.evaluate("window.__sameDocument") is True
    assert "tab=examples" in page.url

    page.click("[role=tab][data-lang=go]")
    assert page.locator("#example-go").is_visible() and not page.locator("#example-python").is_visible()
    assert "package main" in page.locator("[data-testid=code-go]").inner_text()
    assert "lang=go" in page.url
    screenshot(page, "3-go")
    page.click("[role=tab][data-lang=java]")
    assert page.locator("#example-java").is_visible() and not page.locator("#example-go").is_visible()

    page.click("[role=tab][data-lang=python]")
    page.click("[data-testid=copy-python]")
    page.wait_for_selector("[data-testid=copy-python]:has-text('Copied')")
    copied = page.evaluate("navigator.clipboard.readText()")
    expected = render_example(EXAMPLES_BY_ID["python"], target_for(deployment=deployment, workspace=world.org))
    assert copied == expected
    assert 'model="@acme/Qwen \\"3\\" \\\\ 0.6B"' in copied
    screenshot(page, "4-python-copied")

    page.click("[data-testid=detail-tabs] >> text=API call")
    page.wait_for_selector("[data-testid=tab-api]")
    assert f"/v1/{world.org.public_id}/deployments/{deployment.public_id}/chat/completions" in page.inner_text("[data-testid=tab-api]")
    screenshot(page, "5-api-call")


def test_a_fresh_key_posted_from_secrets_appears_in_the_examples_once(page, sign_in, screenshot):
    world, deployment = make_world()
    key = tokens.generate()
    sign_in("dev")
    page.goto(f"/w/acme/deployments/{deployment.public_id}/")
    # What the Secrets page's "use this key in the examples" button does: a POST, never a URL.
    page.evaluate(
        """(key) => {
        const form = document.createElement("form");
        form.method = "post";
        form.action = location.pathname;
        for (const [name, value] of [["api_key", key], ["csrfmiddlewaretoken", JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRFToken"]]]) {
            const input = document.createElement("input");
            input.type = "hidden"; input.name = name; input.value = value;
            form.appendChild(input);
        }
        document.body.appendChild(form);
        form.submit();
    }""",
        key,
    )
    page.wait_for_selector("[data-testid=key-in-examples]")
    assert key not in page.url
    assert f'api_key="{key}"' in page.inner_text("[data-testid=code-python]")
    page.click("[role=tab][data-lang=csharp]")
    assert f'"{key}"' in page.inner_text("[data-testid=code-csharp]")
    screenshot(page, "key-in-examples")
    page.reload()  # a plain GET: the key is gone
    page.wait_for_selector("[data-testid=tab-examples]")
    assert key not in page.content()


def test_the_copied_python_example_pasted_into_a_file_gets_a_completion(
    page, sign_in, screenshot, live_server, demo, gateway, settings, tmp_path
):
    """The issue's story end to end: copy in Chromium, paste into a file, set GATEHOUSE_API_KEY, run it."""
    world = World()
    deployment = make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")
    key, plaintext = make_key(world.org, deployments=[deployment])
    settings.PUBLIC_BASE_URL = gateway.url  # what the examples print as the base URL: the live gateway
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    sign_in("dev")
    page.goto(f"/w/{world.org.slug}/deployments/{deployment.public_id}/?tab=examples")
    page.click("[role=tab][data-lang=python]")
    page.click("[data-testid=copy-python]")
    page.wait_for_selector("[data-testid=copy-python]:has-text('Copied')")
    pasted = tmp_path / "chat.py"
    pasted.write_text(page.evaluate("navigator.clipboard.readText()"))
    screenshot(page, "copied")

    result = subprocess.run(
        [sys.executable, str(pasted)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GATEHOUSE_API_KEY": plaintext},
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert "Hello! I am the Gatehouse demo model." in result.stdout
    assert UsageEvent.objects.filter(api_key=key, deployment=deployment, status_code=200).count() == 1


def test_a_viewer_sees_when_health_was_checked_and_why_a_deployment_is_unreachable(page, sign_in, screenshot):
    from datetime import timedelta

    from django.utils import timezone

    from deployments.models import Deployment, DeploymentStatus

    world, healthy = make_world()
    down = deployment_create(
        workspace=world.org,
        actor=Actor.system("tests"),
        name="Llama 8B",
        model_id="@acme/llama-8b",
        upstream_base_url="http://10.0.0.7:8000/v1",
        input_per_million="0.10",
        output_per_million="0.30",
    )
    Deployment.objects.filter(id=healthy.id).update(last_checked_at=timezone.now() - timedelta(seconds=20))
    Deployment.objects.filter(id=down.id).update(
        status=DeploymentStatus.UNREACHABLE,
        last_checked_at=timezone.now() - timedelta(minutes=2, seconds=5),
        last_error="Cannot connect: [Errno 111] Connection refused",
    )

    sign_in("vera")
    page.goto("/w/acme/deployments/")
    row = page.locator(f"tr[data-deployment='{down.public_id}']")
    assert row.locator("[data-testid=health-error]").inner_text() == "Cannot connect: [Errno 111] Connection refused"
    assert row.locator("[data-testid=health-checked]").inner_text() == "checked 2 min ago"
    healthy_row = page.locator(f"tr[data-deployment='{healthy.public_id}']")
    assert healthy_row.locator("[data-testid=health-checked]").inner_text() == "checked just now"
    assert healthy_row.locator("[data-testid=health-error]").count() == 0
    screenshot(page, "list")

    page.click("text=Llama 8B")
    status = page.locator("[data-testid=overview-status]")
    assert "Connection refused" in status.inner_text() and "checked 2 min ago" in status.inner_text()
    screenshot(page, "overview")


def test_admin_adds_a_replica_from_the_details_page(page, sign_in, screenshot, live_server):
    world, deployment = make_world()
    sign_in("adam")
    page.goto(f"/w/acme/deployments/{deployment.public_id}/")
    page.wait_for_selector("[data-testid=replica-table]")
    page.click("[data-testid=add-replica] summary")
    page.fill("#id_base_url", "http://10.0.0.6:8000/v1")
    page.fill("#id_weight", "3")
    page.fill("#id_max_concurrent", "8")
    screenshot(page, "1-form")
    page.click("text=Add replica >> nth=-1")
    page.wait_for_selector("text=Replica 10.0.0.6:8000 added")
    rows = page.locator("[data-testid=replica-table] tbody tr")
    assert rows.count() == 2
    assert "10.0.0.6:8000" in rows.nth(1).inner_text() and "3" in rows.nth(1).inner_text()
    screenshot(page, "2-added")
    assert list(deployment.replicas.values_list("base_url", "weight", "max_concurrent")) == [
        ("http://10.0.0.5:8000/v1", 1, None),
        ("http://10.0.0.6:8000/v1", 3, 8),
    ]


def test_the_details_page_shows_each_replicas_health_load_and_last_hour(page, sign_in, screenshot, live_server):
    """Status and last probe from the worker, in flight and ejections as the gateways report them
    to Redis, the last hour's requests, 5xx rate and p95 from usage events; at desktop and phone widths."""
    import json
    import time
    from datetime import timedelta

    from django.utils import timezone

    from deployments.live import live_key
    from deployments.models import ReplicaStatus
    from deployments.services import replica_add
    from lib.redis import redis_client

    world, deployment = make_world()
    actor = Actor.system("tests")
    second = replica_add(deployment=deployment, actor=actor, base_url="http://10.0.0.6:8000/v1", weight=3, max_concurrent=8)
    third = replica_add(deployment=deployment, actor=actor, base_url="http://10.0.0.7:8000/v1", enabled=False)
    first = deployment.replicas.get(base_url="http://10.0.0.5:8000/v1")
    now = timezone.now()
    first.__class__.objects.filter(id=first.id).update(
        status=ReplicaStatus.UP, last_checked_at=now - timedelta(seconds=40), last_probe_ms=12
    )
    second.__class__.objects.filter(id=second.id).update(
        status=ReplicaStatus.DOWN,
        last_error="Cannot connect: [Errno 111] Connection refused",
        last_checked_at=now - timedelta(minutes=1),
        last_probe_ms=3,
    )
    # The last hour: 19 answers from the first replica (20…200 ms: p95 191 ms), 10 from the second, 4 of them 502.
    for i in range(20):
        UsageEvent.objects.create(
            request_id=f"a{i}",
            created_at=now - timedelta(hours=2) if i == 0 else now,  # the first is older: not counted
            workspace=world.org,
            deployment=deployment,
            replica=first,
            model="m",
            status_code=200,
            latency_ms=10 * (i + 1),
        )
    for i in range(10):
        UsageEvent.objects.create(
            request_id=f"b{i}",
            created_at=now,
            workspace=world.org,
            deployment=deployment,
            replica=second,
            model="m",
            status_code=502 if i < 4 else 200,
        )
    # Two gateway processes report: 3 + 2 in flight on the first; the second ejected on one of them.
    redis = redis_client()
    published = time.time()
    redis.hset(
        live_key(str(first.public_id)), mapping={"p1": json.dumps([published, 3, 0, False]), "p2": json.dumps([published, 2, 0, False])}
    )
    redis.hset(
        live_key(str(second.public_id)), mapping={"p1": json.dumps([published, 0, 2, True]), "p2": json.dumps([published, 0, 1, False])}
    )
    try:
        sign_in("adam")
        page.set_viewport_size({"width": 1440, "height": 900})
        page.goto(f"/w/acme/deployments/{deployment.public_id}/")
        rows = page.locator("[data-testid=replica-table] tbody tr")
        assert rows.count() == 3
        up, down, disabled = (page.locator(f"tr[data-replica='{r.public_id}']") for r in (first, second, third))
        assert up.locator("[data-testid=replica-status]").inner_text() == "Up"
        assert up.locator("[data-testid=replica-inflight]").inner_text() == "5"
        assert " ".join(up.locator("[data-testid=replica-hour]").inner_text().split()) == "19 req · 0 % err p95 191 ms"
        assert up.locator("[data-testid=replica-ejections]").inner_text() == "0"
        assert "12 ms" in up.inner_text()
        assert down.locator("[data-testid=replica-status]").inner_text() == "Down"
        assert "Connection refused" in down.inner_text()
        assert " ".join(down.locator("[data-testid=replica-hour]").inner_text().split()) == "10 req · 40 % err p95 0 ms"
        assert " ".join(down.locator("[data-testid=replica-ejections]").inner_text().split()) == "3 ejected now"
        assert disabled.locator("[data-testid=replica-status]").inner_text() == "Disabled"
        page.locator("[data-testid=replicas]").scroll_into_view_if_needed()
        screenshot(page, "1440")
        page.set_viewport_size({"width": 390, "height": 844})
        page.reload()
        page.locator("[data-testid=replicas]").scroll_into_view_if_needed()
        assert page.locator("[data-testid=replica-table]").is_visible()
        screenshot(page, "390")
    finally:
        redis.delete(live_key(str(first.public_id)), live_key(str(second.public_id)))


def test_each_kind_shows_its_paths_and_examples(page, sign_in, screenshot):
    world, chat = make_world()
    embedding = deployment_create(
        workspace=world.org,
        actor=Actor.system("tests"),
        name="BGE small",
        model_id="@acme/bge-small",
        kind="embedding",
        upstream_base_url="http://10.0.0.6:8000/v1",
        input_per_million="0.02",
    )
    sign_in("dev")
    page.goto(page.url.split("/w/")[0] + f"/w/{world.org.slug}/deployments/{chat.public_id}/?tab=examples&lang=claude-code")
    page.wait_for_selector("[data-testid=claude-code-recipe]")
    assert "ANTHROPIC_BASE_URL" in page.inner_text("[data-testid=claude-code-recipe]")
    assert page.locator(".lang-tabs .tab-group").all_inner_texts() == [
        "CHAT COMPLETIONS",
        "RESPONSES API",
        "ANTHROPIC MESSAGES",
        "DASHSCOPE",
        "COMPLETIONS",
    ]
    screenshot(page, "chat-examples-claude-code")
    page.click("[data-testid=detail-tabs] >> text=API call")
    page.wait_for_selector("[data-testid=api-paths]")
    paths = page.inner_text("[data-testid=api-paths]")
    assert "/v1/messages" in paths and "/api/v1/services/aigc/text-generation/generation" in paths and "/v1/responses" in paths
    screenshot(page, "chat-api-paths")

    page.goto(page.url.split("/w/")[0] + f"/w/{world.org.slug}/deployments/{embedding.public_id}/?tab=examples")
    page.wait_for_selector("[data-testid=code-python-embeddings]")
    assert page.locator("[role=tab]").all_inner_texts() == ["Python", "LangChain", "curl", "Node.js"]
    screenshot(page, "embedding-examples")
    page.click("[data-testid=detail-tabs] >> text=API call")
    page.wait_for_selector("[data-testid=api-paths]")
    assert "/v1/embeddings" in page.inner_text("[data-testid=api-paths]") and "/v1/messages" not in page.inner_text("[data-testid=tab-api]")
    screenshot(page, "embedding-api-paths")


def test_admin_imports_a_model_from_a_server(page, sign_in, screenshot, live_server):
    world, _ = make_world()
    server = gateway_support.start_demo()
    try:
        sign_in("adam")
        page.goto("/w/acme/deployments/")
        page.click("text=Import from server")
        page.fill("#id_base_url", server.url)
        page.fill("#id_api_key", UPSTREAM_KEY)
        page.click("text=Read the model list")
        page.wait_for_selector("[data-testid=import-offers]")
        assert "New deployment @acme/gatehouse-demo" in page.locator("[data-testid=import-offers]").inner_text()
        screenshot(page, "1-offers")
        page.click("text=Import selected")
        page.wait_for_selector("text=Imported from 127.0.0.1")
        screenshot(page, "2-imported")
    finally:
        server.stop()
    assert world.org.deployments.filter(model_id="@acme/gatehouse-demo").exists()


def test_org_admin_sets_a_sub_workspaces_queue_priority(page, sign_in, screenshot, live_server):
    world, _ = make_world()
    sign_in("adam")
    page.goto("/w/acme/deployments/grants/")
    page.fill("#priority-acme-research", "3")
    screenshot(page, "1-priority")
    page.click("text=Save priorities")
    page.wait_for_selector("text=Queue priority: Research 3.")
    world.sub.refresh_from_db()
    assert world.sub.queue_priority == 3
