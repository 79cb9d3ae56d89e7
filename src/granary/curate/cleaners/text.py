"""Text cleaners: Unicode normalisation, control characters, whitespace, HTML/Markdown stripping, boilerplate lines.

All run as Arrow compute kernels (RE2, C++) over whole batches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from granary.curate.errors import PipelineSpecError
from granary.curate.step import DocBatch, Step, StepConfig, register_step

_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
_INVISIBLE = "[\u200b\u200c\u200d\u2060\ufeff\u00ad]"
_ENTITIES = (("&nbsp;", " "), ("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&#39;", "'"), ("&apos;", "'"),
             ("&mdash;", "—"), ("&ndash;", "\u2013"), ("&hellip;", "…"), ("&amp;", "&"))


def _text(batch: DocBatch) -> pa.Array:
    return batch.table.column(batch.text_column)


def _sub(arr: pa.Array, pattern: str, repl: str) -> pa.Array:
    return pc.replace_substring_regex(arr, pattern=pattern, replacement=repl)


class UnicodeNormalizer(Step):
    """Applies NFC/NFKC/NFD/NFKD normalisation."""

    config: UnicodeNormalizeConfig

    def process(self, batch: DocBatch) -> None:
        batch.set_text(pc.utf8_normalize(_text(batch), form=self.config.form))


@register_step("normalize_unicode", UnicodeNormalizer)
@dataclass(kw_only=True, frozen=True)
class UnicodeNormalizeConfig(StepConfig):
    """Unicode normalisation form."""

    form: Literal["NFC", "NFKC", "NFD", "NFKD"] = "NFC"

    def __post_init__(self) -> None:
        if self.form not in ("NFC", "NFKC", "NFD", "NFKD"):
            raise PipelineSpecError("normalize_unicode", f"form must be NFC, NFKC, NFD or NFKD, got {self.form!r}")


class ControlCharRemover(Step):
    """Removes C0 control characters except tab/newline/CR, DEL, and (optionally) invisible format chars."""

    config: ControlCharConfig

    def process(self, batch: DocBatch) -> None:
        arr = _sub(_text(batch), _CONTROL, "")
        if self.config.remove_invisible:
            arr = _sub(arr, _INVISIBLE, "")
        batch.set_text(arr)


@register_step("remove_control_chars", ControlCharRemover)
@dataclass(kw_only=True, frozen=True)
class ControlCharConfig(StepConfig):
    """Also drop zero-width and soft-hyphen characters when `remove_invisible`."""

    remove_invisible: bool = True


class WhitespaceNormalizer(Step):
    """CRLF/CR to LF, runs of spaces/tabs to one space, trailing spaces, at most `max_blank_lines` blank lines."""

    config: WhitespaceConfig

    def process(self, batch: DocBatch) -> None:
        c = self.config
        arr = _sub(_text(batch), r"\r\n?", "\n")
        if c.collapse_spaces:
            arr = _sub(arr, r"[ \t\x{00a0}\x{3000}]+", " ")
        arr = _sub(arr, r"(?m)[ \t]+$", "")
        arr = _sub(arr, r"(?m)^ +", "") if c.strip_line_indent else arr
        arr = _sub(arr, f"\n{{{c.max_blank_lines + 2},}}", "\n" * (c.max_blank_lines + 1))
        batch.set_text(pc.utf8_trim_whitespace(arr))


@register_step("normalize_whitespace", WhitespaceNormalizer)
@dataclass(kw_only=True, frozen=True)
class WhitespaceConfig(StepConfig):
    """Whitespace rules. Code corpora should keep `collapse_spaces` off (indentation matters)."""

    collapse_spaces: bool = True
    strip_line_indent: bool = False
    max_blank_lines: int = 1

    def __post_init__(self) -> None:
        if self.max_blank_lines < 0:
            raise PipelineSpecError("normalize_whitespace", "max_blank_lines must be >= 0")


class HtmlStripper(Step):
    """Removes script/style blocks, comments and tags, turns block tags into newlines, unescapes entities."""

    def process(self, batch: DocBatch) -> None:
        arr = _sub(_text(batch), r"(?is)<(script|style)\b.*?</(script|style)\s*>", "")
        arr = _sub(arr, r"(?s)<!--.*?-->", "")
        arr = _sub(arr, r"(?i)<(br|/p|/div|/li|/h[1-6]|/tr|p|div|li|h[1-6]|tr)\b[^>]*>", "\n")
        arr = _sub(arr, r"<[^>\n]{1,1000}>", "")
        for entity, char in _ENTITIES:
            arr = pc.replace_substring(arr, entity, char)
        batch.set_text(arr)


@register_step("strip_html", HtmlStripper)
@dataclass(kw_only=True, frozen=True)
class HtmlStripConfig(StepConfig):
    """No options."""


class MarkdownStripper(Step):
    """Reduces Markdown to plain text: front matter, headings, emphasis, links, images, inline code, tables."""

    config: MarkdownStripConfig

    def process(self, batch: DocBatch) -> None:
        c = self.config
        arr = _text(batch)
        if c.remove_front_matter:
            arr = _sub(arr, r"\A---\n(?s:.*?)\n---\n", "")
        if c.remove_code_blocks:
            arr = _sub(arr, r"(?s)```.*?```", "")
        else:
            arr = _sub(arr, r"(?m)^```.*$", "")
        arr = _sub(arr, r"!\[([^\]\n]*)\]\([^)\n]*\)", r"\1" if c.keep_image_alt else "")
        arr = pc.replace_substring_regex(arr, r"\[([^\]\n]+)\]\([^)\n]*\)", r"\1")
        arr = _sub(arr, r"(?m)^#{1,6}\s+", "")
        arr = _sub(arr, r"(?m)^\s*>\s?", "")
        arr = _sub(arr, r"(?m)^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$", "")
        arr = pc.replace_substring_regex(arr, r"(\*\*|__)([^\n]+?)(\*\*|__)", r"\2")
        arr = pc.replace_substring_regex(arr, r"`([^`\n]+)`", r"\1")
        batch.set_text(arr)


@register_step("strip_markdown", MarkdownStripper)
@dataclass(kw_only=True, frozen=True)
class MarkdownStripConfig(StepConfig):
    """What to remove besides markup characters."""

    remove_front_matter: bool = True
    remove_code_blocks: bool = False
    keep_image_alt: bool = True


class BoilerplateLineRemover(Step):
    """Removes whole lines matching any of the configured regular expressions (RE2 syntax)."""

    config: BoilerplatePatternConfig

    def process(self, batch: DocBatch) -> None:
        pattern = "|".join(f"(?:{p})" for p in self.config.patterns)
        flags = "(?mi)" if self.config.ignore_case else "(?m)"
        arr = _sub(_text(batch), flags + r"^[^\n]*(?:" + pattern + r")[^\n]*(?:\n|$)", "")
        batch.set_text(arr)


@register_step("boilerplate_patterns", BoilerplateLineRemover)
@dataclass(kw_only=True, frozen=True)
class BoilerplatePatternConfig(StepConfig):
    """Line patterns (regular expressions) that mark boilerplate."""

    patterns: tuple[str, ...] = (r"^\s*(share|tweet|pin it|email)( this)?\s*$", r"all rights reserved",
                                 r"^\s*(accept|reject) (all )?cookies\s*$", r"^\s*skip to (main )?content\s*$")
    ignore_case: bool = True

    def __post_init__(self) -> None:
        if not self.patterns:
            raise PipelineSpecError("boilerplate_patterns", "patterns must not be empty")
        for i, p in enumerate(self.patterns):
            try:
                re.compile(p)
            except re.error as exc:
                raise PipelineSpecError(f"boilerplate_patterns.patterns[{i}]", f"bad regex {p!r}: {exc}") from exc


class LengthFilter(Step):
    """Drops documents outside [min_chars, max_chars] (also catches texts emptied by cleaners)."""

    config: LengthConfig

    def process(self, batch: DocBatch) -> None:
        chars = batch.view.doc_chars
        batch.drop(self.name, chars < self.config.min_chars, "too_short")
        if self.config.max_chars is not None:
            batch.drop(self.name, chars > self.config.max_chars, "too_long")


@register_step("length", LengthFilter)
@dataclass(kw_only=True, frozen=True)
class LengthConfig(StepConfig):
    """Character bounds."""

    min_chars: int = 1
    max_chars: int | None = None

    def __post_init__(self) -> None:
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise PipelineSpecError("length", f"max_chars {self.max_chars} < min_chars {self.min_chars}")
