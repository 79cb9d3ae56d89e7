"""Audit records travel with the data: a replica's audit log shows what happened to a dataset at every site
that pushed it.

A push sends the pushing site's own audit records of the dataset (not those it imported) to the remote,
one file per site, each record with the hash of the record before it in the site's chain, so every record
can be checked on its own (``hash = sha256(prev || canonical(record))``, the chain's own rule). A pull
checks every record of every other site, then appends the ones it has not imported yet to the local chain
with their original time, principal, action and outcome, origin ``import:<site>`` and
``details.imported = {site, seq, hash}``: `granary audit log --dataset D` at a replica lists them beside its
own, and the local chain (and its checkpoints) then covers them too.
"""

from __future__ import annotations

import hashlib
import json
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


def send(store: Any, dataset: str, remote: Repository) -> int:
    """Put this site's audit records of ``dataset`` on ``remote``; returns how many."""
    from granary.secure import tables as st
    from granary.secure.audit import GENESIS, AuditLog

    own = [r for r in AuditLog(store.catalog).query(dataset=dataset, limit=None)
           if "imported" not in r.details]
    if not own:
        return 0
    prev_seqs = sorted({r.seq - 1 for r in own if r.seq > 1})
    with store.catalog.read() as conn:
        hashes = dict(conn.execute(sa.select(st.audit.c.seq, st.audit.c.hash)
                                   .where(st.audit.c.seq.in_(prev_seqs))).all()) if prev_seqs else {}
    lines = [json.dumps({**r.to_dict(), "prev": hashes.get(r.seq - 1, GENESIS)}, sort_keys=True) for r in own]
    remote.put_audit(dataset, site_id(store), zstandard.compress("\n".join(lines).encode(), 10))
    return len(own)


def receive(store: Any, dataset: str, remote: Repository) -> int:
    """Check and import the audit records other sites pushed; returns how many were new."""
    from granary.secure.audit import AuditLog, canonical, chain_hash

    me = site_id(store)
    log = AuditLog(store.catalog)
    imported: dict[str, int] = {}
    for r in log.query(dataset=dataset, limit=None):
        mark = r.details.get("imported")
        if isinstance(mark, dict):
            imported[mark["site"]] = max(imported.get(mark["site"], 0), int(mark["seq"]))
    added = 0
    for site in remote.audit_sites(dataset):
        if site == me:
            continue
        records = [json.loads(line) for line in
                   zstandard.decompress(remote.get_audit(dataset, site)).decode().splitlines() if line]
        for r in records:
            details = json.dumps(r["details"], sort_keys=True, separators=(",", ":"), default=str)
            text = canonical(r["seq"], r["at"], r["principal"], r["action"], r["dataset"], r["object"],
                             r["outcome"], r["origin"], details)
            if chain_hash(r["prev"], text) != r["hash"]:
                raise SyncError(f"audit record {r['seq']} of site {site} for {dataset} on {remote.url} does not "
                                "match its hash; no audit record was imported",
                                hint="the remote's copy was altered; push again from that site")
        new = [r for r in records if r["seq"] > imported.get(site, 0)]
        if new:
            AuditLog(store.catalog, origin=f"import:{site}").append_many([
                {"principal": r["principal"], "action": r["action"], "dataset": r["dataset"], "object": r["object"],
                 "outcome": r["outcome"], "at": r["at"],
                 "details": {**r["details"], "imported": {"site": site, "seq": r["seq"], "hash": r["hash"]}}}
                for r in new])
            added += len(new)
    return added
