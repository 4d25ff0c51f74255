"""Key format and storage: the plaintext key exists only in the response that made it."""

from __future__ import annotations

import logging
import re

import pytest
from django.conf import settings
from django.contrib.sessions.models import Session
from django.db import connection
from django.urls import reverse

from keys import tokens
from keys.models import ApiKey
from keys.selectors import api_key_secret_for_presented, api_key_secret_lookup
from keys.views import ONE_TIME_SECRET
from lib.redis import redis_client
from tests.keys_helpers import make_key, make_scope

README_REGEX = r"\bgh_live_[0-9A-Za-z]{46}\b"


def test_published_regex_finds_generated_keys_and_matches_the_readme():
    readme = (settings.BASE_DIR / "README.md").read_text()
    assert README_REGEX in readme
    for _ in range(50):
        key = tokens.generate()
        assert re.fullmatch(README_REGEX, key) and tokens.is_well_formed(key)
        assert re.search(README_REGEX, f'OPENAI_API_KEY="{key}"').group(0) == key


def test_keys_carry_at_least_180_bits_from_secrets():
    import math

    assert tokens.BODY_LENGTH * math.log2(len(tokens.ALPHABET)) >= 180
    assert len({tokens.generate() for _ in range(1000)}) == 1000


def mistyped(key: str) -> list[str]:
    body_typo = key[:20] + ("A" if key[20] != "A" else "B") + key[21:]
    return [
        body_typo,  # one character changed: the checksum no longer matches
        key[:-1] + ("0" if key[-1] != "0" else "1"),  # checksum changed
        key[:-1],  # too short
        key + "x",  # too long
        key.replace("gh_live_", "gh_test_"),  # wrong prefix
        key.upper(),
        " " + key[1:],
        "",
        "Bearer " + key,
        "gh_live_" + "é" * 46,
    ]


@pytest.mark.django_db
def test_malformed_keys_are_refused_without_any_query(world, django_assert_num_queries):
    _, key = make_key(world.org)
    for bad in mistyped(key):
        assert not tokens.is_well_formed(bad)
        with django_assert_num_queries(0):
            assert api_key_secret_for_presented(bad) is None
    with django_assert_num_queries(1):  # a well-formed key costs exactly one indexed lookup
        secret = api_key_secret_for_presented(key)
    with django_assert_num_queries(0):
        assert secret.api_key.workspace == world.org  # api_key and workspace came with it
    unknown = tokens.generate()
    with django_assert_num_queries(1):
        assert api_key_secret_for_presented(unknown) is None


def test_lookup_by_digest(world):
    api_key, key = make_key(world.org)
    assert api_key_secret_lookup(tokens.digest(key, settings.API_KEY_PEPPER)).api_key == api_key
    assert api_key_secret_lookup(tokens.digest(key, "another-pepper-" + "z" * 32)) is None


