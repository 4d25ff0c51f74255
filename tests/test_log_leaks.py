"""The run-wide log check (tests/log_leaks.py) really sees keys the run created."""

from __future__ import annotations

import os
import time

from keys import tokens
from tests import log_leaks


def test_keys_created_in_this_run_are_recorded_and_found_in_a_log(tmp_path):
    key = tokens.generate()
    other = "gh_live_" + "A" * 46  # key-shaped, but not created by this run
    assert key in log_leaks.created and other not in log_leaks.created

    # Planted as *.txt, so the run-wide check at the end of this run does not trip over them.
    leaky, clean, old = tmp_path / "web.txt", tmp_path / "worker.txt", tmp_path / "old.txt"
    leaky.write_text(f"GET /v1/models?api_key={key} 400\n")
    clean.write_text(f"GET /v1/models 400 gh_live_[redacted] {other}\n")
    old.write_text(key)
    os.utime(old, (time.time() - 3600, time.time() - 3600))

    files = log_leaks.log_files([tmp_path], since=time.time() - 60, pattern="*.txt")
    assert sorted(p.name for p in files) == ["web.txt", "worker.txt"]
    assert log_leaks.find_leaks(files, log_leaks.created) == {leaky: 1}
