"""Cursors: encode_cursor writes what json.dumps + base64 would, and decode_cursor reads it back."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from concord_core.browse.cursor import decode_cursor, encode_cursor
from concord_core.operators.errors import OperatorError

KEYS = st.one_of(
    st.datetimes(timezones=st.just(UTC)),
    st.text(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
)


def _reference(order: str, values: tuple[Any, ...]) -> str:
    plain = [{"t": v.isoformat()} if isinstance(v, datetime) else v for v in values]
    raw = json.dumps([order, plain], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@given(st.text(), st.lists(KEYS, max_size=3).map(tuple))
def test_a_cursor_is_compact_json_in_urlsafe_base64(order: str, values: tuple[Any, ...]) -> None:
    assert encode_cursor(order, values) == _reference(order, values)


@given(st.lists(KEYS, min_size=1, max_size=3).map(tuple))
def test_a_cursor_decodes_to_its_values(values: tuple[Any, ...]) -> None:
    kinds = [datetime if isinstance(v, datetime) else str if isinstance(v, str) else float for v in values]
    if any(isinstance(v, str) and "\x00" in v for v in values):
        with pytest.raises(OperatorError):  # NUL never stands for a key: PostgreSQL refuses it in text
            decode_cursor(encode_cursor("created:desc", values), "created:desc", kinds)
        return
    assert decode_cursor(encode_cursor("created:desc", values), "created:desc", kinds) == values
