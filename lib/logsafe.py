"""What a request may put into a log line (shared by the console's and the gateway's access logs)."""

from __future__ import annotations

import re

_KEY = re.compile(r"gh_live_[0-9A-Za-z]+")


def loggable_path(path: str) -> str:
    """A request path fit for a log line: bounded, never a query string (callers pass the ASGI
    path, which has none), and anything shaped like an access key replaced, so a key pasted into
    a URL path does not reach the log either."""
    return redact_keys(path[:200])


def redact_keys(text: str) -> str:
    return _KEY.sub("gh_live_[redacted]", text) if "gh_live_" in text else text
