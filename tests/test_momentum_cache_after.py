"""`step_scalars.momentum_cache_after(n)` is the cache an optimizer holds after n real steps."""

from __future__ import annotations

import numpy as np
import pytest

import nadam
from nadam.step_scalars import momentum_cache_after


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta_1, schedule_decay", [(0.9, 0.004), (0.8, 1.0)])
def test_equals_the_cache_of_real_steps(dtype, beta_1, schedule_decay):
    x = np.zeros(3, dtype)
    opt = nadam.Nadam(beta_1=beta_1, schedule_decay=schedule_decay)
    caches = [opt.get_weights()[1] if opt.get_weights() else dtype(1)]
    for _ in range(130):  # past float32's underflow with the defaults (step 111)
        opt.apply_gradients([(np.ones(3, dtype), x)])
        caches.append(opt.get_weights()[1])
    for steps in (0, 1, 2, 57, 110, 111, 112, 130):
        got = momentum_cache_after(steps, dtype, beta_1, schedule_decay)
        assert got.dtype == dtype
        assert got.tobytes() == np.asarray(caches[steps], dtype).tobytes(), steps
    if dtype is np.float32 and schedule_decay == 0.004:
        assert momentum_cache_after(130, dtype) == 0  # underflowed, and stays 0


@pytest.mark.parametrize(
    ("steps", "dtype", "error", "message"),
    [
        (-1, "float32", ValueError, "Expected steps in"),
        (2.5, "float32", ValueError, "Expected steps to be a whole number"),
        (3, "int32", TypeError, "float16, float32 or float64, received: 'int32'"),
        (3, "no such dtype", TypeError, "received: 'no such dtype'"),
    ],
)
def test_bad_steps_or_dtype_are_clear_errors(steps, dtype, error, message):
    with pytest.raises(error, match=message):
        momentum_cache_after(steps, dtype)
