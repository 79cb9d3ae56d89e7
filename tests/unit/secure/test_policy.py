"""Policies: validation, purpose checks and propagation (most restrictive wins, license conflicts flagged)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from granary.secure.errors import PurposeError
from granary.secure.policy import PURPOSES, Policy, license_conflicts, merge

purposes = st.one_of(st.none(), st.frozensets(st.sampled_from(PURPOSES)))
tags = st.frozensets(st.sampled_from(["pii:raw", "pii:masked", "minor", "health"]))
policies = st.builds(Policy, purposes=purposes, tags=tags,
                     retention_days=st.one_of(st.none(), st.floats(1, 1000)),
                     keep_versions=st.one_of(st.none(), st.integers(1, 50)), encrypt=st.booleans())


@given(st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), policies, min_size=1), policies)
def test_merge_is_most_restrictive(sources: dict[str, Policy], own: Policy) -> None:
    out = merge(sources, own)
    parts = [*sources.values(), own]
    restricted = [p.purposes for p in parts if p.purposes is not None]
    if restricted:
        expected = frozenset.intersection(*restricted)
        assert out.purposes == expected
    else:
        assert out.purposes is None
    assert out.tags == frozenset().union(*(p.tags for p in parts))
    days = [p.retention_days for p in parts if p.retention_days is not None]
    assert out.retention_days == (min(days) if days else None)
    assert out.encrypt == any(p.encrypt for p in parts)
    assert set(sources) <= out.sources
    # merging again changes nothing (idempotent)
    assert merge(sources, out).purposes == out.purposes and merge(sources, out).tags == out.tags


def test_license_conflicts() -> None:
    assert license_conflicts({"MIT", "Apache-2.0", "CC-BY-4.0"}, None) == []
    assert any("cannot be combined" in c for c in license_conflicts({"GPL-3.0-only", "CC-BY-SA-4.0"}, None))
    assert any("derivative" in c for c in license_conflicts({"CC-BY-ND-4.0"}, None))
    assert any("unknown license" in c for c in license_conflicts({"MyCorp-EULA"}, None))
    merged = merge({"a": Policy(licenses=frozenset({"CC-BY-NC-4.0"})), "b": Policy(licenses=frozenset({"MIT"}))})
    assert merged.purposes is not None and "commercial" not in merged.purposes
    assert merged.licenses == {"CC-BY-NC-4.0", "MIT"}
    empty = merge({"a": Policy(purposes=frozenset({"research"})), "b": Policy(purposes=frozenset({"evaluation"}))})
    assert empty.purposes == frozenset() and any("no common purpose" in c for c in empty.conflicts)


def test_purpose_check_and_validation() -> None:
    Policy().check_purpose("web", None)
    p = Policy(purposes=frozenset({"research"}))
    p.check_purpose("web", "research")
    with pytest.raises(PurposeError):
        p.check_purpose("web", "pretraining")
    for bad in ({"licenses": frozenset({"MIT; rm -rf"})}, {"tags": frozenset({"Bad Tag"})},
                {"retention_days": -1.0}, {"keep_versions": 0}, {"tenant": "../x"}):
        with pytest.raises(ValueError):
            Policy(**bad)  # type: ignore[arg-type]
    assert Policy.from_dict(p.to_dict()) == p
