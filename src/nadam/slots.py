"""`SlotTable`: the Keras face's slots per variable, keyed by what the variable is.

A `nadam.Variable` or a torch tensor is its object; a plain NumPy array is its memory
(`memory.array_key`), so `w`, `w[:]` and every other view of exactly the same elements share
one set of slots and nothing accumulates when a fresh view is passed each step. The table keeps
every variable it has slots for alive, so no key can be reused by an unrelated object while
the table holds it; it pickles and deep-copies as (variable, slots) pairs and rebuilds its keys
from the copies, so a copied optimizer keeps its slots for the copied variables and never
applies stale ones to a new object that happens to get an old `id()`.

Example:
    >>> import numpy as np
    >>> table = SlotTable()
    >>> w = np.zeros(3)
    >>> table.add(w, "m", np.zeros(3))
    >>> table.get(w[:])["m"] is table.get(w)["m"]
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nadam import memory


def variable_key(var: Any) -> Any:
    """The key of `var`'s slots: its memory for a plain ndarray, else its object."""
    if type(var) is np.ndarray:
        return memory.array_key(var)
    return id(var)


class SlotTable:
    """Slots per variable in creation order, and the variables that own them."""

    __slots__ = ("_slots", "_owners", "_array_keys")

    def __init__(self) -> None:
        self._slots: dict[Any, dict[str, Any]] = {}
        self._owners: dict[Any, Any] = {}
        # id(ndarray object) -> the key it had when its slots were made: tells an array
        # reshaped or re-typed in place (same object, new key) from a new view.
        self._array_keys: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def get(self, var: Any) -> dict[str, Any] | None:
        """`var`'s slots by name, or None."""
        return self._slots.get(variable_key(var))

    def get_by_key(self, key: Any) -> dict[str, Any] | None:
        return self._slots.get(key)

    def add(self, var: Any, name: str, slot: Any) -> None:
        """Record `slot` as `var`'s slot `name`."""
        key = variable_key(var)
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = {}
            self._owners[key] = var
            if type(var) is np.ndarray:
                self._array_keys[id(var)] = key
        slots[name] = slot

    def changed_in_place(self, var: Any, key: Any) -> bool:
        """Whether `var` is an ndarray that had slots under another key: the same object,
        reshaped or re-typed in place (``a.shape = ...``, ``a.dtype = ...``)."""
        if type(var) is not np.ndarray:
            return False
        known = self._array_keys.get(id(var))
        return known is not None and known != key and self._owners.get(known) is var

    def items(self) -> list[tuple[Any, dict[str, Any]]]:
        """(variable, slots) pairs in creation order."""
        return [(self._owners[key], slots) for key, slots in self._slots.items()]

    # --- copies ----------------------------------------------------------------------------
    def __getstate__(self) -> list[tuple[Any, dict[str, Any]]]:
        return self.items()

    def __setstate__(self, pairs: list[tuple[Any, dict[str, Any]]]) -> None:
        self.__init__()
        for var, slots in pairs:
            for name, slot in slots.items():
                self.add(var, name, slot)
