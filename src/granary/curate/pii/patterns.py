"""The PII types Granary finds: a Python regex, a looser RE2 prefilter, a validator and a priority each."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from granary.curate.pii import validators as v


@dataclass(frozen=True)
class PiiPattern:
    """One PII type.

    Attributes:
        kind: the type name, used in placeholders (`<EMAIL>`) and counters.
        regex: the compiled Python pattern that finds candidates.
        prefilter: an RE2 pattern matching every document that could contain a candidate (Arrow kernel).
        validator: a checksum or range check a candidate must pass, if any.
        priority: lower wins when two findings overlap.
    """

    kind: str
    regex: re.Pattern[str]
    prefilter: str
    validator: Callable[[str], bool] | None
    priority: int


_D = r"(?<![\w.+-])(?<!\d[ -])"  # not glued to a preceding word, number or sign (nor a digit group)
_E = r"(?![\w-]|\.\w)(?![ -]\d)"  # not followed by more of a word, number or digit group

PATTERNS: tuple[PiiPattern, ...] = (
    PiiPattern("PRIVATE_KEY", re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----", re.S),
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----", None, 0),
    PiiPattern("AWS_KEY", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{16}(?![A-Z0-9])"),
               r"(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{16}", None, 0),
    PiiPattern("GITHUB_TOKEN", re.compile(r"(?<![\w])(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})"
                                          r"(?![\w])"), r"gh[pousr]_[A-Za-z0-9]{36}|github_pat_", None, 0),
    PiiPattern("SLACK_TOKEN", re.compile(r"(?<![\w])xox[baprs]-[A-Za-z0-9]{10,13}(?:-[A-Za-z0-9]{10,48}){1,3}"
                                         r"(?![\w-])"), r"xox[baprs]-", None, 0),
    PiiPattern("EMAIL", re.compile(r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
                                   r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"),
               r"@[A-Za-z0-9-]+\.", None, 1),
    PiiPattern("IBAN", re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?"
                                  r"(?![A-Za-z0-9])"), r"[A-Z]{2}\d{2} ?[A-Z0-9]{4}", v.iban_ok, 2),
    PiiPattern("CN_ID", re.compile(r"(?<![\w])\d{17}[\dXx](?![\w])"), r"\d{17}[\dXx]", v.cn_id_ok, 3),
    PiiPattern("CREDIT_CARD", re.compile(_D + r"\d(?:[ -]?\d){12,18}" + _E), r"\d{4}[ -]?\d{4}[ -]?\d{4}",
               v.credit_card_ok, 4),
    PiiPattern("SSN", re.compile(_D + r"\d{3}-\d{2}-\d{4}" + _E), r"\d{3}-\d{2}-\d{4}", v.ssn_ok, 5),
    PiiPattern("IP_ADDRESS", re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|"
                                        r"(?:\d{1,3}\.){3}\d{1,3})?(?![\w:.])"),
               r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}", v.ipv6_ok, 6),
    PiiPattern("IP_ADDRESS", re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)"),
               r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", v.ipv4_ok, 6),
    PiiPattern("PHONE", re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,4}){2,5}" + _E),
               r"\+\d{1,3}[ .(-]?\d", v.phone_ok, 7),
    PiiPattern("PHONE", re.compile(_D + r"(?:\(\d{3}\) ?|\d{3}[-.])\d{3}[-.]\d{4}" + _E),
               r"\d{3}[-.]\d{4}", v.phone_ok, 7),
    PiiPattern("PHONE", re.compile(_D + r"1[3-9]\d(?:[ -]?\d{4}){2}" + _E), r"1[3-9]\d[ -]?\d{4}[ -]?\d{4}",
               None, 7),
    PiiPattern("PHONE", re.compile(_D + r"0\d{1,4}[ -]\d{3,4}[ -]\d{3,4}" + _E + "|" + _D +
                                   r"0\d(?:[ .]\d{2}){4}" + _E), r"0\d{1,4}[ .-]\d{2,4}[ .-]\d{2,4}",
               v.phone_ok, 7),
)

KINDS: tuple[str, ...] = tuple(dict.fromkeys(p.kind for p in PATTERNS))
SECRET_KINDS = ("PRIVATE_KEY", "AWS_KEY", "GITHUB_TOKEN", "SLACK_TOKEN")
