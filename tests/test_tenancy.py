from __future__ import annotations

import pytest
from django.urls import reverse

from console.models import AuditEvent, Invitation, Membership, Role, User, Workspace
from tests.factories import page_without_per_request_tokens


def test_owner_sees_default_and_sub_workspaces_in_switcher(world, client_for):
    response = client_for(world.owner).get(reverse("workspace_overview", kwargs={"ws": "acme"}))
    assert response.status_code == 200
    assert [w.slug for w in response.context["switcher_workspaces"]] == ["acme", "acme-research"]


def test_sub_workspace_member_sees_only_their_sub_workspace(world, client_for):
    client = client_for(world.sub_member)
    assert client.get(reverse("workspace_overview", kwargs={"ws": "acme-research"})).status_code == 200
    assert client.get(reverse("workspace_overview", kwargs={"ws": "acme"})).status_code == 404
    response = client.get(reverse("home"))
    assert response.url == reverse("workspace_overview", kwargs={"ws": "acme-research"})


def test_developer_of_default_does_not_see_into_sub_workspaces(world, client_for):
    assert client_for(world.developer).get(reverse("members_page", kwargs={"ws": "acme-research"})).status_code == 404


def test_outsider_gets_404_exactly_like_a_missing_workspace(world, client_for):
    client = client_for(world.outsider)
    existing = client.get(reverse("members_page", kwargs={"ws": "acme"}))
    missing = client.get(reverse("members_page", kwargs={"ws": "no-such-workspace"}))
    assert existing.status_code == missing.status_code == 404
    assert page_without_per_request_tokens(existing.content) == page_without_per_request_tokens(missing.content)
    assert b'nonce=""' in page_without_per_request_tokens(missing.content)


# Role matrix: (url name, method, minimum role). Each row is checked for every role below.
MATRIX = [
    ("workspace_overview", "get", Role.VIEWER),
    ("members_page", "get", Role.VIEWER),
    ("audit_page", "get", Role.VIEWER),
    ("workspace_settings", "get", Role.ADMIN),
    ("sub_workspace_create", "get", Role.ADMIN),
    ("invitation_create", "post", Role.ADMIN),
    ("member_create", "post", Role.ADMIN),
]
RANK = {"viewer": 1, "developer": 2, "admin": 3, "owner": 4}


@pytest.mark.parametrize(("name", "method", "min_role"), MATRIX)
@pytest.mark.parametrize("who", ["owner", "admin", "developer", "viewer", "outsider", "sub_member"])
def test_role_matrix_on_default_workspace(world, client_for, name, method, min_role, who):
    client = client_for(world.user(who))
    response = getattr(client, method)(reverse(name, kwargs={"ws": "acme"}), {})
    if who in ("outsider", "sub_member"):
        assert response.status_code == 404
    elif RANK[who] >= RANK[min_role]:
        assert response.status_code in (200, 302, 400)
    else:
        assert response.status_code == 403


@pytest.mark.parametrize(
    ("who", "expected"), [("owner", 200), ("admin", 200), ("developer", 404), ("viewer", 404), ("sub_member", 403), ("outsider", 404)]
)
def test_sub_workspace_settings_are_managed_by_default_admins(world, client_for, who, expected):
    response = client_for(world.user(who)).get(reverse("workspace_settings", kwargs={"ws": "acme-research"}))
    assert response.status_code == expected


