"""The right to be forgotten: remove a data subject from every version of a dataset, with a signed receipt.

Workflow: find the subject's rows in every live version; commit a new head on each affected branch without
them; expire every version that held them (readers get a clear error); crypto-shred the data keys of the
shards that held them (encrypted datasets) or leave them to gc after the grace period (plain datasets); sign
a completion record listing the affected versions and who read them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pyarrow.compute as pc
import sqlalchemy as sa

from granary.errors import AuthorizationError, IntegrityError
from granary.secure import tables as t
from granary.secure.checkpoint import sign_bytes, verify_bytes
from granary.secure.retention import set_state

if TYPE_CHECKING:
    from granary.secure.guard import Guard
    from granary.store import Store
    from granary.store.manifest import ShardEntry

log = logging.getLogger(__name__)
_LATER_FIELDS = ("derived_changed", "tags")
MatchBy = Literal["column", "value"]
MAX_SUBJECT_CHARS = 1024


@dataclass(kw_only=True, frozen=True)
class ForgetReceipt:
    """The signed completion record of a forget request (holds no raw PII: the subject is an HMAC digest)."""

    id: str
    dataset: str
    subject_digest: str
    match: str
    rows_removed: int
    affected_versions: list[str]
    new_versions: dict[str, str]
    shredded_keys: int
    pending_deletion: list[str]
    readers: list[dict[str, Any]]
    derived_datasets: list[str]
    at: float
    derived_changed: dict[str, dict[str, Any]] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    public_key: str = ""
    signature: str = ""

    def body(self) -> bytes:
        """The canonical bytes the signature covers (fields added later are left out while empty, so receipts
        signed before they existed still verify)."""
        data = {k: v for k, v in asdict(self).items() if k not in ("public_key", "signature")
                and not (k in _LATER_FIELDS and not v)}
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def verify(self) -> None:
        """Raise CryptoError unless the signature matches the record."""
        verify_bytes(self.public_key, self.signature, self.body(), what=f"forget receipt {self.id}")


def subject_digest(guard: Guard, subject: str) -> str:
    """HMAC-SHA256 of the subject under a key derived from the signing key (pseudonymous, not reversible)."""
    secret = guard.key_provider().signing_key().private_bytes_raw()
    key = hashlib.sha256(b"granary-subject-pseudonym\0" + secret).digest()
    return hmac.new(key, subject.encode(), hashlib.sha256).hexdigest()


def build_filter(subject: str, *, by: MatchBy, column: str) -> str:
    """The row filter selecting the subject: equality on a subject-id column, or substring of a text column."""
    if not subject or len(subject) > MAX_SUBJECT_CHARS:
        raise ValueError(f"the subject must be 1-{MAX_SUBJECT_CHARS} characters")
    if not column.isidentifier():
        raise ValueError(f"invalid column name {column!r}")
    literal = json.dumps(subject)  # a double-quoted literal the safe filter grammar parses as a string
    return f"{column} == {literal}" if by == "column" else f"contains({column}, {literal})"


def _hits(store: Store, entry: ShardEntry, expression: str, column: str) -> int:
    from granary.store.filter import matches

    table = store._read_shard(entry, columns=[column])  # under the forget decision (admin)
    return int(pc.sum(matches(table, expression)).as_py() or 0)


def forget(store: Store, guard: Guard, dataset: str, subject: str, *, by: MatchBy = "column",
           column: str | None = None, follow: bool = True) -> ForgetReceipt:
    """Forget ``subject`` in ``dataset``; returns the signed receipt (also stored in the catalog and audited).

    Args:
        store: the store (its hooks authorize and audit the commits made here).
        guard: the guard of the calling principal (must be admin of the dataset).
        dataset: the dataset.
        subject: the subject id (``by="column"``) or a PII value such as an email (``by="value"``).
        by: match an id column exactly, or find the value inside a text column.
        column: the column to match (default ``subject_id`` for ``column``, ``text`` for ``value``).
        follow: also forget the subject in every dataset derived from this one (found by lineage and policy
            sources, transitively); the receipt says what changed in each (``derived_changed``).

    Tags on the versions that held the subject keep pointing at them (tags never move): they now name
    expired versions, which ``granary verify`` reports as expected state; the receipt lists them (``tags``).
    """
    column = column or ("subject_id" if by == "column" else "text")
    expression = build_filter(subject, by=by, column=column)
    guard.authorize("forget", dataset)
    request = uuid.uuid4().hex
    digest = subject_digest(guard, subject)
    hit_shards: dict[str, ShardEntry] = {}
    affected: list[str] = []
    checked: dict[str, int] = {}
    rows = 0
    for version in store._versions(dataset):
        if version.state != "live":
            continue
        manifest = store._manifest(version.id)
        if manifest.schema is None or column not in manifest.schema.names:
            continue
        found = False
        for entry in manifest.shards:
            if entry.key not in checked:
                checked[entry.key] = _hits(store, entry, expression, column)
            if checked[entry.key]:
                hit_shards[entry.key] = entry
                found = True
        if found:
            affected.append(version.id)
    new_versions: dict[str, str] = {}
    tags = sorted(f"{dataset}@{r.name}" for r in store._refs(dataset, "tag") if r.version_id in affected)
    for ref in store._refs(dataset, "branch"):
        if ref.version_id in affected:
            with store.transaction(dataset, branch=ref.name, mode="append") as txn:
                txn.delete_where(expression)
                version = txn.commit(message=f"forget request {request}",
                                     lineage={"command": "forget", "request": request, "subject": digest})
                rows = max(rows, int(txn.stats.extra.get("rows_deleted", 0)))
            new_versions[ref.name] = version.id
    key_refs = sorted({str(e.meta["enc"]["key_ref"]) for e in hit_shards.values() if "enc" in e.meta})
    plain_left = any("enc" not in e.meta for e in hit_shards.values())
    shredded = guard.keys.shred(key_refs) if key_refs else 0
    state = "expired" if plain_left else "shredded"
    set_state(store.catalog, affected, state, dataset=dataset, reason=f"forget {request}", by=guard.principal.name)
    receipt = ForgetReceipt(
        id=request, dataset=dataset, subject_digest=digest, match=f"{by}:{column}", rows_removed=rows,
        affected_versions=affected, new_versions=new_versions, shredded_keys=shredded,
        pending_deletion=affected if plain_left else [], readers=_readers(guard, dataset, set(affected)),
        derived_datasets=_derived(store, guard, dataset), at=time.time(), tags=tags)
    if follow:
        receipt = _follow(store, guard, receipt, subject, by=by, column=column)
    return _sign_and_store(guard, receipt)


def _follow(store: Store, guard: Guard, receipt: ForgetReceipt, subject: str, *, by: MatchBy,
            column: str) -> ForgetReceipt:
    """Forget the subject in every dataset derived from ``receipt.dataset``, transitively."""
    changed: dict[str, dict[str, Any]] = {}
    todo = list(receipt.derived_datasets)
    seen = {receipt.dataset}
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        try:
            info = store._dataset(name)
        except LookupError:
            continue
        if info.kind != "documents":
            changed[name] = {"changed": False, "reason": f"a {info.kind} dataset has no {column} column: derive "
                             "it again from the cleaned source (e.g. granary tokenize)"}
            continue
        try:
            sub = forget(store, guard, name, subject, by=by, column=column, follow=False)
        except AuthorizationError as exc:
            changed[name] = {"changed": False, "reason": str(exc)}
            continue
        changed[name] = {"changed": bool(sub.affected_versions), "receipt": sub.id, "rows_removed": sub.rows_removed,
                         "versions_expired": len(sub.affected_versions), "new_versions": sub.new_versions,
                         "tags": sub.tags}
        todo.extend(d for d in sub.derived_datasets if d not in seen)
    return ForgetReceipt(**{**asdict(receipt), "derived_changed": changed,
                            "derived_datasets": sorted(set(receipt.derived_datasets) | set(changed))})


def _readers(guard: Guard, dataset: str, versions: set[str]) -> list[dict[str, Any]]:
    out = []
    for rec in guard.audit.query(dataset=dataset, action="read", outcome="ok", limit=None):
        version = rec.object.partition("@")[2]
        if version in versions:
            out.append({"principal": rec.principal, "at": rec.at, "origin": rec.origin, "version": version,
                        "job": rec.details.get("job")})
    return out


def _derived(store: Store, guard: Guard, dataset: str) -> list[str]:
    """Datasets derived from ``dataset``: its name in their policy's sources, or one of its versions (or its
    name) in the lineage of one of their live versions."""
    from granary.store.lineage import lineage_sources

    out = {name for name, policy in guard.policies.all().items() if dataset in policy.sources}
    mine = {v.id for v in store._versions(dataset)}
    for version in store._versions():
        if version.dataset == dataset or version.dataset in out or version.state != "live":
            continue
        try:
            lineage = store._manifest(version.id).lineage or {}
        except IntegrityError:
            continue
        ids, names = lineage_sources(dict(lineage))
        if dataset in names or mine.intersection(ids):
            out.add(version.dataset)
    out.discard(dataset)
    return sorted(out)


def _sign_and_store(guard: Guard, receipt: ForgetReceipt) -> ForgetReceipt:
    pub, sig = sign_bytes(guard.key_provider().signing_key(), receipt.body())
    signed = ForgetReceipt(**{**asdict(receipt), "public_key": pub, "signature": sig})
    with guard.catalog.write() as conn:
        conn.execute(t.forget_log.insert().values(id=signed.id, dataset=signed.dataset, at=signed.at,
                                                  record=signed.body().decode(), public_key=pub, signature=sig))
        guard.audit.append(principal=guard.principal.name, action="forget", dataset=signed.dataset,
                           object=f"forget:{signed.id}", conn=conn,
                           details={"subject": signed.subject_digest[:16], "versions": len(signed.affected_versions),
                                    "rows": signed.rows_removed, "shredded_keys": signed.shredded_keys})
    log.info("forget %s on %s: %d versions expired, %d keys shredded", signed.id, signed.dataset,
             len(signed.affected_versions), signed.shredded_keys)
    return signed


def receipts(guard: Guard, dataset: str | None = None) -> list[ForgetReceipt]:
    """Stored forget receipts (signatures not yet checked: call ``.verify()``)."""
    query = sa.select(t.forget_log).order_by(t.forget_log.c.at)
    if dataset is not None:
        query = query.where(t.forget_log.c.dataset == dataset)
    with guard.catalog.read() as conn:
        rows = conn.execute(query).all()
    return [ForgetReceipt(**json.loads(r.record), public_key=r.public_key, signature=r.signature) for r in rows]
