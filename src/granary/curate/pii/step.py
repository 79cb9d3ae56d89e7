"""The PII step: redact with typed placeholders, drop the document, or only count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from granary.curate.errors import PipelineSpecError
from granary.curate.pii.patterns import KINDS
from granary.curate.pii.scanner import PiiScanner, count_kinds, redact
from granary.curate.step import DocBatch, Step, StepConfig, register_step


class PiiRedactor(Step):
    """Finds PII; `redact` rewrites it to `<KIND>`, `drop` rejects the document, `detect` only counts.

    Adds an integer column `pii_count` (findings per document) and reports counts per kind.
    """

    config: PiiConfig

    def __init__(self, config: PiiConfig) -> None:
        super().__init__(config)
        self.scanner = PiiScanner(config.kinds or None)
        self.counts: dict[str, int] = {}

    def take_counters(self) -> dict[str, int]:
        """PII findings per kind since the last call (`pii_EMAIL`, ...)."""
        out, self.counts = self.counts, {}
        return out

    def process(self, batch: DocBatch) -> None:
        c = self.config
        texts = batch.table.column(batch.text_column).combine_chunks()
        findings = {i: f for i, f in self.scanner.scan_batch(texts).items() if batch.alive[i]}
        for kind, n in count_kinds(findings).items():
            self.counts[f"pii_{kind}"] = self.counts.get(f"pii_{kind}", 0) + n
        per_doc = np.zeros(len(texts), dtype=np.int32)
        for i, fs in findings.items():
            per_doc[i] = len(fs)
        if c.mode == "drop":
            reasons = np.array(["pii_" + "+".join(sorted({f.kind for f in findings.get(i, [])}))
                                for i in range(len(texts))], dtype=object)
            batch.drop(self.name, per_doc > 0, reasons)
        elif c.mode == "redact" and findings:
            values = texts.to_pylist()
            for i, fs in findings.items():
                values[i] = redact(values[i], fs)
            batch.set_text(pa.array(values, pa.string()))
        batch.set_column(c.count_column, pa.array(per_doc))


@register_step("pii", PiiRedactor)
@dataclass(kw_only=True, frozen=True)
class PiiConfig(StepConfig):
    """Which kinds to look for (empty: all) and what to do with them."""

    mode: Literal["redact", "drop", "detect"] = "redact"
    kinds: tuple[str, ...] = ()
    count_column: str = "pii_count"

    def __post_init__(self) -> None:
        if self.mode not in ("redact", "drop", "detect"):
            raise PipelineSpecError("pii.mode", f"must be redact, drop or detect, got {self.mode!r}")
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise PipelineSpecError("pii.kinds", f"unknown kinds {unknown}", hint=f"known kinds: {list(KINDS)}")
