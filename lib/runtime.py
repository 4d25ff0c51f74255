"""Process-level tuning shared by the web entry points (and the benchmarks that stand in for them)."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Move everything allocated while loading the app (Django, its URLconf, templates, the gateway)
    into the collector's permanent generation. A full collection then walks only what requests
    allocate: on a year-long usage dashboard that cut the p95 from ~150 to ~125 ms
    (docs/BENCHMARKS.md, "Dashboards"). Objects frozen here are never freed, which is right for
    module-level state that lives as long as the process anyway."""
    gc.collect()
    gc.freeze()
