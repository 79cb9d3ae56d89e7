"""PII: validators, every type found with its placeholder, precision and recall on planted PII."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest

from granary.curate.errors import PipelineSpecError
from granary.curate.pii import validators as v
from granary.curate.pii.patterns import KINDS
from granary.curate.pii.scanner import PiiScanner, redact
from granary.curate.pii.step import PiiConfig
from granary.curate.step import DocBatch
from granary.curate.synth import PII_KINDS, Truth


def test_validators() -> None:
    assert v.luhn_ok("4111111111111111") and not v.luhn_ok("4111111111111112")
    assert v.credit_card_ok("4111 1111 1111 1111") and not v.credit_card_ok("1234 5678 9012 3452")
    assert v.iban_ok("GB82 WEST 1234 5698 7654 32") and v.iban_ok("DE89370400440532013000")
    assert not v.iban_ok("GB82 WEST 1234 5698 7654 33") and not v.iban_ok("DE8937040044053201300")
    assert v.cn_id_ok("11010519491231002X") and not v.cn_id_ok("110105194912310021")
    assert not v.cn_id_ok("11010519491331002X")  # month 13
    assert v.ssn_ok("123-45-6789") and not v.ssn_ok("666-45-6789") and not v.ssn_ok("123-00-6789")
    assert v.ipv6_ok("2001:db8::1") and not v.ipv6_ok("12:30:45")
    assert v.ipv4_ok("10.0.0.255") and not v.ipv4_ok("300.1.1.1")


SAMPLES = {
    "EMAIL": "jane.doe@example.com", "PHONE": "+44 20 7946 0958", "IP_ADDRESS": "2001:db8:85a3::8a2e:370:7334",
    "CREDIT_CARD": "5500-0000-0000-0004", "IBAN": "FR1420041010050500013M02606", "CN_ID": "11010519491231002X",
    "SSN": "078-05-1120", "AWS_KEY": "AKIAIOSFODNN7EXAMPLE", "GITHUB_TOKEN": "ghp_" + "A1b2" * 9,
    "SLACK_TOKEN": "xoxb-123456789012-123456789012-abcdefghijABCDEFGHIJ1234",
    "PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\nMIIBVgIBADANBg\n-----END PRIVATE KEY-----",
}


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_kind_is_found_and_redacted(kind: str) -> None:
    text = f"Before. Value: {SAMPLES[kind]} after."
    found = PiiScanner().scan(text)
    assert [(f.kind, f.value) for f in found] == [(kind, SAMPLES[kind])]
    placeholder = "<SECRET>" if kind in ("AWS_KEY", "GITHUB_TOKEN", "SLACK_TOKEN", "PRIVATE_KEY") else f"<{kind}>"
    assert redact(text, found) == f"Before. Value: {placeholder} after."


def test_chinese_mobile_and_national_phones() -> None:
    got = [f.value for f in PiiScanner().scan("call 13812345678 or 138 1234 5678 or (415) 555-0132 today")]
    assert got == ["13812345678", "138 1234 5678", "(415) 555-0132"]


def test_decoys_are_not_pii() -> None:
    text = ("version 1.2.3 on 2021-04-05 at 12:30:45, card 4111 1111 1111 1112, page 3 of 400, "
            "id 110105194912310021, build 10.0.19041.1")
    assert PiiScanner().scan(text) == []


def test_precision_and_recall_per_type(corpus: tuple[list[dict[str, str]], Truth]) -> None:
    docs, truth = corpus
    scanner = PiiScanner()
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    found_all = scanner.scan_batch(pa.array([d["text"] for d in docs]))
    for i in range(len(docs)):
        planted = set(truth.pii.get(i, []))
        found = {(f.kind, f.value) for f in found_all.get(i, [])}
        for k, _ in planted & found:
            tp[k] += 1
        for k, _ in found - planted:
            fp[k] += 1
        for k, _ in planted - found:
            fn[k] += 1
    for kind in PII_KINDS:
        assert tp[kind] > 0, kind
        assert tp[kind] / (tp[kind] + fp[kind]) >= 0.99, (kind, fp[kind])
        assert tp[kind] / (tp[kind] + fn[kind]) >= 0.99, (kind, fn[kind])


def test_step_modes_and_counts() -> None:
    texts = ["mail a@b.co now", "nothing here", "ssn 078-05-1120 and c@d.org"]
    batch = DocBatch(pa.table({"id": ["0", "1", "2"], "text": texts}))
    step = PiiConfig().build()
    step.process(batch)
    assert batch.table.column("text").to_pylist() == ["mail <EMAIL> now", "nothing here", "ssn <SSN> and <EMAIL>"]
    assert batch.table.column("pii_count").to_pylist() == [1, 0, 2]
    assert step.take_counters() == {"pii_EMAIL": 2, "pii_SSN": 1}  # type: ignore[attr-defined]
    batch = DocBatch(pa.table({"id": ["0", "1", "2"], "text": texts}))
    PiiConfig(mode="drop", kinds=("SSN",)).build().process(batch)
    assert batch.rejected().select(["id", "reason"]).to_pylist() == [{"id": "2", "reason": "pii_SSN"}]
    with pytest.raises(PipelineSpecError, match="unknown kinds"):
        PiiConfig(kinds=("PASSPORT",))
    assert set(SAMPLES) == set(KINDS)
