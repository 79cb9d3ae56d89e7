"""Dataset policies: license, allowed purposes, consent basis, jurisdiction, retention, restriction tags.

Policies propagate through pipelines: a derived dataset gets the most restrictive combination of its
sources (intersection of purposes, union of restrictions, shortest retention) and incompatible licenses
are flagged in ``conflicts``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa

from granary.catalog import Catalog
from granary.secure import tables as t
from granary.secure.errors import PurposeError
from granary.secure.keys import check_tenant

PURPOSES = ("pretraining", "finetuning", "evaluation", "research", "commercial")
TAG_RE = re.compile(r"[a-z0-9][a-z0-9_.:*-]{0,63}")
SPDX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]{0,63}")

# License families for compatibility checks (SPDX ids); anything else is "unknown" and gets flagged.
_PERMISSIVE = {"MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "CC0-1.0", "CC-BY-4.0", "CC-BY-3.0",
               "ODC-By-1.0", "PDDL-1.0", "Unlicense", "Zlib", "OpenRAIL"}
_SHARE_ALIKE = {"CC-BY-SA-4.0", "CC-BY-SA-3.0", "GPL-2.0-only", "GPL-3.0-only", "GPL-3.0-or-later", "ODbL-1.0",
                "AGPL-3.0-only", "LGPL-3.0-only"}
_NONCOMMERCIAL = {"CC-BY-NC-4.0", "CC-BY-NC-SA-4.0", "CC-BY-NC-ND-4.0", "CC-BY-NC-3.0"}
_NO_DERIVATIVES = {"CC-BY-ND-4.0", "CC-BY-NC-ND-4.0", "CC-BY-ND-3.0"}


@dataclass(kw_only=True, frozen=True)
class Policy:
    """Governance tags of a dataset.

    Attributes:
        tenant: the tenant owning the dataset (roles and master keys are per tenant).
        licenses: SPDX license ids of the content (several after a merge).
        purposes: allowed purposes; None means unrestricted.
        consent: consent bases (``consent``, ``contract``, ``legitimate-interest``, ...).
        jurisdictions: where the data subjects or the data are (``EU``, ``US-CA``, ...).
        tags: restriction tags (``pii:raw``) checked by attribute rules.
        retention_days: versions older than this are expired by gc (None: keep).
        keep_versions: keep at most this many newest versions (None: keep all).
        encrypt: encrypt every new shard of the dataset.
        sources: datasets this one was derived from.
        conflicts: license or purpose incompatibilities found while propagating.
    """

    tenant: str = "default"
    licenses: frozenset[str] = field(default_factory=frozenset)
    purposes: frozenset[str] | None = None
    consent: frozenset[str] = field(default_factory=frozenset)
    jurisdictions: frozenset[str] = field(default_factory=frozenset)
    tags: frozenset[str] = field(default_factory=frozenset)
    retention_days: float | None = None
    keep_versions: int | None = None
    encrypt: bool = False
    sources: frozenset[str] = field(default_factory=frozenset)
    conflicts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_tenant(self.tenant)
        for lic in self.licenses:
            if not SPDX_RE.fullmatch(lic):
                raise ValueError(f"invalid SPDX license id {lic!r}")
        for tag in (*(self.purposes or ()), *self.consent, *self.tags):
            if not TAG_RE.fullmatch(tag):
                raise ValueError(f"invalid policy tag {tag!r}: use a-z, 0-9, '_', '.', ':', '-'")
        if self.retention_days is not None and self.retention_days <= 0:
            raise ValueError(f"retention_days must be > 0, got {self.retention_days}")
        if self.keep_versions is not None and self.keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1, got {self.keep_versions}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "tenant": self.tenant, "licenses": sorted(self.licenses),
            "purposes": None if self.purposes is None else sorted(self.purposes),
            "consent": sorted(self.consent), "jurisdictions": sorted(self.jurisdictions), "tags": sorted(self.tags),
            "retention_days": self.retention_days, "keep_versions": self.keep_versions, "encrypt": self.encrypt,
            "sources": sorted(self.sources), "conflicts": list(self.conflicts),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Inverse of :meth:`to_dict` (missing keys take defaults)."""
        sets = ("licenses", "consent", "jurisdictions", "tags", "sources")
        values: dict[str, Any] = {k: frozenset(data[k]) for k in sets if k in data}
        if data.get("purposes") is not None:
            values["purposes"] = frozenset(data["purposes"])
        for k in ("tenant", "retention_days", "keep_versions", "encrypt"):
            if data.get(k) is not None:
                values[k] = data[k]
        values["conflicts"] = tuple(data.get("conflicts") or ())
        return cls(**values)

    def check_purpose(self, dataset: str, purpose: str | None) -> None:
        """Raise PurposeError unless reading for ``purpose`` is allowed."""
        if self.purposes is None:
            return
        allowed = sorted(self.purposes)
        if purpose is None:
            raise PurposeError(f"{dataset} may only be read for {allowed}, and no purpose was declared",
                               hint="declare one: --purpose NAME, purpose=... or GRANARY_PURPOSE")
        if purpose not in self.purposes:
            raise PurposeError(f"{dataset} may not be read for {purpose!r}; its policy allows {allowed}",
                               hint="use a dataset licensed for this purpose, or ask its owner to extend the policy")


