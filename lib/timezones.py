"""The time zones people choose from: canonical IANA zones, grouped by region.

zoneinfo.available_timezones() also returns the database's backward-compatible aliases
("US/Eastern", "Asia/Calcutta", "Etc/GMT+5", "Zulu"): 599 names where about 420 are real places.
zone.tab lists each zone a country uses once, under its current name; without it (a system
without tzdata's tables), the Area/Location names of the regions below are used instead.
"""

from __future__ import annotations

import zoneinfo
from functools import cache
from pathlib import Path

REGIONS = ("Africa", "America", "Antarctica", "Arctic", "Asia", "Atlantic", "Australia", "Europe", "Indian", "Pacific")


def _zone_tab() -> set[str]:
    for root in zoneinfo.TZPATH:
        path = Path(root) / "zone.tab"
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            return {line.split("\t")[2] for line in lines if line and not line.startswith("#")}
    return set()


@cache
def canonical_time_zones() -> list[str]:
    available = zoneinfo.available_timezones()
    zones = _zone_tab() & available or {tz for tz in available if tz.split("/", 1)[0] in REGIONS and "/" in tz}
    return sorted(zones)


def time_zone_label(tz: str) -> str:
    """'America/Argentina/Buenos_Aires' -> 'America / Argentina / Buenos Aires' (a closed select shows no group)."""
    return tz.replace("_", " ").replace("/", " / ")


def time_zone_choices(current: str | None = None) -> list:
    """UTC first, then one group per region; `current` is kept if it is a legacy name already in use."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for tz in canonical_time_zones():
        groups.setdefault(tz.split("/", 1)[0], []).append((tz, time_zone_label(tz)))
    choices: list = [("UTC", "UTC")]
    if current and current != "UTC" and current not in canonical_time_zones() and current in zoneinfo.available_timezones():
        choices.append((current, f"{current} (current, an older name)"))
    choices.extend((region, groups[region]) for region in sorted(groups))
    return choices
