"""Which memory a variable is: byte spans, overlaps, and the identity of plain arrays.

A plain NumPy array has no identity of its own worth keying state on: `w[:]` and
`w.reshape(...)` are new objects over the same memory, and an `id()` can be reused once an array
is freed. So a plain array variable *is* its memory: the address of its first element, its
shape, its strides and its dtype (`array_key`). A `nadam.Variable` or a torch tensor is its
object, as in Keras and torch.optim.

Memory that two variables of one step share would be stepped twice, and memory a variable
shares with itself (a stride of 0) would be stepped once per alias; both are errors. A gradient
that shares memory with a variable is copied before any variable changes, so it reads as it was
before the step whatever the order of the updates. Spans are byte intervals ``[low, high)``;
intervals that meet are checked exactly where the library can (`np.shares_memory`).

Example:
    >>> import numpy as np
    >>> w = np.zeros(4)
    >>> array_key(w) == array_key(w[:])
    True
    >>> overlaps_itself(np.broadcast_to(np.zeros(1), (3,)))
    True
"""

from __future__ import annotations

import ctypes
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def _address_reader() -> Callable[[np.ndarray], int]:
    """A function from an ndarray to the address of its first element.

    `ndarray.ctypes.data` costs about 2 us, which adds up over hundreds of arrays a step. An
    ndarray object starts with the object header and then its data pointer (NumPy's
    PyArrayObject, stable across releases), so reading that word is ten times faster; the
    layout is checked here on a few arrays, and the official attribute used if it differs.
    """
    offset = object.__basicsize__
    probes = [np.empty(n, dtype) for n in (1, 7, 4096) for dtype in (np.float32, np.float64)]
    probes.append(probes[-1][3:])
    read_word = ctypes.c_void_p.from_address
    try:
        if all(read_word(id(a) + offset).value == a.ctypes.data for a in probes):
            return lambda array: read_word(id(array) + offset).value or 0
    except (ValueError, OverflowError, TypeError):  # pragma: no cover - exotic interpreters
        pass
    return lambda array: array.ctypes.data  # pragma: no cover - exotic interpreters


address = _address_reader()
"""`address(array)`: where an ndarray's first element lives."""


def array_key(array: np.ndarray) -> tuple[Any, ...]:
    """The identity of a plain array variable: first element's address, shape, strides, dtype."""
    return (address(array), array.shape, array.strides, array.dtype)


def strided_span(
    start: int, shape: Sequence[int], strides: Sequence[int], itemsize: int
) -> tuple[int, int] | None:
    """The bytes ``[low, high)`` that a strided layout touches; None when it has no element."""
    low = high = start
    for size, stride in zip(shape, strides, strict=True):
        if size == 0:
            return None
        reach = (size - 1) * stride
        if reach < 0:
            low += reach
        else:
            high += reach
    return low, high + itemsize


def strided_self_overlap(shape: Sequence[int], strides: Sequence[int], itemsize: int) -> bool:
    """Whether two elements of a strided layout may share bytes.

    Exact for every layout NumPy and torch produce by slicing, transposing and reshaping; a
    layout built by hand that interleaves its axes without overlapping may be reported too.
    """
    axes = sorted(
        (abs(stride), size) for size, stride in zip(shape, strides, strict=True) if size > 1
    )
    reach = itemsize
    for stride, size in axes:
        if stride < reach:
            return True
        reach = stride * (size - 1) + reach
    return False


def overlaps_itself(array: np.ndarray) -> bool:
    """Whether an ndarray's elements share memory with each other (e.g. a stride of 0)."""
    return strided_self_overlap(array.shape, array.strides, array.itemsize)


def first_overlap(
    spans: Sequence[tuple[int, int] | None],
    truly_overlap: Callable[[int, int], bool],
) -> tuple[int, int] | None:
    """Positions (i, j), i < j, of two entries whose memory overlaps, or None.

    `spans` are byte intervals (None: no memory); intervals that meet are confirmed with
    `truly_overlap(i, j)`, so interleaved views (``w[::2]`` and ``w[1::2]``) are not reported.
    """
    order = sorted(
        (span[0], span[1], position) for position, span in enumerate(spans) if span is not None
    )
    reach = None  # the highest end of the spans seen so far
    for index, (low, high, position) in enumerate(order):
        # Sorted spans of distinct variables are disjoint, so this is one comparison each;
        # only spans that meet an earlier one are looked at more closely.
        if reach is not None and reach > low:
            for _, other_high, other in reversed(order[:index]):
                if other_high > low and truly_overlap(other, position):
                    return (min(other, position), max(other, position))
        reach = high if reach is None else max(reach, high)
    return None


class SpanIndex:
    """Sorted disjoint-ish byte spans, to ask cheaply whether some memory meets any of them.

    `owners` optionally names the allocation each span lies in (None: not known); when every
    span's owner is known, memory of another owner cannot meet any span, which
    `may_meet_owner` tells without computing that memory's span.
    """

    __slots__ = ("_lows", "_highs", "_owners")

    def __init__(
        self, spans: Sequence[tuple[int, int] | None], owners: Sequence[Any] | None = None
    ) -> None:
        self._owners = (
            frozenset(owners) if owners is not None and None not in owners else None
        )
        ordered = sorted(span for span in spans if span is not None)
        self._lows = [span[0] for span in ordered]
        self._highs = [span[1] for span in ordered]
        # A running maximum makes "does any span before this one reach past `low`" one lookup.
        running = 0
        for position, high in enumerate(self._highs):
            running = max(running, high)
            self._highs[position] = running

    def may_meet_owner(self, owner: Any) -> bool:
        """False only when memory of allocation `owner` certainly meets no indexed span."""
        return owner is None or self._owners is None or owner in self._owners

    def meets(self, span: tuple[int, int] | None) -> bool:
        """Whether `span` shares at least one byte range with an indexed span (conservative)."""
        if span is None or not self._lows:
            return False
        low, high = span
        before = bisect_left(self._lows, high)  # spans starting before `high` ends
        return before > 0 and self._highs[before - 1] > low
