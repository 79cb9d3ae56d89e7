"""A deterministic synthetic corpus with planted duplicates, PII and low-quality documents.

The documents read like simple English prose about a handful of topics. A known fraction of them
is planted: exact duplicates, near duplicates (a few words changed), documents carrying PII of
every kind the curation scanner knows, low-quality documents of several kinds, and a few malformed
JSON lines. :class:`Truth` says which is which, so later steps can show (and tests can check) their
effect.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

TOPICS = {
    "storage": "disk shard block replica checksum bucket object volume snapshot backup archive file index".split(),
    "training": "model gradient batch epoch optimizer loss token layer weight learning rate checkpoint".split(),
    "cooking": "onion garlic butter flour oven recipe sauce pepper salt simmer dough basil".split(),
    "travel": "train ticket station harbor island museum mountain river village hotel map journey".split(),
    "gardening": "soil seed tomato water compost root leaf spring harvest shade fence pumpkin".split(),
}
COMMON = ("the a of to and in is it that for on with as was by this be are from at or an which "
          "their they more some when can each other about into then these so many would has over "
          "new most after before because while where every first last small large good great").split()
VERBS = "keeps moves checks builds writes reads holds shows makes finds needs brings turns gives helps".split()
ADJ = "quiet careful steady bright simple useful heavy early late clean fresh local remote shared".split()


@dataclass
class Truth:
    """Which document ids were planted as what."""

    exact_dups: dict[str, str] = field(default_factory=dict)  # dup id -> original id
    near_dups: dict[str, str] = field(default_factory=dict)
    pii: dict[str, list[str]] = field(default_factory=dict)  # id -> PII types
    low_quality: dict[str, str] = field(default_factory=dict)  # id -> kind
    malformed_lines: list[int] = field(default_factory=list)


def _sentence(rng: random.Random, words: list[str]) -> str:
    n = rng.randint(8, 18)
    parts = [rng.choice(COMMON) if rng.random() < 0.45 else rng.choice(words + VERBS + ADJ) for _ in range(n)]
    return parts[0].capitalize() + " " + " ".join(parts[1:]) + rng.choice([".", ".", ".", "!", "?"])


def document(rng: random.Random, topic: str) -> str:
    """A few paragraphs of topic prose."""
    words = TOPICS[topic]
    paras = []
    for _ in range(rng.randint(2, 5)):
        paras.append(" ".join(_sentence(rng, words) for _ in range(rng.randint(3, 7))))
    return f"# Notes on {topic}\n\n" + "\n\n".join(paras)


def _luhn_digit(digits: str) -> str:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d)
        if i % 2 == 0:
            n *= 2
            n = n - 9 if n > 9 else n
        total += n
    return str((10 - total % 10) % 10)


def _iban(rng: random.Random) -> str:
    bban = "".join(str(rng.randint(0, 9)) for _ in range(18))
    country = "DE"
    numeric = bban + "".join(str(ord(c) - 55) for c in country) + "00"
    check = 98 - int(numeric) % 97
    return f"{country}{check:02d}{bban}"


def _cn_id(rng: random.Random) -> str:
    body = f"110105{rng.randint(1960, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    check = "10X98765432"[sum(int(c) * w for c, w in zip(body, weights, strict=True)) % 11]
    return body + check


def pii_samples(rng: random.Random) -> dict[str, str]:
    """One realistic value of every PII type (valid checksums where the type has one)."""
    cc = "4" + "".join(str(rng.randint(0, 9)) for _ in range(14))
    return {
        "email": f"{rng.choice(['ana', 'li.wei', 'sam_k', 'jo'])}{rng.randint(1, 999)}@example.org",
        "phone": f"+1 415 555 {rng.randint(1000, 9999)}",
        "cn_mobile": f"13{rng.randint(0, 9)}{rng.randint(10000000, 99999999)}",
        "ipv4": f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        "ipv6": f"2001:db8::{rng.randint(1, 0xffff):x}",
        "credit_card": cc + _luhn_digit(cc),
        "iban": _iban(rng),
        "cn_id": _cn_id(rng),
        "ssn": f"{rng.randint(100, 665)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}",
        "aws_key": "AKIA" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16)),
    }


def _low_quality(rng: random.Random, kind: str) -> str:
    if kind == "short":
        return "click here"
    if kind == "symbols":
        return " ".join(rng.choice(["#", "$$", "%%", "{}", "&&", "@@", "!!"]) for _ in range(120))
    if kind == "repetitive":
        return "\n".join(["buy now best price"] * 40)
    if kind == "lorem":
        return "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 8
    return " ".join(rng.choice(COMMON) for _ in range(150))  # "wordsalad": no punctuation, only stop words


def near_duplicate(rng: random.Random, text: str, rate: float) -> str:
    """Change about ``rate`` of the words (substitute, delete or insert)."""
    words = text.split(" ")
    out = []
    for w in words:
        r = rng.random()
        if r < rate / 3:
            continue
        if r < 2 * rate / 3:
            out.append(rng.choice(COMMON))
            continue
        out.append(w)
        if r < rate:
            out.append(rng.choice(VERBS))
    return " ".join(out)


def generate(n_docs: int = 3000, *, seed: int = 7) -> tuple[list[dict[str, str]], Truth]:
    """Documents (dicts with id, text, source, license) and the truth about what was planted."""
    rng = random.Random(seed)
    truth = Truth()
    docs: list[dict[str, str]] = []
    topics = list(TOPICS)
    sources = [("web", "CC-BY-4.0"), ("forum", "CC-BY-SA-4.0"), ("docs", "MIT")]
    for i in range(n_docs):
        doc_id = f"doc-{i:06d}"
        source, lic = sources[i % 3] if rng.random() < 0.8 else sources[0]
        roll = rng.random()
        if docs and roll < 0.05:
            orig = rng.choice(docs[: max(1, len(docs) // 2)])
            text = orig["text"]
            truth.exact_dups[doc_id] = orig["id"]
        elif docs and roll < 0.10:
            orig = rng.choice(docs[: max(1, len(docs) // 2)])
            text = near_duplicate(rng, orig["text"], rng.uniform(0.005, 0.03))
            truth.near_dups[doc_id] = orig["id"]
        elif roll < 0.15:
            kind = rng.choice(["short", "symbols", "repetitive", "lorem", "wordsalad"])
            text = _low_quality(rng, kind)
            truth.low_quality[doc_id] = kind
        else:
            text = document(rng, rng.choice(topics))
            if roll < 0.22:
                samples = pii_samples(rng)
                kinds = rng.sample(sorted(samples), 2)
                extra = " ".join(f"Contact {samples[k]} for details." for k in kinds)
                text = text + "\n\n" + extra
                truth.pii[doc_id] = kinds
        docs.append({"id": doc_id, "text": text, "source": source, "license": lic})
    return docs, truth


def write_jsonl(path: Path, docs: list[dict[str, str]], truth: Truth, *, malformed: int = 3) -> Path:
    """Write the corpus as JSONL with ``malformed`` broken lines spread through it (to show quarantine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    broken = ['{"id": "broken-1", "text": ', '{"id": "broken-2", "text": 42}', '{"id": "broken-3"}']
    step = max(1, len(docs) // (malformed + 1))
    line = 0
    with open(path, "w", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            if malformed and i and i % step == 0 and len(truth.malformed_lines) < malformed:
                f.write(broken[len(truth.malformed_lines) % len(broken)] + "\n")
                line += 1
                truth.malformed_lines.append(line)
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
            line += 1
    return path
