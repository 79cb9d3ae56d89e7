"""Validation of dataset, branch and tag names, and parsing of references like ``web@v3``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from granary.errors import InvalidNameError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
REF_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
HEX_RE = re.compile(r"[0-9a-f]{4,64}")


def check_dataset_name(name: str) -> str:
    """Return ``name`` if it is a valid dataset name, else raise :class:`InvalidNameError`."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidNameError(
            f"invalid dataset name {name!r}",
            hint="use 1-128 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def check_ref_name(name: str, what: str = "branch") -> str:
    """Return ``name`` if it is a valid branch or tag name, else raise :class:`InvalidNameError`."""
    if (
        not isinstance(name, str)
        or not REF_NAME_RE.fullmatch(name)
        or ".." in name
        or name.endswith("/")
        or "//" in name
    ):
        raise InvalidNameError(
            f"invalid {what} name {name!r}",
            hint=f"use 1-128 characters of letters, digits, '.', '_', '-' or '/' for a {what}",
        )
    return name


@dataclass(frozen=True)
class Ref:
    """A parsed reference: a dataset and an optional branch, tag or version-id prefix."""

    dataset: str
    rev: str | None = None

    def __str__(self) -> str:
        return self.dataset if self.rev is None else f"{self.dataset}@{self.rev}"


def parse_ref(text: str) -> Ref:
    """Parse ``name``, ``name@branch``, ``name@tag`` or ``name@<version-id-prefix>``."""
    if not isinstance(text, str) or not text:
        raise InvalidNameError(f"invalid reference {text!r}", hint="write NAME or NAME@BRANCH|TAG|VERSION")
    name, sep, rev = text.partition("@")
    check_dataset_name(name)
    if not sep:
        return Ref(name)
    if not rev:
        raise InvalidNameError(f"invalid reference {text!r}: nothing after '@'", hint="write NAME@BRANCH|TAG|VERSION")
    check_ref_name(rev, "branch, tag or version")
    return Ref(name, rev)


def looks_like_version_id(rev: str) -> bool:
    """Whether ``rev`` could be a version-id prefix (4 to 64 lowercase hex digits)."""
    return bool(HEX_RE.fullmatch(rev))
