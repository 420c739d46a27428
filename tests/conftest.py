"""Shared test helpers: an independent float64 Nadam step written straight from SPEC section 2."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest


def _f32(value: float) -> float:
    # SPEC section 2: learning_rate, beta_1, beta_2 and the base 0.96, given as Python numbers,
    # go through float32; a NumPy float64 (e.g. an already decayed rate) is used as it is.
    return float(np.float32(value)) if type(value) in (float, int) else float(value)


def spec_nadam_step(
    x: np.ndarray,
    g: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    cache: float,
    it: int,
    lr: float = 0.001,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    schedule_decay: float = 0.004,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One dense Nadam step in float64; returns new (x, m, v, momentum_cache)."""
    lr, beta_1, beta_2, base = _f32(lr), _f32(beta_1), _f32(beta_2), _f32(0.96)
    x, g, m, v = (np.asarray(a, dtype=np.float64) for a in (x, g, m, v))
    t, t1 = it + 1, it + 2
    mu_t = beta_1 * (1.0 - 0.5 * base ** (schedule_decay * t))
    mu_t1 = beta_1 * (1.0 - 0.5 * base ** (schedule_decay * t1))
    prod = float(cache) * mu_t
    prod1 = prod * mu_t1
    m = beta_1 * m + (1.0 - beta_1) * g
    v = beta_2 * v + (1.0 - beta_2) * g * g
    m_bar = (1.0 - mu_t) * g / (1.0 - prod) + mu_t1 * m / (1.0 - prod1)
    x = x - lr * m_bar / (np.sqrt(v / (1.0 - beta_2**t)) + epsilon)
    return x, m, v, prod


@pytest.fixture
def spec_step() -> Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """`spec_nadam_step`: the SPEC formula, independent of the code under test."""
    return spec_nadam_step
