from __future__ import annotations

from django import forms
from django.contrib.auth.validators import UnicodeUsernameValidator

from console.models import WORKSPACE_SLUG_HELP, Role, Theme, User, Workspace, slug_from_name, validate_workspace_slug
from lib.timezones import time_zone_choices

# app.js adds a search box in front of a select marked data-searchable (the select works without it).
TIME_ZONE_WIDGET = forms.Select(attrs={"data-searchable": "time zones"})


class WorkspaceForm(forms.Form):
    name = forms.CharField(max_length=80, strip=True)
    slug = forms.CharField(
        max_length=50,
        required=False,
        validators=[validate_workspace_slug],
        help_text=f"{WORKSPACE_SLUG_HELP}. Left empty, it is made from the name.",
    )
    time_zone = forms.ChoiceField(
        choices=time_zone_choices,
        initial="UTC",
        widget=TIME_ZONE_WIDGET,
        help_text="Days and years of usage and billing are counted in this time zone.",
    )

    def clean(self):
        data = super().clean()
        if "name" in data and not data.get("slug"):
            data["slug"] = slug_from_name(data["name"])
            if not data["slug"]:
                self.add_error("slug", "Could not make a slug from this name; please enter one.")
        if data.get("slug") and Workspace.objects.filter(slug=data["slug"]).exists():
            self.add_error("slug", f"The slug “{data['slug']}” is already taken.")
        return data


class WorkspaceSettingsForm(forms.Form):
    name = forms.CharField(max_length=80, strip=True)
    time_zone = forms.ChoiceField(choices=time_zone_choices, widget=TIME_ZONE_WIDGET)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A workspace saved under an older alias ("US/Eastern") keeps it until someone picks another.
        self.fields["time_zone"].choices = time_zone_choices(current=self.initial.get("time_zone"))


class RoleField(forms.ChoiceField):
    def __init__(self, roles: list[Role], **kwargs):
        super().__init__(choices=[(r.value, r.label) for r in roles], **kwargs)

    def clean(self, value):
        return Role(super().clean(value))


class InvitationForm(forms.Form):
    email = forms.EmailField(max_length=254)
    role = forms.ChoiceField()

    def __init__(self, *args, roles: list[Role], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"] = RoleField(roles, initial=Role.DEVELOPER)


class SsoMappingForm(forms.Form):
    group = forms.CharField(
        label="Identity-provider group", max_length=200, strip=True, help_text="The value as it appears in the token's groups claim."
    )
    role = forms.ChoiceField()

    def __init__(self, *args, roles: list[Role], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"] = RoleField(roles, initial=Role.DEVELOPER)


class RequireMfaForm(forms.Form):
    require_mfa = forms.BooleanField(
        required=False,
        label="Require two-factor authentication",
        help_text="Every member of this workspace and its sub-workspaces must set up an authenticator app or a passkey before using the console.",
    )


class MemberCreateForm(forms.Form):
    username = forms.CharField(
        max_length=150, validators=[UnicodeUsernameValidator()], strip=True, help_text="Letters, digits and @ . + - _ only."
    )
    email = forms.EmailField(required=False)
    role = forms.ChoiceField()

    def __init__(self, *args, roles: list[Role], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"] = RoleField(roles, initial=Role.DEVELOPER)

    def clean_username(self) -> str:
        username = self.cleaned_data["username"]
        if User.objects.filter(username__iexact=username).exists():
            raise forms.ValidationError(f"The username “{username}” is not available. Choose another, or invite the person by email.")
        return username


class MemberRoleForm(forms.Form):
    def __init__(self, *args, roles: list[Role], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"] = RoleField(roles)


class ThemeForm(forms.Form):
    theme = forms.ChoiceField(choices=Theme.choices)
