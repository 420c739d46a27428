"""Helpers shared by the PyTorch tests: parameters from arrays, snapshots, exact comparisons."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

import nadam

PATHS = ("default", "reference")
DTYPES = (np.float32, np.float64)
TORCH_DTYPES = {np.float16: torch.float16, np.float32: torch.float32, np.float64: torch.float64}


def on_path(path: str) -> contextlib.AbstractContextManager[None]:
    """The kernel path a step runs on: whatever `select` picks, or the reference formula."""
    if path == "default":
        return contextlib.nullcontext()
    if path == "reference":
        return nadam.kernels.reference_only()
    raise ValueError(path)


def parameter(array: np.ndarray) -> torch.nn.Parameter:
    """An `nn.Parameter` holding a copy of `array` (same dtype)."""
    return torch.nn.Parameter(torch.from_numpy(np.array(array, copy=True)))


def tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, copy=True))


def numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().copy()
    if isinstance(value, nadam.Variable):
        return value.numpy()
    return np.array(value, copy=True)


def bits(array: Any) -> np.ndarray:
    array = np.ascontiguousarray(numpy(array))
    return array.reshape(-1).view(f"u{array.dtype.itemsize}")


def assert_bit_equal(ours: Any, theirs: Any, what: str = "") -> None:
    """Same dtype, same shape, same bits."""
    a, b = numpy(ours), numpy(theirs)
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} != {b.dtype}"
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    same = bits(a) == bits(b)
    if not same.all():
        bad = int(np.flatnonzero(~same)[0])
        raise AssertionError(
            f"{what}: {int((~same).sum())} of {same.size} elements differ, first at {bad}: "
            f"{a.reshape(-1)[bad]!r} != {b.reshape(-1)[bad]!r}"
        )


def assert_all_bit_equal(ours: Sequence[Any], theirs: Sequence[Any], what: str = "") -> None:
    assert len(ours) == len(theirs), f"{what}: {len(ours)} arrays != {len(theirs)}"
    for position, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert_bit_equal(a, b, f"{what}[{position}]")


def random_array(rng: np.random.Generator, shape: Sequence[int], dtype: Any) -> np.ndarray:
    """Normal entries at a random scale (1e-3 .. 10)."""
    scale = 10.0 ** rng.uniform(-3, 1)
    return np.asarray(rng.standard_normal(tuple(shape)) * scale, dtype=dtype)


def random_rows(
    rng: np.random.Generator, rows: int, row_shape: Sequence[int], dtype: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Indices with repeats (one row at least three times) and their value rows."""
    repeated = int(rng.integers(rows))
    extra = rng.integers(0, rows, size=int(rng.integers(0, 2 * rows + 1)))
    indices = rng.permutation(np.concatenate([[repeated] * 3, extra])).astype(np.int64)
    return random_array(rng, (indices.size, *row_shape), dtype), indices


def coo_rows(values: np.ndarray, indices: np.ndarray, shape: Sequence[int]) -> torch.Tensor:
    """An uncoalesced sparse COO tensor of rows, as `nn.Embedding(sparse=True)` makes."""
    return torch.sparse_coo_tensor(
        torch.from_numpy(indices.reshape(1, -1).copy()), tensor(values), tuple(shape),
        check_invariants=True,
    )


class Snapshot:
    """Everything a failed call must leave alone: parameters (values, storage) and state."""

    def __init__(self, optimizer: Any, params: Sequence[torch.Tensor]) -> None:
        self.optimizer = optimizer
        self.params = list(params)
        self.values = [numpy(p) for p in self.params]
        self.pointers = [p.data_ptr() for p in self.params]
        self.weights = [numpy(w) for w in optimizer.get_weights()]
        self.iterations = int(numpy(optimizer.iterations))

    def assert_unchanged(self) -> None:
        for position, param in enumerate(self.params):
            assert param.data_ptr() == self.pointers[position]
            assert_bit_equal(param, self.values[position], f"param {position}")
        assert_all_bit_equal(self.optimizer.get_weights(), self.weights, "get_weights()")
        assert int(numpy(self.optimizer.iterations)) == self.iterations


@contextlib.contextmanager
def unchanged(optimizer: Any, params: Sequence[torch.Tensor]) -> Iterator[Snapshot]:
    """Check, after the block (which must raise), that nothing changed."""
    snapshot = Snapshot(optimizer, params)
    yield snapshot
    snapshot.assert_unchanged()
