"""Cursors round-trip, and anything else is refused with a message that says what to do."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from granary.api.paging import decode_cursor, encode_cursor, page_limit


@settings(deadline=None, max_examples=200)
@given(st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=64))
def test_cursor_round_trip(at: float, key: str) -> None:
    assert decode_cursor(encode_cursor([at, key]), (float, str)) == [at, key]


@settings(deadline=None, max_examples=200)
@given(st.text(max_size=80))
def test_garbage_cursor_is_a_value_error_or_a_key(text: str) -> None:
    try:
        key = decode_cursor(text, (int,))
    except ValueError as exc:
        assert "next_cursor" in str(exc)
    else:
        assert key is None or (len(key) == 1 and type(key[0]) is int)


def test_cursor_of_another_list_is_refused() -> None:
    with pytest.raises(ValueError, match="belongs to another list"):
        decode_cursor(encode_cursor(["web"]), (float, str))
    with pytest.raises(ValueError, match="belongs to another list"):
        decode_cursor(encode_cursor([True]), (int,))


def test_page_limit_clamps() -> None:
    assert (page_limit(0), page_limit(50), page_limit(10**9)) == (1, 50, 500)
