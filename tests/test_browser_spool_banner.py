from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from lib.redis import redis_client
from tests.conftest import World
from usage.spool_status import STATUS_KEY, encode_status

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_admin_reads_why_usage_is_missing_while_a_gateway_spools(page, sign_in, screenshot):
    World()
    redis_client().delete(STATUS_KEY)
    waiting = encode_status(host="gateway-2", pid=4711, depth=1718, rejected=0, oldest=time.time() - 420)
    refused = encode_status(host="gateway-1", pid=812, depth=0, rejected=1, oldest=None)
    redis_client().hset(STATUS_KEY, mapping={"usage-gateway-2-4711-ab12": waiting, "usage-gateway-1-812-cd34": refused})
    try:
        sign_in("olivia")
        page.goto("/w/acme/")
        banner = page.locator("[data-testid=usage-spool-banner]")
        expect(banner).to_contain_text("1718 usage events waiting since")
        expect(banner).to_contain_text("1 event refused by the database, kept aside in spool file usage-gateway-1-812-cd34 on gateway-1")
        screenshot(page, "spool-banner")
    finally:
        redis_client().delete(STATUS_KEY)
