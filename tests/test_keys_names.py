"""The API key name rule: a table of good and bad names, checked at every layer that takes a name."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from keys.models import ApiKey, ApiKeyKind
from keys.names import NAME_HELP, validate_key_name
from tests.keys_helpers import make_key

GOOD = [
    "a",
    "7",
    "prod",
    "Prod-EU_2",
    "billing.worker",
    "svc:ingest",
    "ci@github",
    "a-",  # only the first character is restricted
    "x" * 64,
    "A1_-.:@z",
]

BAD = [
    ("", "Enter a name."),
    ("x" * 65, "Use at most 64 characters (this name has 65)."),
    ("my key", "The name may not contain a space."),
    (" prod", "The name may not contain a space."),
    ("prod ", "The name may not contain a space."),
    ("key#1", "The name may not contain “#”."),
    ("what?", "The name may not contain “?”."),
    ("a/b", "The name may not contain “/”."),
    ("a\\b", "The name may not contain “\\”."),
    ("50%", "The name may not contain “%”."),
    ("a*b", "The name may not contain “*”."),
    ("<script>", "The name may not contain “<”."),
    ("café", "The name may not contain “é”."),
    ("prоd", "The name may not contain “о”."),  # Cyrillic о: a look-alike
    ("tab\there", "The name may not contain U+0009."),
    ("zero\u200bwidth", "The name may not contain U+200B (zero width space)."),
    ("rtl\u202eexe", "The name may not contain U+202E (right-to-left override)."),
    ("-flag", "Start the name with a letter or digit (not “-”)."),
    ("_x", "Start the name with a letter or digit (not “_”)."),
    ("@team", "Start the name with a letter or digit (not “@”)."),
]


@pytest.mark.parametrize("name", GOOD)
def test_good_names_pass(name):
    validate_key_name(name)


@pytest.mark.parametrize(("name", "message"), BAD)
def test_bad_names_are_refused_with_the_offending_character_named(name, message):
    with pytest.raises(ValidationError) as exc:
        validate_key_name(name)
    assert exc.value.messages[0].startswith(message), exc.value.messages
    if "may not contain" in message:
        assert "Use letters A–Z, digits 0–9 and - _ . : @." in exc.value.messages[0]


def test_help_text_states_the_allowed_characters():
    assert "letters A–Z and a–z, digits 0–9, and - _ . : @" in NAME_HELP
    assert "Spaces, # and ? are not allowed" in NAME_HELP


@pytest.mark.parametrize(("name", "message"), BAD[:8])
def test_service_refuses_bad_names_and_stores_nothing(world, name, message):
    with pytest.raises(ValidationError) as exc:
        make_key(world.org, name=name)
    assert exc.value.message_dict["name"][0].startswith(message)
    assert not ApiKey.objects.exists()


def test_names_are_unique_per_workspace_ignoring_case(world):
    make_key(world.org, name="Prod")
    with pytest.raises(ValidationError) as exc:
        make_key(world.org, name="prod")
    assert exc.value.message_dict["name"] == ["A key named “prod” already exists in this workspace."]
    make_key(world.sub, name="prod")  # another workspace may use it
    assert ApiKey.objects.filter(name__iexact="prod").count() == 2


def test_hidden_test_call_keys_do_not_take_names(world):
    make_key(world.org, name="console-test-call", kind=ApiKeyKind.TEST_CALL)
    make_key(world.org, name="console-test-call")
    assert ApiKey.objects.filter(workspace=world.org).count() == 2


def test_database_enforces_case_insensitive_uniqueness(world):
    from django.db import IntegrityError

    api_key, _ = make_key(world.org, name="Prod")
    twin = ApiKey(workspace=world.org, name="PROD", hint="x")
    with pytest.raises(IntegrityError):
        twin.save()
