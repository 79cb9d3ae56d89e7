"""YAML job specs: one job, or a DAG of jobs whose ``depends_on`` names other jobs in the same file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from granary.catalog import Catalog
from granary.sched.errors import InvalidJobError
from granary.sched.journal import submit_job
from granary.sched.model import JobSpec


def load_specs(path: str | Path) -> list[JobSpec]:
    """Read a YAML file holding one job mapping or ``jobs: [...]``; specs come back in file order.

    Raises:
        InvalidJobError: unreadable YAML, an unknown field, a bad value, or a dependency that names no
            earlier job of the file (the message names the file and the job).
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidJobError("-", f"cannot be read: {exc}", source=str(path)) from exc
    items = data.get("jobs") if isinstance(data, dict) and "jobs" in data else [data]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise InvalidJobError("jobs", "must be a mapping or a list of mappings", source=str(path))
    specs: list[JobSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"{path} (job {i + 1})"
        item = dict(item)
        if isinstance(item.get("command"), list):
            item["command"] = tuple(str(c) for c in item["command"])
        for dep in item.get("depends_on", []) or []:
            if dep not in seen:
                raise InvalidJobError("depends_on", f"names {dep!r}, which is not an earlier job in the file",
                                      source=where)
        item["depends_on"] = tuple(item.get("depends_on", []) or [])
        spec = JobSpec.from_dict(item, source=where)
        seen.add(spec.name)
        specs.append(spec)
    return specs


def submit_specs(catalog: Catalog, specs: list[JobSpec]) -> dict[str, str]:
    """Submit specs in order, turning name dependencies into job ids; returns {name: job id}."""
    ids: dict[str, str] = {}
    for spec in specs:
        deps = tuple(ids.get(d, d) for d in spec.depends_on)
        fields: dict[str, Any] = {k: getattr(spec, k) for k in spec.__dataclass_fields__}
        fields["depends_on"] = deps
        ids[spec.name] = submit_job(catalog, JobSpec(**fields))
    return ids
