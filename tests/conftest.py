from __future__ import annotations

import pytest

from console.audit import Actor
from console.models import Role, User
from console.services import membership_add, workspace_create

PASSWORD = "correct-horse-battery"


class World:
    """One fixture world: an organisation with a sub-workspace, people in every role, and an outsider."""

    def __init__(self):
        actor = Actor.system("tests")
        make = lambda name: User.objects.create_user(name, f"{name}@example.com", PASSWORD)  # noqa: E731
        self.owner, self.admin, self.developer, self.viewer = make("olivia"), make("adam"), make("dev"), make("vera")
        self.sub_member, self.outsider = make("sam"), make("oscar")
        self.org = workspace_create(name="Acme", slug="acme", actor=actor, owner=self.owner)
        self.sub = workspace_create(name="Research", slug="acme-research", parent=self.org, actor=actor)
        self.other_org = workspace_create(name="Globex", slug="globex", actor=actor, owner=self.outsider)
        membership_add(workspace=self.org, user=self.admin, role=Role.ADMIN, actor=actor)
        membership_add(workspace=self.org, user=self.developer, role=Role.DEVELOPER, actor=actor)
        membership_add(workspace=self.org, user=self.viewer, role=Role.VIEWER, actor=actor)
        self.sub_membership = membership_add(workspace=self.sub, user=self.sub_member, role=Role.DEVELOPER, actor=actor)

    def user(self, role: str) -> User | None:
        return {"owner": self.owner, "admin": self.admin, "developer": self.developer, "viewer": self.viewer,
                "outsider": self.outsider, "sub_member": self.sub_member, "anonymous": None}[role]


@pytest.fixture
def world(db) -> World:
    return World()


@pytest.fixture
def client_for(client):
    def login(user):
        client.logout()
        if user is not None:
            client.force_login(user)
        return client

    return login