def test_admin_creates_sub_workspace_and_it_is_audited(world, client_for):
    client = client_for(world.admin)
    response = client.post(
        reverse("sub_workspace_create", kwargs={"ws": "acme"}), {"name": "Sales Team", "slug": "", "time_zone": "Asia/Tokyo"}
    )
    assert response.status_code == 302
    sales = Workspace.objects.get(slug="sales-team")
    assert sales.parent == world.org and sales.time_zone == "Asia/Tokyo"
    assert AuditEvent.objects.filter(workspace=world.org, action="sub_workspace.created", actor=world.admin).exists()
    assert AuditEvent.objects.filter(workspace=sales, action="workspace.created").exists()


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"name": "Research", "slug": "acme-research", "time_zone": "UTC"}, "slug", "already taken"),
        ({"name": "", "slug": "", "time_zone": "UTC"}, "name", "required"),
        ({"name": "   ", "slug": "", "time_zone": "UTC"}, "name", "required"),
        ({"name": "Ops", "slug": "Not A Slug!", "time_zone": "UTC"}, "slug", "lowercase letters, digits and hyphens"),
        ({"name": "Ops", "slug": "ops", "time_zone": "Mars/Olympus"}, "time_zone", "valid choice"),
    ],
)
def test_bad_sub_workspace_input_changes_nothing(world, client_for, data, field, message):
    before = Workspace.objects.count(), AuditEvent.objects.count()
    response = client_for(world.owner).post(reverse("sub_workspace_create", kwargs={"ws": "acme"}), data)
    assert response.status_code == 200
    assert message in " ".join(response.context["form"].errors[field])
    assert (Workspace.objects.count(), AuditEvent.objects.count()) == before


