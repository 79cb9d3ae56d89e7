"""A labelled synthetic corpus for curation tests and benchmarks: clean English-like documents plus planted
exact duplicates, near duplicates (word edits), low-quality documents, PII of every type and decoys."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

from granary.curate.pii.validators import IBAN_LENGTHS, luhn_ok

FUNCTION_WORDS = ("the", "of", "and", "to", "in", "that", "with", "for", "is", "was", "on", "as", "by",
                  "be", "have", "from", "at", "this", "which", "are", "it", "their", "we", "they")
SOURCES = ("web", "books", "forums")
LOW_QUALITY_KINDS = ("short", "repetitive", "symbols", "bullets", "lorem", "ellipsis", "no_punct")


@dataclass
class Truth:
    """What was planted. Indices refer to positions in the document list."""

    kind: list[str] = field(default_factory=list)
    original: dict[int, int] = field(default_factory=dict)  # duplicate index -> original index
    edit_rate: dict[int, float] = field(default_factory=dict)
    pii: dict[int, list[tuple[str, str]]] = field(default_factory=dict)  # doc -> [(kind, value)]
    decoys: dict[int, list[str]] = field(default_factory=dict)

    def indices(self, kind: str) -> list[int]:
        """Documents of one planted kind."""
        return [i for i, k in enumerate(self.kind) if k == kind]


class _Gen:
    def __init__(self, seed: int, vocab_size: int = 30000) -> None:
        self.rng = random.Random(seed)
        r = self.rng
        letters = "etaoinshrdlucmfwypvbgkjqxz"
        weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1]
        self.vocab = ["".join(r.choices(letters, weights, k=r.randint(3, 9))) for _ in range(vocab_size)]

    def sentence(self) -> str:
        r = self.rng
        words = [r.choice(FUNCTION_WORDS) if r.random() < 0.35 else r.choice(self.vocab)
                 for _ in range(r.randint(8, 18))]
        return " ".join(words).capitalize() + r.choice(".....!?")

    def paragraph(self) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(2, 4)))

    def document(self) -> str:
        return "\n\n".join(self.paragraph() for _ in range(self.rng.randint(3, 6)))

    def near_copy(self, text: str, rate: float) -> str:
        r = self.rng
        words = text.split(" ")
        n_edits = max(1, round(rate * len(words)))
        for _ in range(n_edits):
            i = r.randrange(len(words))
            op = r.random()
            if op < 0.6:
                words[i] = r.choice(self.vocab)
            elif op < 0.8:
                words.insert(i, r.choice(self.vocab))
            elif len(words) > 10:
                del words[i]
        return " ".join(words)

    def low_quality(self, kind: str) -> str:
        r = self.rng
        if kind == "short":
            return self.sentence()
        if kind == "repetitive":
            line = self.sentence()
            return "\n".join([line] * r.randint(20, 40))
        if kind == "symbols":
            return " ".join(r.choice(["#", "##", "...", "#tag", "&&", "%%"]) + r.choice(self.vocab)
                            for _ in range(120))
        if kind == "bullets":
            return "\n".join("- " + " ".join(r.choices(self.vocab, k=3)) for _ in range(40))
        if kind == "lorem":
            return "Lorem ipsum dolor sit amet. " + self.document()
        if kind == "ellipsis":
            return "\n".join(" ".join(r.choices(self.vocab, k=6)) + "..." for _ in range(30))
        return "\n".join(" ".join(r.choices(self.vocab, k=r.randint(1, 3))) for _ in range(60))

    # -- PII values, every one valid for its validator -------------------------------------------
    def pii(self, kind: str) -> str:
        value: str = getattr(self, f"_pii_{kind.lower()}")()
        return value

    def _digits(self, n: int) -> str:
        return "".join(self.rng.choices(string.digits, k=n))

    def _pii_email(self) -> str:
        r = self.rng
        tld = r.choice(["com", "org", "net", "io"])
        return f"{r.choice(self.vocab)}.{r.choice(self.vocab)}@{r.choice(self.vocab)}.{tld}"

    def _pii_phone(self) -> str:
        r = self.rng
        fmt = r.randrange(5)
        if fmt == 0:
            return f"+1 {r.randint(201, 989)}-{r.randint(200, 989)}-{self._digits(4)}"
        if fmt == 1:
            return f"({r.randint(201, 989)}) {r.randint(200, 989)}-{self._digits(4)}"
        if fmt == 2:
            return f"1{r.choice('3456789')}{self._digits(9)}"
        if fmt == 3:
            return f"+86 1{r.choice('3456789')}{self._digits(1)} {self._digits(4)} {self._digits(4)}"
        return f"+44 20 {self._digits(4)} {self._digits(4)}"

    def _pii_ip_address(self) -> str:
        r = self.rng
        if r.random() < 0.5:
            return ".".join(str(r.randint(1, 254)) for _ in range(4))
        groups = [f"{r.randint(1, 0xFFFF):x}" for _ in range(8)]
        if r.random() < 0.5:
            return ":".join(groups[:3]) + "::" + ":".join(groups[5:])
        return ":".join(groups)

    def _pii_credit_card(self) -> str:
        r = self.rng
        while True:
            num = r.choice(["4", "51", "52", "53", "54", "55"]) + self._digits(14)
            num = num[:15]
            for d in "0123456789":
                if luhn_ok(num + d):
                    num += d
                    break
            groups = [num[i : i + 4] for i in range(0, 16, 4)]
            return r.choice([" ", "-", ""]).join(groups)

    def _pii_iban(self) -> str:
        r = self.rng
        country = r.choice(["DE", "GB", "FR", "NL", "ES", "IT"])
        length = IBAN_LENGTHS[country]
        if country in ("GB", "NL"):
            bban = "".join(r.choices(string.ascii_uppercase, k=4)) + self._digits(length - 8)
        elif country == "IT":
            bban = r.choice(string.ascii_uppercase) + self._digits(length - 5)
        else:
            bban = self._digits(length - 4)
        num = "".join(str(int(ch, 36)) for ch in bban + country + "00")
        check = 98 - int(num) % 97
        iban = f"{country}{check:02d}{bban}"
        if r.random() < 0.5:
            return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
        return iban

    def _pii_cn_id(self) -> str:
        r = self.rng
        body = f"{r.randint(110000, 659000)}{r.randint(1950, 2005)}{r.randint(1, 12):02d}{r.randint(1, 28):02d}"
        body += self._digits(3)
        weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
        total = sum(int(c) * w for c, w in zip(body, weights, strict=True))
        return body + "10X98765432"[total % 11]

    def _pii_ssn(self) -> str:
        r = self.rng
        return f"{r.randint(1, 665):03d}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}"

    def _pii_aws_key(self) -> str:
        return "AKIA" + "".join(self.rng.choices(string.ascii_uppercase + string.digits, k=16))

    def _pii_github_token(self) -> str:
        return "ghp_" + "".join(self.rng.choices(string.ascii_letters + string.digits, k=36))

    def _pii_slack_token(self) -> str:
        return f"xoxb-{self._digits(11)}-{self._digits(12)}-" + "".join(
            self.rng.choices(string.ascii_letters + string.digits, k=24))

    def _pii_private_key(self) -> str:
        body = "\n".join("".join(self.rng.choices(string.ascii_letters + string.digits + "+/", k=64))
                         for _ in range(4))
        return f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"

    def decoy(self) -> str:
        r = self.rng
        kind = r.randrange(5)
        if kind == 0:  # fails Luhn
            num = "4" + self._digits(15)
            while luhn_ok(num):
                num = "4" + self._digits(15)
            return " ".join(num[i : i + 4] for i in range(0, 16, 4))
        if kind == 1:
            return f"version {r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 99)}"
        if kind == 2:
            return f"{r.randint(1990, 2024)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
        if kind == 3:
            return f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}"
        return f"page {r.randint(1, 400)} of {r.randint(400, 900)}"


PII_KINDS = ("EMAIL", "PHONE", "IP_ADDRESS", "CREDIT_CARD", "IBAN", "CN_ID", "SSN", "AWS_KEY", "GITHUB_TOKEN",
             "SLACK_TOKEN", "PRIVATE_KEY")


def generate(n_docs: int, *, seed: int = 0, exact_dup_rate: float = 0.03, near_dup_rate: float = 0.05,
             low_quality_rate: float = 0.06, pii_rate: float = 0.04, decoy_rate: float = 0.03
             ) -> tuple[list[dict[str, str]], Truth]:
    """`n_docs` documents ({id, text, source}) and what was planted in them."""
    g = _Gen(seed)
    r = g.rng
    docs: list[dict[str, str]] = []
    truth = Truth()
    originals: list[int] = []
    for i in range(n_docs):
        u = r.random()
        source = r.choice(SOURCES)
        if originals and u < exact_dup_rate:
            o = r.choice(originals)
            text, kind = docs[o]["text"] + r.choice(["", " ", "\n"]), "exact_dup"
            truth.original[i] = o
        elif originals and u < exact_dup_rate + near_dup_rate:
            o = r.choice(originals)
            rate = r.uniform(0.005, 0.03)
            text, kind = g.near_copy(docs[o]["text"], rate), "near_dup"
            truth.original[i] = o
            truth.edit_rate[i] = rate
        elif u < exact_dup_rate + near_dup_rate + low_quality_rate:
            lq = r.choice(LOW_QUALITY_KINDS)
            text, kind = g.low_quality(lq), f"low_quality:{lq}"
        elif u < exact_dup_rate + near_dup_rate + low_quality_rate + pii_rate:
            text, kind = g.document(), "pii"
            planted = [(k, g.pii(k)) for k in r.sample(PII_KINDS, r.randint(1, 3))]
            for k, value in planted:
                text += f"\n\nFor reference the {k.lower().replace('_', ' ')} is {value} and nothing else."
            truth.pii[i] = planted
        else:
            text, kind = g.document(), "clean"
            if r.random() < decoy_rate:
                d = g.decoy()
                text += f"\n\nSee {d} for details."
                truth.decoys[i] = [d]
            else:
                originals.append(i)
        docs.append({"id": f"doc-{i:07d}", "text": text, "source": source})
        truth.kind.append(kind)
    return docs, truth
