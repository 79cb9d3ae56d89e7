"""Cursor paging: opaque cursors that encode the sort key of the last item (keyset paging, no OFFSET)."""

from __future__ import annotations

import base64
import json
import math
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from granary.api.config import DEFAULT_PAGE, MAX_PAGE

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list: its items and the cursor of the next page (null on the last)."""

    items: list[T]
    next_cursor: str | None = None


def encode_cursor(key: list[Any]) -> str:
    """An opaque cursor for the sort key ``key`` of the last item of a page."""
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, types: tuple[type, ...]) -> list[Any] | None:
    """The sort key a cursor encodes; ValueError (a 400) when it was not made by :func:`encode_cursor`."""
    if not cursor:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"malformed cursor {cursor[:40]!r}: pass back the next_cursor of the previous page "
                         "unchanged") from None
    ok = isinstance(key, list) and len(key) == len(types) and all(
        _fits(v, t) for v, t in zip(key, types, strict=True))
    if not ok:
        raise ValueError("this cursor belongs to another list: pass back the next_cursor of the previous page")
    return key


def _fits(value: Any, typ: type) -> bool:
    if isinstance(value, bool):
        return False
    if typ is float:
        return isinstance(value, int | float) and math.isfinite(value)
    return isinstance(value, typ)


def page_limit(limit: int) -> int:
    """Clamp a requested page size."""
    return max(1, min(int(limit), MAX_PAGE))


__all__ = ["DEFAULT_PAGE", "MAX_PAGE", "Page", "decode_cursor", "encode_cursor", "page_limit"]
