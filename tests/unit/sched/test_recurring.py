"""Recurring jobs: periods, due times (missed runs coalesce), overlap rules, pausing, firing in the catalog."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from granary.catalog import open_catalog
from granary.errors import AlreadyExistsError, NotFoundError
from granary.sched import tables as t
from granary.sched.journal import list_jobs
from granary.sched.model import JobSpec
from granary.sched.recurring import (
    add_recurring,
    fire_due,
    list_recurring,
    next_due,
    parse_every,
    remove_recurring,
    set_enabled,
)


def test_periods_parse_and_bad_ones_say_what_is_expected() -> None:
    assert [parse_every(x) for x in ("30s", "15m", "6h", "1d", "1w", "90", "1.5h")] == \
        [30, 900, 21600, 86400, 604800, 90, 5400]
    for bad in ("daily", "0s", "-1h", "1y"):
        with pytest.raises(ValueError, match="period"):
            parse_every(bad)


@given(start=st.floats(0, 1e9), every=st.floats(1, 1e6), late=st.floats(0, 1e8))
def test_the_next_due_time_is_the_first_grid_point_after_now(start: float, every: float, late: float) -> None:
    now = start + late
    due = next_due(start, every, now)
    k = round((due - start) / every)
    assert k >= 1 and due == pytest.approx(start + k * every)
    assert due > now - 1e-6 * max(1.0, abs(now)) and due - every <= now + 1e-6 * max(1.0, abs(now))


def _catalog(tmp_path: Path):  # type: ignore[no-untyped-def]
    return open_catalog(f"sqlite:///{tmp_path / 'c.db'}")


def _fire(catalog, now: float) -> list[str]:  # type: ignore[no-untyped-def]
    with catalog.write() as conn:
        return fire_due(conn, now)


def _finish(catalog, job_id: str) -> None:  # type: ignore[no-untyped-def]
    with catalog.write() as conn:
        conn.execute(t.jobs.update().where(t.jobs.c.id == job_id).values(state="succeeded"))


def test_a_due_recurrence_fires_once_per_period_and_skips_while_its_last_run_is_unfinished(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    add_recurring(catalog, "nightly", JobSpec(name="x", command="true", env={"A": "1"}), every_s=100, start_at=1000,
                  now=0)
    assert _fire(catalog, 999.0) == []
    first = _fire(catalog, 1000.0)
    assert len(first) == 1 and _fire(catalog, 1050.0) == []
    assert _fire(catalog, 1100.0) == []  # the first run is still pending: this period is skipped
    _finish(catalog, first[0])
    second = _fire(catalog, 1200.5)
    assert len(second) == 1
    rec = list_recurring(catalog)[0]
    assert (rec.runs, rec.skipped, rec.last_job_id, rec.next_at) == (2, 1, second[0], 1300.0)
    jobs = {j.id: j for j in list_jobs(catalog)}
    assert jobs[second[0]].name == "nightly#2"
    with catalog.read() as conn:
        spec = conn.execute(sa.select(t.jobs.c.spec).where(t.jobs.c.id == second[0])).scalar()
    assert '"GRANARY_RECURRING": "nightly"' in spec and '"A": "1"' in spec


def test_missed_periods_coalesce_into_one_run_and_overlap_allow_starts_anyway(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    add_recurring(catalog, "often", JobSpec(name="x", command="true"), every_s=10, start_at=0, overlap="allow",
                  now=0)
    assert len(_fire(catalog, 0.0)) == 1
    assert len(_fire(catalog, 95.0)) == 1  # nine periods were missed (no controller ran): one run, not nine
    assert list_recurring(catalog)[0].next_at == 100.0
    assert len(list_jobs(catalog)) == 2


def test_paused_and_removed_recurrences_do_not_fire_and_names_are_checked(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    add_recurring(catalog, "drill", JobSpec(name="x", command="true"), every_s=60, start_at=0, now=0)
    with pytest.raises(AlreadyExistsError, match="already exists"):
        add_recurring(catalog, "drill", JobSpec(name="x", command="true"), every_s=60)
    set_enabled(catalog, "drill", False)
    assert _fire(catalog, 10.0) == []
    set_enabled(catalog, "drill", True)
    assert len(_fire(catalog, 10.0)) == 1
    remove_recurring(catalog, "drill")
    assert _fire(catalog, 1e6) == [] and list_recurring(catalog) == []
    with pytest.raises(NotFoundError, match="no recurring job"):
        remove_recurring(catalog, "drill")
    with pytest.raises(ValueError, match="name"):
        add_recurring(catalog, "9 lives", JobSpec(name="x", command="true"), every_s=60)
    with pytest.raises(ValueError, match="every_s"):
        add_recurring(catalog, "fast", JobSpec(name="x", command="true"), every_s=0.1)
