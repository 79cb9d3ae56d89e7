"""Forget requests travel with the data: a subject forgotten at one site is forgotten at its replicas.

A push carries the dataset's signed forget receipts (they name the subject only by an HMAC digest) in the
remote's dataset record. When a push brings receipts the remote has not seen, the data shards that only the
versions they expired hold are deleted from the remote once the branch has moved past them (manifests stay,
as in the store itself, so history still resolves and readers get "expired", not "missing"); the record is
written last, so a push killed midway applies them again next time. A pull checks each receipt's
signature, keeps the receipts it lacks, expires the local versions they name (the store's gc then deletes
their shards) and audits ``forget.pull``. Datasets derived at the replica from those versions are not
rewritten there (the receipt lists the source site's derived datasets); run ``granary forget`` at the
replica for those.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import sqlalchemy as sa

from granary.errors import SyncError
from granary.store.manifest import decode_segment, parse_envelope
from granary.store.sync.remote import Repository

log = logging.getLogger(__name__)


def outgoing(store: Any, dataset: str) -> list[dict[str, str]]:
    """The dataset's signed forget receipts as they travel: the signed record, its key and signature."""
    from granary.secure import tables as st  # lazily: the store imports no security code at import time

    with store.catalog.read() as conn:
        rows = conn.execute(sa.select(st.forget_log).where(st.forget_log.c.dataset == dataset)
                            .order_by(st.forget_log.c.at)).all()
    return [{"record": r.record, "public_key": r.public_key, "signature": r.signature} for r in rows]


def expired_by(receipts: list[dict[str, str]]) -> set[str]:
    """Every version the receipts expired."""
    return {v for r in receipts for v in json.loads(r["record"]).get("affected_versions", [])}


def apply_at_remote(remote: Repository, dataset: str, receipts: list[dict[str, str]],
                    previous: list[dict[str, str]]) -> int:
    """Delete from ``remote`` the shards that only versions forgotten since ``previous`` hold; returns how many."""
    seen = {json.loads(r["record"])["id"] for r in previous}
    fresh = [r for r in receipts if json.loads(r["record"])["id"] not in seen]
    if not fresh:
        return 0
    gone = expired_by(receipts)
    present = remote.list_objects(f"datasets/{dataset}")
    keep: set[str] = set()
    drop: set[str] = set()
    for vid in _versions_on(remote, dataset, present):
        shards = _shards(remote, dataset, vid, present)
        (drop if vid in gone else keep).update(shards)
    doomed = sorted(drop - keep)
    for key in doomed:
        remote.delete_object(key)
    log.info("forget on %s: %d shards of %d forgotten versions deleted", remote.url, len(doomed), len(gone))
    return len(doomed)


def check(store: Any, dataset: str, receipts: list[dict[str, str]], url: str) -> None:
    """Raise SyncError unless every receipt the local store lacks carries a valid signature (before a pull
    moves anything: an altered receipt could otherwise keep a subject's data alive here)."""
    from granary.secure.checkpoint import verify_bytes
    from granary.secure.errors import CryptoError

    known = _known(store, dataset)
    for r in receipts:
        body = json.loads(r["record"])
        if body["id"] in known:
            continue
        try:
            verify_bytes(r["public_key"], r["signature"], r["record"].encode(), what=f"forget receipt {body['id']}")
        except CryptoError as exc:
            raise SyncError(f"forget receipt {body['id']} of {dataset} on {url} does not verify ({exc}); nothing "
                            "was pulled", hint="the remote's record was altered; push it again from the site that "
                                               "made the request") from None


def apply_locally(store: Any, dataset: str, receipts: list[dict[str, str]], url: str) -> list[str]:
    """Keep the (checked) receipts the local store lacks and expire the live local versions any receipt names;
    returns the ids of the receipts kept."""
    from granary.secure import tables as st
    from granary.secure.retention import set_state

    check(store, dataset, receipts, url)
    known = _known(store, dataset)
    live = {v.id for v in store._versions(dataset) if v.state == "live"}
    new: list[str] = []
    for r in receipts:
        body = json.loads(r["record"])
        fresh = body["id"] not in known
        expire = sorted(live & set(body["affected_versions"]))  # also versions that arrived after the receipt
        if not fresh and not expire:
            continue
        set_state(store.catalog, expire, "expired", dataset=dataset,
                  reason=f"forget {body['id']} (pulled from {url})", by=store.settings.author)
        live -= set(expire)
        if fresh:
            with store.catalog.write() as conn:
                conn.execute(st.forget_log.insert().values(id=body["id"], dataset=dataset, at=body["at"],
                                                           record=r["record"], public_key=r["public_key"],
                                                           signature=r["signature"]))
            new.append(body["id"])
        store.hooks.record("forget.pull", dataset, details={"request": body["id"], "remote": url,
                                                            "expired": expire, "subject": body["subject_digest"][:16]})
    return new


def _known(store: Any, dataset: str) -> set[str]:
    from granary.secure import tables as st

    with store.catalog.read() as conn:
        return set(conn.execute(sa.select(st.forget_log.c.id).where(st.forget_log.c.dataset == dataset)).scalars())


def _versions_on(remote: Repository, dataset: str, present: dict[str, int]) -> list[str]:
    prefix = f"datasets/{dataset}/manifests/"
    return [k[len(prefix):-5] for k in present if k.startswith(prefix) and k.endswith(".json")]


def _shards(remote: Repository, dataset: str, vid: str, present: dict[str, int]) -> set[str]:
    key = f"datasets/{dataset}/manifests/{vid}.json"
    _, body, _ = parse_envelope(remote.get_object(key), key=key)
    out: set[str] = set()
    for seg in body["segments"]:
        if seg["key"] in present:
            out.update(e.key for e in decode_segment(remote.get_object(seg["key"]), key=seg["key"],
                                                     expected_sha256=seg["sha256"]))
    return out
