"""A check over the whole test run: no log written by the run's server processes (gateways, web,
workers, `make run`, the container's roles) contains a key the run created.

conftest.py wires it up: `record_created_keys()` at start-up wraps keys.tokens.generate, so every
key a test or the in-process console creates is remembered; at the end, `find_leaks()` reads every
*.log file under var/test/ and the run's pytest temporary directory written since the run began,
and a leak fails the run (exit status 1) with the file names (never the keys) printed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from pathlib import Path

KEY = re.compile(rb"gh_(?:live|admin)_[0-9A-Za-z]{46}")  # application and admin keys
created: set[str] = set()
STARTED = time.time()


def record_created_keys() -> None:
    from keys import tokens

    original = tokens.generate
    if getattr(original, "records_keys", False):
        return

    def generate(*args) -> str:
        key = original(*args)
        created.add(key)
        return key

    generate.records_keys = True  # type: ignore[attr-defined]
    tokens.generate = generate


def log_files(roots: Iterable[Path], since: float, pattern: str = "*.log") -> list[Path]:
    files = []
    for root in roots:
        if root.is_dir():
            files.extend(p for p in root.rglob(pattern) if p.is_file() and p.stat().st_mtime >= since)
    return files


def find_leaks(files: Iterable[Path], keys: set[str]) -> dict[Path, int]:
    """Files that contain any of `keys`, with how many different keys each holds."""
    wanted = {k.encode() for k in keys}
    leaks = {}
    for path in files:
        found = set(KEY.findall(path.read_bytes())) & wanted
        if found:
            leaks[path] = len(found)
    return leaks
