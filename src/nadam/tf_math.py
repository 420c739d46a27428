"""Scalar maths computed the way TensorFlow's CPU kernels compute it.

Keras's per-step scalars (the momentum schedule's `0.96 ** (0.004 t)`, the bias correction
`beta_2 ** t`, the learning-rate schedules) go through TensorFlow's scalar `pow`, `log` and
`cos`, which call the C library: `powf`, `logf`, `cosf` for float32. Those are not correctly
rounded, so neither NumPy's float32 functions nor a rounded float64 result reproduce Keras bit
for bit; the very same C functions do. TensorFlow also flushes subnormal results to zero.

Example:
    >>> import numpy as np
    >>> from nadam import tf_math
    >>> float(tf_math.pow(np.float32(2), np.float32(10)))
    1024.0
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import sys
from collections.abc import Callable
from typing import Any

import numpy as np


def _load_c_float_math() -> Any:
    """The C library's float32 `powf`, `cosf` and `logf`, or None where it cannot be loaded.

    TensorFlow's scalar float32 kernels call exactly these, and they are not correctly rounded
    (glibc's `powf` is off by one unit on about 0.1 % of inputs, `cosf` on about 1 %). Rounding a
    float64 result instead agrees to one unit, but Keras's cosine schedules subtract nearly equal
    numbers (`1 + cos(x)` near the end of a period), which turns that unit into hundreds in the
    learning rate, so matching Keras there needs the very same functions.
    """
    candidates = ["libm.so.6", "libm.dylib", "/usr/lib/libSystem.B.dylib"]
    if sys.platform == "win32":
        return None  # MSVC's powf lives in headers and the UCRT; keep the portable fallback
    for name in [*candidates, None]:
        # find_library runs external tools, so it is only the last resort.
        path = name if name is not None else ctypes.util.find_library("m")
        if path is None:
            continue
        try:
            library = ctypes.CDLL(path)
            for function, arity in (("powf", 2), ("cosf", 1), ("logf", 1)):
                getattr(library, function).restype = ctypes.c_float
                getattr(library, function).argtypes = [ctypes.c_float] * arity
        except (OSError, AttributeError):
            continue
        if library.powf(2.0, 10.0) == 1024.0 and library.cosf(0.0) == 1.0:
            return library
    return None


C_FLOAT_MATH = _load_c_float_math()

# The smallest normal number of each dtype whose subnormals TensorFlow flushes (float16 keeps
# its subnormals). Looked up once: np.finfo costs more than the rest of a flush.
_TINY = {np.dtype(t): np.finfo(t).tiny for t in (np.float32, np.float64)}

# The C library's float functions by `math` name; empty without the C library.
_C_FLOAT_FUNCTIONS = (
    {name: getattr(C_FLOAT_MATH, name + "f") for name in ("pow", "cos", "log")}
    if C_FLOAT_MATH is not None
    else {}
)
_FLOAT32 = np.dtype(np.float32)


def flush(x: np.generic) -> np.generic:
    """Subnormal to zero: TensorFlow runs its CPU kernels with flush-to-zero and
    denormals-are-zero on, so Keras returns 0.0 where IEEE arithmetic gives a subnormal.

    This is the whole rule for what an op reads (DAZ) and for results that are exact, such as
    sums; a rounded result at the smallest normal number needs the rounding window of `mul`.
    """
    tiny = _TINY.get(x.dtype)
    if tiny is not None and 0 < abs(x) < tiny:
        return np.copysign(x.dtype.type(0), x)
    return x


# TensorFlow's scalar arithmetic (0-d tensors, as Keras's per-step scalars are) under x86's
# FTZ/DAZ, on NumPy scalars: the operands are flushed as read and the result as x86 rounds it
# (`kernels.reference`, which models the same ops on arrays, says how). Plain IEEE operations
# except where a result is at or below the smallest normal number, so they cost little.
def mul(a: np.generic, b: np.generic) -> np.generic:
    """`a * b` as TensorFlow's Mul: a product that IEEE rounds up to the smallest normal
    number is 0 where its rounding with an unbounded exponent stays below it.

    Example:
        >>> import numpy as np
        >>> print(np.float32(0.6184053) * np.float32(1.9008478e-38), mul(np.float32(0.6184053),
        ...       np.float32(1.9008478e-38)))
        1.1754944e-38 0.0
    """
    product = a * b
    tiny = _TINY.get(product.dtype)
    # Nothing to flush: a zero product (a zero of the same sign either way), or normal
    # operands with a product above the window.
    if tiny is None or product == 0 or (abs(product) > tiny and abs(a) >= tiny
                                        and abs(b) >= tiny):
        return product
    from nadam.kernels import reference

    a, b = flush(a), flush(b)
    return product.dtype.type(reference.mul(a, b))


def div(a: np.generic, b: np.generic) -> np.generic:
    """`a / b` as TensorFlow's RealDiv, with `mul`'s rounding window."""
    a, b = flush(a), flush(b)
    quotient = a / b
    tiny = _TINY.get(quotient.dtype)
    if tiny is not None and 0 < abs(quotient) <= tiny:
        from nadam.kernels import reference

        return quotient.dtype.type(reference.div(a, b))
    return quotient


def add(a: np.generic, b: np.generic) -> np.generic:
    """`a + b` as TensorFlow's AddV2 (a sum below the smallest normal number is exact)."""
    return flush(flush(a) + flush(b))


def sub(a: np.generic, b: np.generic) -> np.generic:
    """`a - b` as TensorFlow's Sub."""
    return flush(flush(a) - flush(b))


_FLOAT64 = np.dtype(np.float64)


def _flush_rounded_float32(result: np.generic, exact: float) -> np.generic:
    """A float32 `result` of rounding the float64 `exact`, as x86 returns it under FTZ: 0
    where it is subnormal, or where IEEE rounding took it up to the smallest normal number
    but rounding to 24 bits with an unbounded exponent leaves it below (the same window as
    `mul`'s): `|exact| * 2**124`, a normal float32 once rounded, is below 0.25 then."""
    if abs(result) <= _TINY[_FLOAT32] and result != 0:
        if abs(result) < _TINY[_FLOAT32] or np.float32(abs(exact) * 2.0**124) < 0.25:
            return np.copysign(np.float32(0), result)
    return result


def cast(x: np.generic, dtype: np.dtype) -> np.generic:
    """`tf.cast(x, dtype)` of a float scalar on TensorFlow's CPU: no op within a dtype; the
    conversion reads a subnormal float32/float64 as 0 (DAZ), and float64 to float32 flushes
    its result with `mul`'s rounding window. float16 results keep their subnormals."""
    dtype = np.dtype(dtype)
    if x.dtype == dtype:
        return x
    x = flush(x)
    result = dtype.type(x)
    if dtype == _FLOAT32 and x.dtype == _FLOAT64:
        return _flush_rounded_float32(result, float(x))
    return result


def _transcendental(name: str, fallback: Callable[..., Any], *args: np.generic) -> np.generic:
    """`name` (a `math` function) of the arguments, computed as TensorFlow's scalar kernel does.

    float16 and float32 go through the C library's float function when it is available; TF
    widens float16 to float32 for these too. float64, and float32 without that library, use
    `math`, which calls the C library's double function (TensorFlow's float64 kernel), rounded to
    the dtype. `math` raises where C returns inf or nan; NumPy (warnings silenced by the caller)
    gives those.
    """
    dtype = args[0].dtype
    # Only the result is flushed: the C functions read their arguments' bits, so a subnormal
    # argument keeps its meaning there (powf(0, 1e-42) is 0, not 1) even under TF's modes.
    result: Any
    if dtype.itemsize <= 4 and _C_FLOAT_FUNCTIONS:
        result = np.float32(_C_FLOAT_FUNCTIONS[name](*map(float, args)))
        if dtype == _FLOAT32:  # three times in every float32 step: no cast needed
            if abs(result) == _TINY[_FLOAT32]:
                # The C function computes in double and rounds once to float, which x86
                # flushes in `mul`'s window; the double function's result stands for the
                # value it rounds (they differ far less than the window is wide).
                return _flush_rounded_float32(result, _exact(name, args))
            return flush(result)
    else:
        floats = [float(arg) for arg in args]
        try:
            result = getattr(math, name)(*floats)
        except (ValueError, OverflowError):
            result = fallback(*(np.float64(x) for x in floats))
    converted = np.asarray(result).astype(dtype)[()]
    if dtype == _FLOAT32:  # float32 without the C library: rounded from double, as above
        return _flush_rounded_float32(converted, float(result))
    return flush(converted)


def _exact(name: str, args: tuple[np.generic, ...]) -> float:
    try:
        return float(getattr(math, name)(*map(float, args)))
    except (ValueError, OverflowError):
        return math.inf


def pow(base: np.generic, exponent: np.generic) -> np.generic:
    return _transcendental("pow", np.power, base, exponent)


def log(x: np.generic) -> np.generic:
    return _transcendental("log", np.log, x)


def cos(x: np.generic) -> np.generic:
    return _transcendental("cos", np.cos, x)


__all__ = ["C_FLOAT_MATH", "add", "cast", "cos", "div", "flush", "log", "mul", "pow", "sub"]
