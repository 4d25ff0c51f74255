from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from console.audit import Actor
from console.models import User, Workspace, slug_from_name
from console.services import workspace_create


class Command(BaseCommand):
    help = "Create a default workspace, or a sub-workspace with --parent."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--slug", help="Defaults to a slug of the name.")
        parser.add_argument("--parent", metavar="SLUG", help="Slug of the default workspace this is a sub-workspace of.")
        parser.add_argument("--owner", metavar="USERNAME", help="An existing user who becomes the owner.")
        parser.add_argument("--time-zone", default="UTC")

    def handle(self, *args, name, slug, parent, owner, time_zone, **options):
        parent_ws = None
        if parent:
            parent_ws = Workspace.objects.filter(slug=parent).first()
            if parent_ws is None:
                raise CommandError(f"No workspace with slug {parent!r}.")
        owner_user = None
        if owner:
            owner_user = User.objects.filter(username=owner).first()
            if owner_user is None:
                raise CommandError(f"No user {owner!r}. Create it first (manage.py createsuperuser or the Members page).")
        slug = slug or slug_from_name(name)
        if not slug:
            raise CommandError("Give a --slug: none can be made from this name.")
        try:
            workspace = workspace_create(
                name=name,
                slug=slug,
                parent=parent_ws,
                time_zone=time_zone,
                owner=owner_user,
                actor=Actor.system("manage.py create_workspace"),
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        kind = f"sub-workspace of {parent_ws.slug}" if parent_ws else "default workspace"
        self.stdout.write(f"Created {kind} {workspace.name!r}")
        self.stdout.write(workspace.slug)
