"""Report facts: completeness, duplicates, lengths, languages, drop reasons, PII, sources, outliers."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from granary.curate.step import DocBatch

if TYPE_CHECKING:
    from granary.store import Store

SAMPLE_DOCS = 2000
EXAMPLES = 3
EXAMPLE_CHARS = 240


def report_for_version(store: Store, ref: str) -> dict[str, Any]:
    """The quality report of a stored version (its rejected/quarantine side tables and lineage included)."""
    version = store.resolve(ref)
    manifest = store.manifest(version)
    table = store.read_table(version)
    rep = report_from_tables(
        table,
        rejected=store.read_side_table(version, "rejected"),
        quarantine=store.read_side_table(version, "quarantine"),
        lineage=dict(manifest.lineage or {}),
        name=f"{version.dataset}@{version.id[:12]}",
    )
    rep["version"] = {"dataset": version.dataset, "id": version.id, "rows": version.num_rows,
                      "bytes": version.num_bytes, "shards": version.num_shards, "message": version.message,
                      "created_at": version.created_at}
    return rep


def report_from_tables(docs: pa.Table, *, rejected: pa.Table | None = None, quarantine: pa.Table | None = None,
                       lineage: dict[str, Any] | None = None, name: str = "dataset",
                       near_dup_sample: int = 20000) -> dict[str, Any]:
    """Every report section computed from the documents table and optional side tables."""
    text = docs.column("text") if "text" in docs.column_names else pa.chunked_array([], pa.string())
    batch = DocBatch(pa.table({"id": docs.column("id") if "id" in docs.column_names else pa.array(
        [str(i) for i in range(docs.num_rows)]), "text": text}))
    view = batch.view
    chars = view.doc_chars
    words = view.words.per_doc(view.num_docs)
    lineage = lineage or {}
    return {
        "name": name,
        "generated_at": time.time(),
        "documents": docs.num_rows,
        "text_bytes": int(view.doc_bytes.sum()),
        "completeness": completeness(docs),
        "duplicates": duplicate_rates(batch, near_dup_sample),
        "lengths": {"chars": distribution(chars), "words": distribution(words)},
        "languages": language_mix(docs),
        "sources": value_mix(docs, "source"),
        "drops": drop_reasons(rejected),
        "quarantine": quarantine_summary(quarantine),
        "pii": pii_counts(docs, lineage),
        "outliers": outliers(docs, chars, words),
        "pipeline": pipeline_summary(lineage),
    }


def completeness(docs: pa.Table) -> dict[str, dict[str, int]]:
    """Nulls and empty strings per column."""
    out = {}
    for name in docs.column_names:
        col = docs.column(name)
        empty = 0
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            empty = int(pc.sum(pc.equal(pc.utf8_trim_whitespace(col), "")).as_py() or 0)
        out[name] = {"nulls": int(col.null_count), "empty": empty}
    return out


def duplicate_rates(batch: DocBatch, near_sample: int) -> dict[str, Any]:
    """Exact duplicate rate (all documents) and near-duplicate rate (MinHash LSH, on a sample if large)."""
    from granary.curate.dedup.exact import text_fingerprints
    from granary.curate.dedup.near import MinHashDedupConfig

    n = batch.num_rows
    if n == 0:
        return {"exact_rate": 0.0, "near_rate": 0.0, "near_sampled": 0}
    fp = text_fingerprints(batch, lowercase=False, collapse_whitespace=True)
    exact = n - len(np.unique(fp, axis=0))
    sample = batch if n <= near_sample else DocBatch(batch.table.slice(0, near_sample))
    step = MinHashDedupConfig().build()
    with tempfile.TemporaryDirectory() as tmp:
        keys = step.collect(sample)  # type: ignore[attr-defined]
        path = Path(tmp) / "c.npz"
        np.savez(path, **keys)
        step.decide([path], Path(tmp))  # type: ignore[attr-defined]
        near = step.summary(Path(tmp)).get("duplicates", 0)  # type: ignore[attr-defined]
    return {"exact_duplicates": int(exact), "exact_rate": exact / n, "near_duplicates": int(near),
            "near_rate": near / sample.num_rows, "near_sampled": sample.num_rows}


def distribution(values: np.ndarray) -> dict[str, Any]:
    """Percentiles and a log2-binned histogram."""
    if len(values) == 0:
        return {"count": 0}
    v = np.asarray(values, dtype=np.float64)
    edges = 2.0 ** np.arange(0, max(1, int(np.ceil(np.log2(max(v.max(), 1)))) + 1) + 1)
    edges = np.concatenate([[0.0], edges])
    hist, _ = np.histogram(v, bins=edges)
    pct = np.percentile(v, [1, 10, 50, 90, 99])
    return {"count": len(v), "mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
            "p1": float(pct[0]), "p10": float(pct[1]), "p50": float(pct[2]), "p90": float(pct[3]),
            "p99": float(pct[4]), "histogram": {"edges": edges.tolist(), "counts": hist.tolist()}}


def value_mix(docs: pa.Table, column: str) -> dict[str, int]:
    """Counts per value of a column (empty if absent)."""
    if column not in docs.column_names:
        return {}
    vc = pc.value_counts(docs.column(column).combine_chunks()).to_pylist()
    return {str(x["values"]): int(x["counts"]) for x in sorted(vc, key=lambda d: -d["counts"])}


def language_mix(docs: pa.Table) -> dict[str, Any]:
    """The `lang` column's mix, or py3langid over a sample when there is none."""
    if "lang" in docs.column_names:
        return {"method": "lang column", "counts": value_mix(docs, "lang")}
    from granary.curate.filters.langid import detect_languages

    n = min(SAMPLE_DOCS, docs.num_rows)
    if n == 0:
        return {"method": "none", "counts": {}}
    texts = docs.column("text").slice(0, n).to_pylist()
    langs, _ = detect_languages([t or "" for t in texts], max_chars=500)
    values, counts = np.unique(np.array(langs), return_counts=True)
    order = np.argsort(-counts)
    return {"method": f"py3langid on the first {n} documents",
            "counts": {str(values[i]): int(counts[i]) for i in order}}


