"""MinHash signatures, LSH clustering, union-find and exact dedup: accuracy against planted truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granary.curate.dedup.exact import ExactDedupConfig
from granary.curate.dedup.minhash import SCHEMES, estimate_jaccard, word_shingles
from granary.curate.dedup.near import MinHashDedupConfig
from granary.curate.dedup.unionfind import UnionFind
from granary.curate.errors import PipelineSpecError
from granary.curate.step import DocBatch, GlobalStep
from granary.curate.synth import Truth
from granary.curate.textview import TextView


def _run_global(cfg, tables: list[pa.Table], tmp: Path) -> list[DocBatch]:  # type: ignore[no-untyped-def]
    """collect per shard -> decide -> apply per shard, as the executor does."""
    step = cfg.build()
    assert isinstance(step, GlobalStep)
    tmp.mkdir(parents=True, exist_ok=True)
    paths = []
    batches = [DocBatch(t) for t in tables]
    for i, b in enumerate(batches):
        p = tmp / f"c{i}.npz"
        np.savez(p, **step.collect(b))
        paths.append(p)
    decisions = step.decide(paths, tmp)
    for b, d in zip(batches, decisions, strict=True):
        step.apply(b, dict(np.load(d)))
    return batches


def _dropped_ids(batches: list[DocBatch]) -> dict[str, str]:
    return {r["id"]: r["reason"] for b in batches for r in b.rejected().to_pylist()}


def test_exact_dedup_keeps_first_across_shards(tmp_path: Path) -> None:
    a = pa.table({"id": ["a1", "a2"], "text": ["same text", "other"]})
    b = pa.table({"id": ["b1", "b2", "b3"], "text": ["same  text ", "fresh", "other"]})
    got = _dropped_ids(_run_global(ExactDedupConfig(), [a, b], tmp_path))
    assert got == {"b1": "exact_duplicate_of:a1", "b3": "exact_duplicate_of:a2"}
    got = _dropped_ids(_run_global(ExactDedupConfig(collapse_whitespace=False), [a, b], tmp_path / "x"))
    assert got == {"b3": "exact_duplicate_of:a2"}


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_signature_agreement_estimates_jaccard(scheme: str) -> None:
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(5000)]
    base = list(rng.choice(words, 400))
    pairs = []
    for keep in (0.2, 0.5, 0.8, 0.95):
        other = [w if rng.random() < keep else str(rng.choice(words)) + "x" for w in base]
        pairs.append((" ".join(base), " ".join(other)))
    a = SCHEMES[scheme](word_shingles(TextView(pa.array([p[0] for p in pairs])), 3), 256, 7)
    b = SCHEMES[scheme](word_shingles(TextView(pa.array([p[1] for p in pairs])), 3), 256, 7)
    est = estimate_jaccard(a, b)
    truth = []
    for x, y in pairs:
        sx = {tuple(x.split()[i : i + 3]) for i in range(398)}
        sy = {tuple(y.split()[i : i + 3]) for i in range(398)}
        truth.append(len(sx & sy) / len(sx | sy))
    assert np.abs(est - np.array(truth)).max() < 0.1
    same = SCHEMES[scheme](word_shingles(TextView(pa.array([pairs[0][0]] * 2)), 3), 256, 7)
    assert np.array_equal(same[0], same[1])


def test_near_dedup_precision_and_recall_on_planted(corpus: tuple[list[dict[str, str]], Truth],
                                                   tmp_path: Path) -> None:
    docs, truth = corpus
    table = pa.Table.from_pylist(docs)
    shards = [table.slice(i, 700) for i in range(0, table.num_rows, 700)]
    batches = _run_global(ExactDedupConfig(), shards, tmp_path / "exact")
    for b in batches:
        b.compact()
    batches = _run_global(MinHashDedupConfig(), [b.table for b in batches], tmp_path / "near")
    dropped = _dropped_ids(batches)
    near_ids = {r for r, why in dropped.items() if why.startswith("near_duplicate_of")}
    planted_near = {docs[i]["id"] for i in truth.indices("near_dup")}
    planted_any = planted_near | {docs[i]["id"] for i in truth.indices("exact_dup")}
    precision = len(near_ids & planted_any) / len(near_ids)
    recall = len(set(dropped) & planted_near) / len(planted_near)
    assert precision >= 0.98 and recall >= 0.95, (precision, recall)
    # every kept representative is the planted original (the first in input order)
    for r in near_ids & planted_near:
        i = int(r[4:])
        kept = dropped[r].split(":", 1)[1]
        assert int(kept[4:]) <= truth.original[i]


def test_near_dedup_spills_to_disk_with_same_result(corpus: tuple[list[dict[str, str]], Truth],
                                                    tmp_path: Path) -> None:
    table = pa.Table.from_pylist(corpus[0][:1500])
    base = _dropped_ids(_run_global(MinHashDedupConfig(), [table], tmp_path / "ram"))
    cfg = MinHashDedupConfig(memory_limit_bytes=1024, write_clusters=True)
    step_dir = tmp_path / "disk"
    spilled = _dropped_ids(_run_global(cfg, [table], step_dir))
    assert spilled == base and len(base) > 0
    assert (step_dir / "spill" / "unionfind.parent.i64").exists()
    clusters = cfg.build().side_tables(step_dir)["near_dup_clusters"]  # type: ignore[attr-defined]
    assert set(clusters.filter(pa.compute.invert(clusters.column("kept"))).column("id").to_pylist()) == set(base)


def test_config_validation() -> None:
    with pytest.raises(PipelineSpecError, match="exceeds num_perm"):
        MinHashDedupConfig(num_perm=64, bands=20, rows=4)
    with pytest.raises(PipelineSpecError, match="unknown scheme"):
        MinHashDedupConfig(scheme="nope")  # type: ignore[arg-type]


@given(st.integers(2, 300), st.lists(st.tuples(st.integers(0, 299), st.integers(0, 299)), max_size=400))
@settings(max_examples=80, deadline=None)
def test_union_find_matches_reference(n: int, edges: list[tuple[int, int]]) -> None:
    edges = [(a % n, b % n) for a, b in edges]
    uf = UnionFind(n)
    if edges:
        uf.union(np.array([a for a, _ in edges]), np.array([b for _, b in edges]))
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    assert uf.roots().tolist() == [find(i) for i in range(n)]
