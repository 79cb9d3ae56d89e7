"""The PII scanner: an Arrow/RE2 prefilter over whole batches, then exact regex + validators on candidates."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from granary.curate.pii.patterns import PATTERNS, SECRET_KINDS, PiiPattern


@dataclass(frozen=True)
class PiiFinding:
    """One confirmed PII span in a text."""

    kind: str
    start: int
    end: int
    value: str


def placeholder(kind: str) -> str:
    """The typed placeholder that replaces a finding (secrets share `<SECRET>`)."""
    return "<SECRET>" if kind in SECRET_KINDS else f"<{kind}>"


class PiiScanner:
    """Finds PII of the selected kinds; overlapping findings resolve by pattern priority, then length."""

    def __init__(self, kinds: tuple[str, ...] | None = None) -> None:
        self.patterns: tuple[PiiPattern, ...] = tuple(p for p in PATTERNS if kinds is None or p.kind in kinds)

    def scan(self, text: str, patterns: tuple[PiiPattern, ...] | None = None) -> list[PiiFinding]:
        """Every confirmed, non-overlapping finding in `text`, in order of position."""
        found: list[tuple[int, int, int, PiiFinding]] = []
        for p in patterns if patterns is not None else self.patterns:
            for m in p.regex.finditer(text):
                value = m.group(0)
                if p.validator is None or p.validator(value):
                    found.append((p.priority, -(m.end() - m.start()), m.start(),
                                  PiiFinding(p.kind, m.start(), m.end(), value)))
        found.sort(key=lambda t: t[:3])
        taken: list[PiiFinding] = []
        for *_, f in found:
            if all(f.end <= t.start or f.start >= t.end for t in taken):
                taken.append(f)
        return sorted(taken, key=lambda f: f.start)

    def candidates(self, texts: pa.Array) -> list[np.ndarray]:
        """Per pattern, a boolean mask of documents its RE2 prefilter matches (vectorised)."""
        out = []
        for p in self.patterns:
            mask = pc.match_substring_regex(texts, pattern=p.prefilter)
            out.append(np.asarray(pc.fill_null(mask, False), dtype=bool))
        return out

    def scan_batch(self, texts: pa.Array) -> dict[int, list[PiiFinding]]:
        """Findings per document index, scanning each document only with the patterns its prefilter hits."""
        masks = self.candidates(texts)
        any_hit = np.zeros(len(texts), dtype=bool)
        for m in masks:
            any_hit |= m
        result: dict[int, list[PiiFinding]] = {}
        for i in np.flatnonzero(any_hit):
            pats = tuple(p for p, m in zip(self.patterns, masks, strict=True) if m[i])
            text = texts[int(i)].as_py()
            findings = self.scan(text, pats) if text else []
            if findings:
                result[int(i)] = findings
        return result


def redact(text: str, findings: list[PiiFinding]) -> str:
    """`text` with every finding replaced by its typed placeholder."""
    parts: list[str] = []
    pos = 0
    for f in findings:
        parts.append(text[pos : f.start])
        parts.append(placeholder(f.kind))
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts)


def count_kinds(findings: dict[int, list[PiiFinding]]) -> Counter[str]:
    """Findings per kind."""
    c: Counter[str] = Counter()
    for fs in findings.values():
        c.update(f.kind for f in fs)
    return c