def drop_reasons(rejected: pa.Table | None) -> list[dict[str, Any]]:
    """Per step and reason: how many documents were dropped, with a few examples."""
    if rejected is None or rejected.num_rows == 0:
        return []
    base = pc.replace_substring_regex(rejected.column("reason"), pattern=r":.*$", replacement="")
    t = pa.table({"step": rejected.column("step"), "reason": base, "id": rejected.column("id"),
                  "text": pc.utf8_slice_codeunits(rejected.column("text"), 0, EXAMPLE_CHARS),
                  "detail": rejected.column("reason")})
    out = []
    grouped = t.group_by(["step", "reason"]).aggregate([([], "count_all")]).to_pylist()
    for g in sorted(grouped, key=lambda d: -d["count_all"]):
        mask = pc.and_(pc.equal(t.column("step"), g["step"]), pc.equal(t.column("reason"), g["reason"]))
        ex = t.filter(mask).slice(0, EXAMPLES).select(["id", "text", "detail"]).to_pylist()
        out.append({"step": g["step"], "reason": g["reason"], "count": g["count_all"], "examples": ex})
    return out


def quarantine_summary(q: pa.Table | None) -> dict[str, Any]:
    """Malformed input records kept aside by the readers."""
    if q is None or q.num_rows == 0:
        return {"count": 0, "reasons": {}}
    base = pc.replace_substring_regex(q.column("reason"), pattern=r"[:(].*$", replacement="")
    return {"count": q.num_rows, "reasons": value_mix(pa.table({"r": base}), "r"),
            "examples": q.select([c for c in ("source", "line", "reason") if c in q.column_names]
                                 ).slice(0, EXAMPLES).to_pylist()}


def pii_counts(docs: pa.Table, lineage: dict[str, Any]) -> dict[str, Any]:
    """PII findings per kind: from the pipeline's PII step when there is one, else a scan of a sample."""
    steps = lineage.get("steps") or {}
    found: dict[str, int] = {}
    for st in steps.values():
        for k, v in (st.get("counters") or {}).items():
            if k.startswith("pii_") and k[4:].isupper():
                found[k[4:]] = found.get(k[4:], 0) + int(v)
    if found:
        return {"method": "pipeline PII step (before redaction)", "counts": found}
    from granary.curate.pii.scanner import PiiScanner, count_kinds

    n = min(SAMPLE_DOCS * 5, docs.num_rows)
    if n == 0 or "text" not in docs.column_names:
        return {"method": "none", "counts": {}}
    hits = PiiScanner().scan_batch(docs.column("text").slice(0, n).combine_chunks())
    return {"method": f"scan of the first {n} documents", "counts": dict(count_kinds(hits)),
            "documents_with_pii": len(hits)}


def outliers(docs: pa.Table, chars: np.ndarray, words: np.ndarray) -> list[dict[str, Any]]:
    """Documents whose log length is more than 3 standard deviations from the mean."""
    if len(chars) < 10:
        return []
    logc = np.log1p(chars.astype(np.float64))
    z = (logc - logc.mean()) / (logc.std() or 1.0)
    idx = np.argsort(-np.abs(z))[:10]
    ids = docs.column("id").to_pylist() if "id" in docs.column_names else list(range(len(chars)))
    return [{"id": ids[i], "chars": int(chars[i]), "words": int(words[i]), "z": round(float(z[i]), 2)}
            for i in idx if abs(z[i]) > 3]


def pipeline_summary(lineage: dict[str, Any]) -> list[dict[str, Any]]:
    """Per step of the pipeline that produced the version: documents and bytes in/out, seconds."""
    steps = lineage.get("steps") or {}
    spec_steps = (lineage.get("pipeline") or {}).get("steps") or []
    order = [s.get("label") or s.get("step") for s in spec_steps if isinstance(s, dict)]
    names = [n for n in order if n in steps] + [n for n in steps if n not in order]  # pipeline order
    return [{"step": name, "docs_in": s.get("docs_in", 0), "docs_out": s.get("docs_out", 0),
             "bytes_in": s.get("bytes_in", 0), "bytes_out": s.get("bytes_out", 0),
             "seconds": round(float(s.get("seconds", 0.0)), 3)} for name in names for s in [steps[name]]]
