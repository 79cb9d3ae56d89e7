"""Audit records travel with the data: a replica's audit log shows what happened to a dataset at every site
that pushed it.

A push sends the pushing site's own audit records of the dataset (not those it imported) to the remote,
each record with the hash of the record before it in the site's chain, so every record can be checked on its
own (``hash = sha256(prev || canonical(record))``, the chain's own rule). Records travel incrementally, as
segments named ``<site>.<first seq>-<last seq>`` (12 digits each): a push sends only the records after the
last segment of its site already on the remote, and a pull fetches only the segments that end after the
last record it imported from that site. (The audit chain is appended under one lock, so sequence numbers
are committed in order and "after the last one sent" misses none.) A segment named by the site alone is the
whole-log file of earlier releases and is read as one segment.

A pull checks every record of every segment it fetched, then appends the ones it has not imported yet to the
local chain with their original time, principal, action and outcome, origin ``import:<site>`` and
``details.imported = {site, seq, hash}``: `granary audit log --dataset D` at a replica lists them beside its
own, and the local chain (and its checkpoints) then covers them too.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
from typing import Any

import sqlalchemy as sa
import zstandard

from granary.errors import SyncError
from granary.store.sync.remote import Repository


def site_id(store: Any) -> str:
    """A stable name of this site: host and a digest of its catalog URL."""
    digest = hashlib.sha256(store.settings.catalog_url.encode()).hexdigest()[:12]
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())[:64] or "site"
    return f"{host}-{digest}"


SEGMENT_RE = re.compile(r"^(?P<site>.+)\.(?P<first>\d{12})-(?P<last>\d{12})$")
WHOLE = 10**12  # the "last seq" of a whole-log file of earlier releases: read it before any segment


def segments(remote: Repository, dataset: str) -> dict[str, list[tuple[int, int, str]]]:
    """The remote's audit segments of ``dataset`` by site: ``(first seq, last seq, key)`` sorted by seq."""
    found: dict[str, list[tuple[int, int, str]]] = {}
    for key in remote.audit_sites(dataset):
        match = SEGMENT_RE.match(key)
        if match:
            found.setdefault(match["site"], []).append((int(match["first"]), int(match["last"]), key))
        else:
            found.setdefault(key, []).append((0, WHOLE, key))
    for parts in found.values():
        parts.sort(key=lambda p: (p[0] if p[1] != WHOLE else -1, p[1]))
    return found


def send(store: Any, dataset: str, remote: Repository) -> int:
    """Put this site's audit records of ``dataset`` that the remote lacks on it; returns how many were sent."""
    from granary.secure import tables as st
    from granary.secure.audit import GENESIS, AuditLog

    me = site_id(store)
    sent = max((last for _, last, _ in segments(remote, dataset).get(me, []) if last != WHOLE), default=0)
    own = [r for r in AuditLog(store.catalog).query(dataset=dataset, after_seq=sent, limit=None)
           if "imported" not in r.details]
    if not own:
        return 0
    prev_seqs = sorted({r.seq - 1 for r in own if r.seq > 1})
    with store.catalog.read() as conn:
        hashes = dict(conn.execute(sa.select(st.audit.c.seq, st.audit.c.hash)
                                   .where(st.audit.c.seq.in_(prev_seqs))).all()) if prev_seqs else {}
    lines = [json.dumps({**r.to_dict(), "prev": hashes.get(r.seq - 1, GENESIS)}, sort_keys=True) for r in own]
    key = f"{me}.{own[0].seq:012d}-{own[-1].seq:012d}"
    remote.put_audit(dataset, key, zstandard.compress("\n".join(lines).encode(), 10))
    return len(own)


def _checked(remote: Repository, dataset: str, site: str, key: str) -> list[dict[str, Any]]:
    """The records of one segment, each checked against its hash."""
    from granary.secure.audit import canonical, chain_hash

    records = [json.loads(line) for line in
               zstandard.decompress(remote.get_audit(dataset, key)).decode().splitlines() if line]
    for r in records:
        details = json.dumps(r["details"], sort_keys=True, separators=(",", ":"), default=str)
        text = canonical(r["seq"], r["at"], r["principal"], r["action"], r["dataset"], r["object"],
                         r["outcome"], r["origin"], details)
        if chain_hash(r["prev"], text) != r["hash"]:
            raise SyncError(f"audit record {r['seq']} of site {site} for {dataset} on {remote.url} (segment {key}) "
                            "does not match its hash; no audit record was imported",
                            hint="the remote's copy was altered; push again from that site")
    return records


def receive(store: Any, dataset: str, remote: Repository) -> int:
    """Check and import the audit records other sites pushed since the last pull; returns how many were new."""
    from granary.secure.audit import AuditLog

    me = site_id(store)
    log = AuditLog(store.catalog)
    imported: dict[str, int] = {}
    for r in log.query(dataset=dataset, limit=None):
        mark = r.details.get("imported")
        if isinstance(mark, dict):
            imported[mark["site"]] = max(imported.get(mark["site"], 0), int(mark["seq"]))
    batches: list[tuple[str, list[dict[str, Any]]]] = []
    for site, parts in sorted(segments(remote, dataset).items()):
        if site == me:
            continue
        records = [rec for _, last, key in parts if last > imported.get(site, 0)
                   for rec in _checked(remote, dataset, site, key)]
        seen = imported.get(site, 0)
        new = []
        for rec in sorted(records, key=lambda x: x["seq"]):
            if rec["seq"] > seen:
                new.append(rec)
                seen = rec["seq"]
        batches.append((site, new))
    added = 0
    for site, new in batches:  # every fetched segment of every site was checked before anything is imported
        if new:
            AuditLog(store.catalog, origin=f"import:{site}").append_many([
                {"principal": rec["principal"], "action": rec["action"], "dataset": rec["dataset"],
                 "object": rec["object"], "outcome": rec["outcome"], "at": rec["at"],
                 "details": {**rec["details"], "imported": {"site": site, "seq": rec["seq"], "hash": rec["hash"]}}}
                for rec in new])
            added += len(new)
    return added
