"""Hypothesis strategies for arbitrary JSON documents, shared by the fuzz tests
(tests/test_collector_fuzz.py, tests/test_handlers_fuzz.py)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def json_scalars(*, int_bits: int, text_size: int) -> st.SearchStrategy[Any]:
    """null, booleans, integers within ±2**int_bits, finite floats, short strings."""
    return (
        st.none()
        | st.booleans()
        | st.integers(-(2**int_bits), 2**int_bits)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=text_size)
    )


def json_values(
    *, int_bits: int, text_size: int, key_size: int, size: int, leaves: int
) -> st.SearchStrategy[Any]:
    """Scalars nested in lists and objects of at most ``size`` items (keys up to ``key_size``
    characters), ``leaves`` scalars in all."""
    return st.recursive(
        json_scalars(int_bits=int_bits, text_size=text_size),
        lambda kids: (
            st.lists(kids, max_size=size)
            | st.dictionaries(st.text(max_size=key_size), kids, max_size=size)
        ),
        max_leaves=leaves,
    )