def license_conflicts(licenses: Iterable[str], purposes: frozenset[str] | None) -> list[str]:
    """Incompatibilities among licenses combined into one derived dataset."""
    lic = set(licenses)
    out = [f"{x} forbids derivative datasets" for x in sorted(lic & _NO_DERIVATIVES)]
    share = sorted(lic & _SHARE_ALIKE)
    if len(share) > 1:
        out.append(f"share-alike licenses {share} cannot be combined")
    if share and lic & _NONCOMMERCIAL:
        out.append(f"share-alike {share} and non-commercial {sorted(lic & _NONCOMMERCIAL)} conflict")
    if lic & _NONCOMMERCIAL and (purposes is None or "commercial" in purposes):
        out.append(f"non-commercial license(s) {sorted(lic & _NONCOMMERCIAL)}: the commercial purpose is removed")
    known = _PERMISSIVE | _SHARE_ALIKE | _NONCOMMERCIAL | _NO_DERIVATIVES
    out.extend(f"unknown license {x}: review it by hand" for x in sorted(lic - known))
    return out


def merge(sources: Mapping[str, Policy], own: Policy | None = None) -> Policy:
    """The most restrictive policy of a dataset derived from ``sources`` (name -> policy)."""
    parts = list(sources.values()) + ([own] if own is not None else [])
    if not parts:
        return Policy()
    purposes: frozenset[str] | None = None
    for p in parts:
        if p.purposes is not None:
            purposes = p.purposes if purposes is None else purposes & p.purposes
    licenses = frozenset().union(*(p.licenses for p in parts))
    if licenses & _NONCOMMERCIAL:
        purposes = (frozenset(PURPOSES) if purposes is None else purposes) - {"commercial"}
    retention = [p.retention_days for p in parts if p.retention_days is not None]
    keep = [p.keep_versions for p in parts if p.keep_versions is not None]
    base = own or Policy(tenant=parts[0].tenant)
    conflicts = list(dict.fromkeys([*(c for p in parts for c in p.conflicts),
                                    *(license_conflicts(licenses, purposes) if sources else [])]))
    if purposes is not None and not purposes:
        conflicts.append("the sources allow no common purpose: nothing may read this dataset")
    return replace(
        base,
        licenses=licenses, purposes=purposes,
        consent=frozenset().union(*(p.consent for p in parts)),
        jurisdictions=frozenset().union(*(p.jurisdictions for p in parts)),
        tags=frozenset().union(*(p.tags for p in parts)),
        retention_days=min(retention) if retention else None, keep_versions=min(keep) if keep else None,
        encrypt=any(p.encrypt for p in parts),
        sources=base.sources | frozenset(sources) | frozenset().union(*(p.sources for p in sources.values())),
        conflicts=tuple(conflicts),
    )


class PolicyBook:
    """Stores dataset policies in the catalog (a dataset without one has the default, unrestricted policy).

    Args:
        catalog: the catalog.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.cache_s = 1.0  # policies change rarely; a change made elsewhere is seen within this
        self._cache: dict[str, tuple[float, Policy]] = {}

    def get(self, dataset: str) -> Policy:
        """The dataset's policy (cached for ``cache_s``, one second; policies change rarely)."""
        hit = self._cache.get(dataset)
        if hit is not None and time.monotonic() - hit[0] < self.cache_s:
            return hit[1]
        with self.catalog.read() as conn:
            raw = conn.execute(sa.select(t.policies.c.policy).where(t.policies.c.dataset == dataset)).scalar()
        policy = Policy() if raw is None else Policy.from_dict(json.loads(raw))
        self._cache[dataset] = (time.monotonic(), policy)
        return policy

    def get_many(self, datasets: Iterable[str]) -> dict[str, Policy]:
        """The policies of several datasets (a page of a listing): one query for those not cached."""
        now = time.monotonic()
        out: dict[str, Policy] = {}
        missing = []
        for name in dict.fromkeys(datasets):
            hit = self._cache.get(name)
            if hit is not None and now - hit[0] < self.cache_s:
                out[name] = hit[1]
            else:
                missing.append(name)
        if missing:
            p = t.policies.c
            with self.catalog.read() as conn:
                stored = dict(conn.execute(sa.select(p.dataset, p.policy).where(p.dataset.in_(missing))).all())
            if len(self._cache) >= 100_000:
                self._cache.clear()
            for name in missing:
                raw = stored.get(name)
                out[name] = Policy() if raw is None else Policy.from_dict(json.loads(raw))
                self._cache[name] = (now, out[name])
        return out

    def set(self, dataset: str, policy: Policy) -> Policy:
        """Replace the dataset's policy."""
        with self.catalog.write() as conn:
            conn.execute(t.policies.delete().where(t.policies.c.dataset == dataset))
            conn.execute(t.policies.insert().values(dataset=dataset, policy=json.dumps(policy.to_dict()),
                                                    updated_at=time.time()))
        self._cache.pop(dataset, None)
        return policy

    def all(self) -> dict[str, Policy]:
        """Every stored policy by dataset."""
        with self.catalog.read() as conn:
            rows = conn.execute(sa.select(t.policies)).all()
        return {r.dataset: Policy.from_dict(json.loads(r.policy)) for r in rows}
