"""Words on the console's pages say what the product does (issue 16's confusing wording)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from console.audit import Actor
from console.forms import WorkspaceForm
from console.models import Workspace
from console.services import workspace_create
from tests.factories import make_key

pytestmark = pytest.mark.django_db


def test_key_form_says_out_of_scope_calls_get_404_as_the_gateway_answers(client_for, world):
    body = client_for(world.owner).get("/w/acme/secrets/new/").content.decode()
    assert "refused with 403" not in body
    assert "answered 404 <code>model_not_found</code>" in body


def test_slug_help_error_and_validator_agree(client_for, world):
    help_text = WorkspaceForm().fields["slug"].help_text
    assert help_text.startswith("Lowercase letters, digits and hyphens.")
    client = client_for(world.owner)
    for bad in ["Sales", "sales_team", "-sales", "sales-"]:
        response = client.post("/w/acme/sub-workspaces/new/", {"name": "Sales", "slug": bad, "time_zone": "UTC"})
        assert response.status_code == 200, bad
        errors = response.context["form"].errors["slug"]
        assert errors == ["Use only lowercase letters, digits and hyphens (no hyphen at either end), e.g. “marketing-team”."], bad
        assert not Workspace.objects.filter(name="Sales").exists()
    # A slug made from the name obeys the same rule, underscores included.
    response = client.post("/w/acme/sub-workspaces/new/", {"name": "Marketing_Team 2", "slug": "", "time_zone": "UTC"})
    assert response.status_code == 302
    assert Workspace.objects.get(name="Marketing_Team 2").slug == "marketing-team-2"
    # The service holds the rule for every other caller (commands, the admin API).
    with pytest.raises(ValidationError) as refused:
        workspace_create(name="X", slug="Bad_Slug", parent=world.org, actor=Actor.system("tests"))
    assert "lowercase letters, digits and hyphens" in str(refused.value)


def test_key_description_shows_code_spans_not_backticks(client_for, world):
    key, _ = make_key(world.org, name="demo", description="Labels traffic seeded by `make run` <b>not bold</b>.")
    client = client_for(world.owner)
    detail = client.get(f"/w/acme/secrets/{key.public_id}/").content.decode()
    assert "Labels traffic seeded by <code>make run</code> &lt;b&gt;not bold&lt;/b&gt;." in detail
    listing = client.get("/w/acme/secrets/").content.decode()
    assert "<code>make run</code>" in listing and "`make run`" not in listing
    assert 'title="Labels traffic seeded by make run &lt;b&gt;not bold&lt;/b&gt;."' in listing


def test_estimated_tokens_do_not_read_as_no_usage(client_for, world):
    body = client_for(world.owner).get("/w/acme/usage/").content.decode()
    assert "upstream reported no usage" not in body
    assert "counted by Gatehouse where the upstream sent no token counts" in body


@pytest.mark.parametrize(("temperature", "valid"), [("0", True), ("1.99", True), ("2", False), ("2.5", False), ("-0.1", False)])
def test_test_call_form_takes_the_gateways_temperature_range(temperature, valid):
    from deployments.forms import TestCallForm

    form = TestCallForm({"prompt": "Hello", "temperature": temperature})
    assert form.is_valid() is valid
    if temperature == "2":
        assert form.errors["temperature"] == ["Must be below 2: the gateway takes temperatures from 0 up to, not including, 2."]


def test_time_zones_are_canonical_and_grouped_by_region():
    from lib.timezones import canonical_time_zones, time_zone_choices

    zones = canonical_time_zones()
    assert "Asia/Kolkata" in zones and "Europe/Berlin" in zones and "America/Argentina/Buenos_Aires" in zones
    for alias in ["Asia/Calcutta", "US/Eastern", "Etc/GMT+5", "Europe/Kiev", "Zulu", "GB"]:
        assert alias not in zones
    assert len(zones) < 450  # not the 599 names zoneinfo knows, aliases included
    choices = time_zone_choices()
    assert choices[0] == ("UTC", "UTC")
    groups = dict(choices[1:])
    assert ("Asia/Kolkata", "Asia / Kolkata") in groups["Asia"]
    assert ("America/Argentina/Buenos_Aires", "America / Argentina / Buenos Aires") in groups["America"]


def test_settings_keep_a_legacy_time_zone_already_in_use(client_for, world):
    world.org.time_zone = "US/Eastern"
    world.org.save(update_fields=["time_zone"])
    client = client_for(world.owner)
    body = client.get("/w/acme/settings/").content.decode()
    assert '<option value="US/Eastern" selected>US/Eastern (current, an older name)</option>' in body
    assert '<optgroup label="Europe">' in body and 'data-searchable="time zones"' in body
    # The create form offers only canonical names.
    create = client.get("/w/acme/sub-workspaces/new/").content.decode()
    assert "US/Eastern" not in create and "Asia/Calcutta" not in create and '<option value="Asia/Kolkata">Asia / Kolkata</option>' in create
