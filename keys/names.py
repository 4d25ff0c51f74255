"""The rule for API key names: pure, no database (uniqueness is checked by the service).

A name is 1–64 characters from a small ASCII set: letters A–Z a–z, digits 0–9 and - _ . : @,
starting with a letter or digit. The seed documents only forbid space, # and ?; we go further
because names appear in audit logs, CLI arguments (`--name`) and search: a narrow ASCII set
rules out look-alike names (Cyrillic "о" in "prоd"), invisible and bidirectional control
characters, and names that look like command-line flags.
"""

from __future__ import annotations

import re
import unicodedata

from django.core.exceptions import ValidationError

MAX_NAME_LENGTH = 64
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]*")
NAME_HELP = (
    "1–64 characters: letters A–Z and a–z, digits 0–9, and - _ . : @ — starting with a letter or digit. "
    "Spaces, # and ? are not allowed. The name cannot be changed later."
)
_ALLOWED = "letters A–Z, digits 0–9 and - _ . : @"


def describe_character(ch: str) -> str:
    """How an error message names a character: readable, and never an invisible one printed raw."""
    if ch == " ":
        return "a space"
    if ch.isprintable() and not ch.isspace():
        return f"“{ch}”"
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X}" + (f" ({name.lower()})" if name else "")


def validate_key_name(name: str) -> None:
    if not name:
        raise ValidationError("Enter a name.", code="required")
    if len(name) > MAX_NAME_LENGTH:
        raise ValidationError(f"Use at most {MAX_NAME_LENGTH} characters (this name has {len(name)}).", code="max_length")
    for ch in name:
        if not NAME_RE.fullmatch("a" + ch):
            raise ValidationError(f"The name may not contain {describe_character(ch)}. Use {_ALLOWED}.", code="invalid_character")
    if not NAME_RE.fullmatch(name):
        raise ValidationError(f"Start the name with a letter or digit (not {describe_character(name[0])}).", code="invalid_start")
