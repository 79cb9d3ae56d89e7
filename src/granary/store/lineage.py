"""What a version was derived from, read from its lineage record (tokenize, curate, any transform)."""

from __future__ import annotations

from typing import Any

from granary.store.names import looks_like_version_id


def lineage_sources(lineage: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The source version ids and dataset names a lineage record names (tokenize, curate, transforms)."""
    ids: list[str] = []
    names: list[str] = []
    given = lineage.get("input")
    found: dict[str, Any] = given if isinstance(given, dict) else {}
    for value in (lineage.get("inputs"), found.get("input_version"), lineage.get("input_version")):
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and len(item) == 64 and looks_like_version_id(item):
                ids.append(item)
    for value in (found.get("input_dataset"), lineage.get("input_dataset"), lineage.get("sources")):
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item:
                names.append(item.partition("@")[0])
    return ids, names