def test_sub_workspaces_cannot_nest(world, client_for):
    response = client_for(world.owner).post(
        reverse("sub_workspace_create", kwargs={"ws": "acme-research"}), {"name": "Deep", "time_zone": "UTC"}
    )
    assert response.status_code == 403
    assert not Workspace.objects.filter(name="Deep").exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"email": "not-an-email", "role": "viewer"}, "valid email"),
        ({"email": "dev@example.com", "role": "viewer"}, "already a member"),
        ({"email": "nina@example.com", "role": "superuser"}, "valid choice"),
        ({"email": "nina@example.com", "role": "owner"}, "valid choice"),  # admins cannot hand out ownership
    ],
)
def test_bad_invitation_changes_nothing(world, client_for, data, message, mailoutbox):
    before = Membership.objects.count(), AuditEvent.objects.count(), Invitation.objects.count()
    response = client_for(world.admin).post(reverse("invitation_create", kwargs={"ws": "acme"}), data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert (Membership.objects.count(), AuditEvent.objects.count(), Invitation.objects.count()) == before
    assert mailoutbox == []


def test_member_created_with_one_time_password_must_change_it(world, client_for, client):
    response = client_for(world.owner).post(
        reverse("member_create", kwargs={"ws": "acme"}), {"username": "newbie", "email": "", "role": "developer"}
    )
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0") or "no-store" in response["Cache-Control"]
    password = response.context["password"]
    user = User.objects.get(username="newbie")
    assert user.must_change_password and user.check_password(password)
    assert password not in user.password  # stored hashed
    client.logout()
    assert client.login(username="newbie", password=password)
    assert client.get(reverse("workspace_overview", kwargs={"ws": "acme"})).url == reverse("password_change")
    response = client.post(
        reverse("password_change"),
        {"oldpassword": password, "password1": "a-new-long-password-1", "password2": "a-new-long-password-1"},
    )
    assert response.status_code == 302
    user.refresh_from_db()
    assert not user.must_change_password
    assert client.get(reverse("workspace_overview", kwargs={"ws": "acme"})).status_code == 200


def test_role_change_is_audited(world, client_for):
    membership = Membership.objects.get(workspace=world.org, user=world.viewer)
    response = client_for(world.admin).post(
        reverse("member_role", kwargs={"ws": "acme", "member": membership.public_id}), {"role": "developer"}
    )
    assert response.status_code == 302
    membership.refresh_from_db()
    assert membership.role == Role.DEVELOPER
    assert AuditEvent.objects.filter(action="member.role_changed", details__to="developer", actor=world.admin).exists()


def test_last_owner_cannot_be_removed_or_demoted(world, client_for):
    owner_membership = Membership.objects.get(workspace=world.org, user=world.owner)
    client = client_for(world.owner)
    before = AuditEvent.objects.count()
    client.post(reverse("member_remove", kwargs={"ws": "acme", "member": owner_membership.public_id}))
    response = client.post(
        reverse("member_role", kwargs={"ws": "acme", "member": owner_membership.public_id}), {"role": "admin"}, follow=True
    )
    assert "last owner" in response.content.decode()
    owner_membership.refresh_from_db()
    assert owner_membership.role == Role.OWNER
    assert AuditEvent.objects.count() == before


def test_second_owner_makes_removal_possible(world, client_for):
    admin_membership = Membership.objects.get(workspace=world.org, user=world.admin)
    client = client_for(world.owner)
    client.post(reverse("member_role", kwargs={"ws": "acme", "member": admin_membership.public_id}), {"role": "owner"})
    owner_membership = Membership.objects.get(workspace=world.org, user=world.owner)
    client.post(reverse("member_remove", kwargs={"ws": "acme", "member": owner_membership.public_id}))
    assert not Membership.objects.filter(pk=owner_membership.pk).exists()
    assert AuditEvent.objects.filter(action="member.removed", details__user="olivia").exists()


def test_admin_cannot_touch_an_owner(world, client_for):
    owner_membership = Membership.objects.get(workspace=world.org, user=world.owner)
    client = client_for(world.admin)
    client.post(reverse("member_remove", kwargs={"ws": "acme", "member": owner_membership.public_id}))
    client.post(reverse("member_role", kwargs={"ws": "acme", "member": owner_membership.public_id}), {"role": "viewer"})
    owner_membership.refresh_from_db()
    assert owner_membership.role == Role.OWNER


def test_viewer_posting_a_form_gets_403_and_changes_nothing(world, client_for):
    membership = Membership.objects.get(workspace=world.org, user=world.developer)
    client = client_for(world.viewer)
    before = Membership.objects.count(), AuditEvent.objects.count()
    assert client.post(reverse("member_role", kwargs={"ws": "acme", "member": membership.public_id}), {"role": "admin"}).status_code == 403
    assert client.post(reverse("member_remove", kwargs={"ws": "acme", "member": membership.public_id})).status_code == 403
    assert client.post(reverse("invitation_create", kwargs={"ws": "acme"}), {"email": "x@example.com", "role": "viewer"}).status_code == 403
    assert (Membership.objects.count(), AuditEvent.objects.count()) == before


def test_membership_of_another_workspace_is_404(world, client_for):
    # A real membership id, but from a workspace other than the one in the URL.
    response = client_for(world.owner).post(reverse("member_remove", kwargs={"ws": "acme", "member": world.sub_membership.public_id}))
    assert response.status_code == 404
    assert Membership.objects.filter(pk=world.sub_membership.pk).exists()


def test_settings_change_is_audited(world, client_for):
    response = client_for(world.owner).post(
        reverse("workspace_settings", kwargs={"ws": "acme"}), {"name": "Acme Corp", "time_zone": "Europe/Paris"}
    )
    assert response.status_code == 302
    world.org.refresh_from_db()
    assert (world.org.name, world.org.time_zone) == ("Acme Corp", "Europe/Paris")
    assert AuditEvent.objects.get(action="workspace.updated").details == {
        "name": ["Acme", "Acme Corp"],
        "time_zone": ["UTC", "Europe/Paris"],
    }


def test_audit_page_lists_events(world, client_for):
    response = client_for(world.viewer).get(reverse("audit_page", kwargs={"ws": "acme"}))
    assert response.status_code == 200
    assert b"member.added" in response.content


@pytest.mark.parametrize("name", ["workspace_overview", "members_page", "audit_page"])
def test_list_pages_query_counts_are_locked(world, client_for, django_assert_max_num_queries, name):
    client = client_for(world.owner)
    # The overview also asks, for admins, whether usage reconciliation found drift (one query);
    # every shell page reads the budgets for its banner (one query).
    with django_assert_max_num_queries(11 if name == "workspace_overview" else 9):
        assert client.get(reverse(name, kwargs={"ws": "acme"})).status_code == 200
