"""Logging pieces for the console: what a log line may carry, and how much of it."""

from __future__ import annotations

import logging

from lib.logsafe import redact_keys


class DropClientErrorTracebacks(logging.Filter):
    """Django logs every 4xx it turned from an exception (PermissionDenied, Http404, ...) with that
    exception's traceback. A 403 is an expected answer, not a fault: keep the one-line warning
    ("Forbidden (Permission denied): /w/acme/settings/"), drop the traceback. 5xx keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if status is not None and status < 500:
            record.exc_info = None
            record.exc_text = None
        return True


class RedactKeys(logging.Filter):
    """On the log handler: whatever a message quotes (Django's "Not Found: <path>", an exception's
    text), anything shaped like an access key is replaced before the line is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "gh_live_" in message:
            record.msg, record.args = redact_keys(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and "gh_live_" in record.exc_text:
            record.exc_text = redact_keys(record.exc_text)
        return True