def dump_everything() -> str:
    """Every row of every table, as text, plus decoded sessions and every Redis value of this DB."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')
            chunks.append(repr(cursor.fetchall()))
    for session in Session.objects.all():
        chunks.append(repr(session.get_decoded()))
    client = redis_client()
    for name in client.scan_iter(count=1000):
        kind = client.type(name)
        if kind == b"string":
            chunks.append(repr(client.get(name)))
        elif kind == b"hash":
            chunks.append(repr(client.hgetall(name)))
    return "\n".join(chunks)


def test_no_plaintext_anywhere_after_create_and_rotate_in_the_console(world, client_for, caplog):
    scope = make_scope(world)
    client = client_for(world.developer)
    caplog.set_level(logging.DEBUG)
    response = client.post(
        reverse("api_key_create", kwargs={"ws": "acme"}),
        {
            "name": "leak-check",
            "deployments": [scope.qwen.public_id],
            "tpm_limit": "100",
            "ip_allowlist": "10.0.0.0/8",
        },
        follow=True,
    )
    assert response.status_code == 200
    key = re.search(README_REGEX, response.content.decode()).group(0)
    api_key = ApiKey.objects.get(name="leak-check")
    rotated = client.post(
        reverse("api_key_rotate", kwargs={"ws": "acme", "key": api_key.public_id}),
        {"grace": "1h", "expected_hint": api_key.hint},
        follow=True,
    )
    new_key = re.search(README_REGEX, rotated.content.decode()).group(0)
    assert new_key != key
    client.get(reverse("secrets_page", kwargs={"ws": "acme"}))
    client.get(reverse("api_key_detail", kwargs={"ws": "acme", "key": api_key.public_id}))

    dump = dump_everything()
    assert api_key.hint in dump  # the dump really contains the key's rows
    for secret in (key, new_key):
        for fragment in (secret, secret[len("gh_live_") :], secret[8:30]):
            assert fragment not in dump
            assert fragment not in caplog.text
        for hop, _status in response.redirect_chain + rotated.redirect_chain:
            assert secret not in hop
        assert secret not in str(response.headers)


def test_show_once_detail_list_and_reload_never_contain_the_secret(world, client_for):
    client = client_for(world.developer)
    url = reverse("api_key_create", kwargs={"ws": "acme"})
    response = client.post(url, {"name": "once", "all_models": "on"})
    api_key = ApiKey.objects.get(name="once")
    # Post/Redirect/Get: the POST answers with a redirect that carries no secret.
    secret_url = reverse("api_key_secret", kwargs={"ws": "acme", "key": api_key.public_id})
    assert response.status_code == 302 and response["Location"] == secret_url
    assert not re.search(README_REGEX, response.content.decode())
    # In the session until shown, and only encrypted: the database never holds it in plaintext.
    assert ONE_TIME_SECRET in client.session
    shown = client.get(secret_url)
    html = shown.content.decode()
    key = re.search(README_REGEX, html).group(0)
    assert shown.status_code == 200 and "only time the key is shown" in html
    assert "no-store" in shown["Cache-Control"]
    # Shown once: gone from the session (and so from the session table) as soon as it was displayed.
    assert ONE_TIME_SECRET not in client.session
    assert key not in dump_everything() and key[8:30] not in dump_everything()
    reload = client.get(secret_url, follow=True)
    assert reload.redirect_chain[-1][0] == reverse("api_key_detail", kwargs={"ws": "acme", "key": api_key.public_id})
    assert "was shown once and cannot be shown again" in reload.content.decode()
    pages = [
        reload,
        client.get(reverse("secrets_page", kwargs={"ws": "acme"})),
        client.get(reverse("api_key_detail", kwargs={"ws": "acme", "key": api_key.public_id})),
        client.get(reverse("api_key_edit", kwargs={"ws": "acme", "key": api_key.public_id})),
        client.get(url),  # the form again
        client.post(url, {"name": "once", "all_models": "on"}),  # a second submit of the same form
    ]
    for page in pages:
        assert key not in page.content.decode()
        assert key[-12:] not in page.content.decode()
    assert api_key.hint in pages[0].content.decode() and api_key.hint in pages[1].content.decode()
    assert pages[-1].status_code == 400 and "already exists" in pages[-1].content.decode()
    assert ApiKey.objects.filter(name="once").count() == 1


def test_reloading_the_rotation_result_does_not_rotate_again(world, client_for):
    api_key, _ = make_key(world.org)
    client = client_for(world.developer)
    url = reverse("api_key_rotate", kwargs={"ws": "acme", "key": api_key.public_id})
    form = {"grace": "24h", "expected_hint": api_key.hint}
    first = client.post(url, form, follow=True)
    assert first.status_code == 200 and "no-store" in first["Cache-Control"]
    key = re.search(README_REGEX, first.content.decode()).group(0)
    again = client.post(url, form, follow=True)
    assert key not in again.content.decode() and "rotated since this page was loaded" in again.content.decode()
    assert api_key.secrets.count() == 2
