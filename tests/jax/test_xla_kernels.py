"""`nadam.kernels.xla`: the exact step under XLA, bit for bit against the NumPy ground truth.

The per-step scalars are held to `nadam.step_scalars` (itself held to Keras 2 by the
conformance tests) and the element-wise steps to `nadam.kernels.reference`, on random inputs
that include subnormal numbers and signed zeros, jitted, inside `lax.scan` and under `vmap`.
The live-oracle tests of the same code are in `test_optax_oracle.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from xla_helpers import DTYPES, assert_same_bits, guards_removed, wide_values, x64_for

from nadam import step_scalars, tf_math
from nadam.kernels import NadamScalars, reference, xla

# (learning_rate, beta_1, beta_2, epsilon, schedule_decay): the defaults, then odd draws.
HYPERS = [
    (0.001, 0.9, 0.999, 1e-7, 0.004),
    (0.05, 0.6180339, 0.95, 1e-3, 0.0173),
    (3e-4, 0.99, 0.9999, 1e-8, 1.0),
]


def reference_chain(dtype, steps, hypers, cache=1.0):
    """`step_scalars.nadam_scalars` for `steps` consecutive steps from iteration 0."""
    d = np.dtype(dtype)
    lr, beta_1, beta_2, epsilon, schedule_decay = hypers
    out, cache = [], d.type(cache)
    for it in range(steps):
        s, new_cache = step_scalars.nadam_scalars(
            d, it, cache, lr, beta_1, beta_2, epsilon, schedule_decay
        )
        out.append((s, cache, new_cache))
        cache = new_cache
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hypers", HYPERS)
def test_scalars_match_step_scalars_through_the_cache_underflow(dtype, hypers):
    # float32 with the defaults: the momentum cache underflows to 0 at step ~111; float64 at
    # step ~976. 1100 steps cover both, computed in one jitted scan.
    steps = 1100
    expected = reference_chain(dtype, steps, hypers)
    lr, beta_1, beta_2, epsilon, schedule_decay = hypers
    with x64_for(dtype):

        def body(cache, it):
            s, new_cache = xla.nadam_scalars(
                it, cache, lr, beta_1, beta_2, epsilon, schedule_decay, dtype
            )
            return new_cache, (s, new_cache)

        _, (ours, caches) = jax.jit(
            lambda: lax.scan(body, jnp.asarray(1.0, dtype), jnp.arange(steps))
        )()
        ours, caches = jax.device_get((ours, caches))
    for name in NadamScalars._fields:
        assert_same_bits(getattr(ours, name), np.array([getattr(s, name) for s, _, _ in expected]),
                         name)
    assert_same_bits(caches, np.array([c for _, _, c in expected]), "momentum cache")
    if hypers[4] == 0.004:
        assert expected[-1][2] == 0  # the underflow happened inside the compared run


@pytest.mark.parametrize("dtype", DTYPES)
def test_scalars_under_vmap_match_step_scalars(dtype):
    # vmap turns the scalar code into vector code, where XLA would contract `1 - mu_t` had
    # mu_t not been guarded.
    expected = reference_chain(dtype, 1000, HYPERS[0])
    its = np.arange(1000)
    caches = np.array([c for _, c, _ in expected])
    with x64_for(dtype):
        ours, new = jax.jit(jax.vmap(lambda it, c: xla.nadam_scalars(it, c, dtype=dtype)))(
            jnp.asarray(its), jnp.asarray(caches)
        )
        ours, new = jax.device_get((ours, new))
    for name in NadamScalars._fields:
        assert_same_bits(getattr(ours, name), np.array([getattr(s, name) for s, _, _ in expected]),
                         name)
    assert_same_bits(new, np.array([c for _, _, c in expected]), "momentum cache")


@pytest.mark.parametrize("dtype", DTYPES)
def test_xla_pow_is_the_c_library_pow_up_to_step_200000(dtype):
    # The momentum schedule's 0.96 ** (0.004 t) and the bias correction's beta_2 ** t, for
    # every t up to 200,000: XLA's power gives the C library's powf/pow (TensorFlow's).
    d = np.dtype(dtype)
    steps = 200_000
    beta_1, beta_2 = step_scalars.keras_cast(0.9, d), step_scalars.keras_cast(0.999, d)
    decay = d.type(0.004)
    ts = [d.type(i + 1) for i in range(steps)]
    mu = np.array([step_scalars.momentum_schedule(beta_1, decay, t) for t in ts])
    correction = np.array([d.type(1) - tf_math.pow(beta_2, t) for t in ts])
    with x64_for(dtype):
        ours = jax.jit(jax.vmap(lambda it: xla.nadam_scalars(it, 1.0, dtype=dtype)[0]))(
            jnp.arange(steps)
        )
        ours = jax.device_get(ours)
    assert_same_bits(ours.one_minus_mu_t, d.type(1) - mu, "1 - mu_t")
    assert_same_bits(ours.v_correction, correction, "1 - beta_2 ** t")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "lr,decay,iterations",
    [(0.1, 1.0, 1), (0.001, 0.004, 12345), (0.01, 0.0, 7), (3e-4, 1e-3, 0), (0.5, 2.5, 99)],
)
def test_decayed_learning_rate_matches_step_scalars(dtype, lr, decay, iterations):
    d = np.dtype(dtype)
    expected = step_scalars.decayed_learning_rate(
        np.asarray(lr, np.float32), np.asarray(decay, np.float32), iterations, d
    )
    with x64_for(dtype):
        eager = xla.decayed_learning_rate(lr, decay, jnp.asarray(iterations), dtype)
        traced = jax.jit(lambda it: xla.decayed_learning_rate(lr, decay, it, dtype))(
            jnp.asarray(iterations)
        )
        # A learning rate that is itself a traced array (e.g. a schedule's output).
        from_array = jax.jit(lambda r, it: xla.decayed_learning_rate(r, decay, it, dtype))(
            jnp.asarray(np.float32(lr)), jnp.asarray(iterations)
        )
    for ours in (eager, traced, from_array):
        assert_same_bits(ours, np.asarray(expected), "decayed learning rate")


def random_state(rng, shape, dtype):
    x = wide_values(rng, shape, dtype)
    m = wide_values(rng, shape, dtype)
    v = np.abs(wide_values(rng, shape, dtype))
    v[rng.random(shape) < 0.02] = 0.0
    return x, m, v


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_update_matches_the_reference_step_by_step_and_in_a_scan(dtype):
    rng = np.random.default_rng(11)
    shape, steps = (64, 97), 40
    x, m, v = random_state(rng, shape, dtype)
    grads = [wide_values(rng, shape, dtype) for _ in range(steps)]
    expected, cache = [], np.dtype(dtype).type(1.0)
    rx, rm, rv = x, m, v
    for it, g in enumerate(grads):
        s, cache = step_scalars.nadam_scalars(np.dtype(dtype), it, cache, 0.01)
        rx, rm, rv = reference.dense_step(rx, g, rm, rv, s, np.sqrt)
        expected.append((rx, rm, rv, cache))

    def step(state, it_and_g):
        it, g = it_and_g
        x, m, v, cache = state
        s, cache = xla.nadam_scalars(it, cache, 0.01, dtype=dtype)
        x, m, v = xla.dense_update(x, g, m, v, s)
        return (x, m, v, cache), None

    with x64_for(dtype):
        state = (jnp.asarray(x), jnp.asarray(m), jnp.asarray(v), jnp.asarray(1.0, dtype))
        jitted = jax.jit(step, donate_argnums=0)
        for it, g in enumerate(grads):
            state, _ = jitted(state, (jnp.asarray(it), jnp.asarray(g)))
            for ours, theirs, name in zip(state, expected[it], "xmvc", strict=True):
                assert_same_bits(ours, theirs, f"{name} at step {it + 1}")
        start = (jnp.asarray(x), jnp.asarray(m), jnp.asarray(v), jnp.asarray(1.0, dtype))
        scanned, _ = jax.jit(lambda s0, gs: lax.scan(step, s0, (jnp.arange(steps), gs)))(
            start, jnp.asarray(np.stack(grads))
        )
    for ours, theirs, name in zip(scanned, expected[-1], "xmvc", strict=True):
        assert_same_bits(ours, theirs, f"{name} after the scan")


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_update_matches_the_reference(dtype):
    rng = np.random.default_rng(12)
    rows, cols, steps = 50, 7, 12
    x, m, v = random_state(rng, (rows, cols), dtype)
    rx, rm, rv = x, m, v
    cache = np.dtype(dtype).type(1.0)
    jx, jm, jv = x, m, v
    with x64_for(dtype):
        jx, jm, jv = map(jnp.asarray, (jx, jm, jv))
        jcache = jnp.asarray(1.0, dtype)
        step = jax.jit(
            lambda it, c, x, i, g, m, v: (
                lambda sc: (xla.sparse_update(x, i, g, m, v, sc[0]), sc[1])
            )(xla.nadam_scalars(it, c, 0.02, dtype=dtype)),
        )
        for it in range(steps):
            indices = rng.permutation(rows)[:20]  # one shape: one compilation
            values = wide_values(rng, (len(indices), cols), dtype)
            s, cache = step_scalars.nadam_scalars(np.dtype(dtype), it, cache, 0.02)
            new_rows, md, mr, vd, vr = reference.sparse_step(
                rx[indices], values, rm, rv, indices, s, np.sqrt
            )
            rx, rm, rv = rx.copy(), md.copy(), vd.copy()
            rx[indices], rm[indices], rv[indices] = new_rows, mr, vr
            (jx, jm, jv), jcache = step(
                jnp.asarray(it), jcache, jx, jnp.asarray(indices), jnp.asarray(values), jm, jv
            )
            for ours, theirs, name in zip((jx, jm, jv, jcache), (rx, rm, rv, cache), "xmvc",
                                          strict=True):
                assert_same_bits(ours, theirs, f"{name} at step {it + 1}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_scalars_fixed_at_trace_time_still_give_the_exact_step(dtype):
    # NumPy scalars closed over by a jitted function are compile-time constants: the guards'
    # zero then comes from the gradient alone, and must not fold away.
    rng = np.random.default_rng(13)
    x, m, v = random_state(rng, (100_000,), dtype)
    g = wide_values(rng, (100_000,), dtype)
    s, _ = step_scalars.nadam_scalars(np.dtype(dtype), 3, np.dtype(dtype).type(0.2), 0.01)
    expected = reference.dense_step(x, g, m, v, s, np.sqrt)
    with x64_for(dtype):
        ours = jax.jit(lambda x, g, m, v: xla.dense_update(x, g, m, v, s))(x, g, m, v)
    for a, b, name in zip(ours, expected, "xmv", strict=True):
        assert_same_bits(a, b, name)


def test_vmap_over_parameters_and_over_optimizer_states():
    rng = np.random.default_rng(14)
    batch, n = 3, 1000
    xs, ms, vs = random_state(rng, (batch, n), "float32")
    gs = wide_values(rng, (batch, n), "float32")
    its = np.array([0, 110, 5000])
    caches = np.array([1.0, 1.5e-38, 0.0], np.float32)
    expected = []
    for b in range(batch):
        s, _ = step_scalars.nadam_scalars(np.dtype("float32"), int(its[b]), caches[b])
        expected.append(reference.dense_step(xs[b], gs[b], ms[b], vs[b], s, np.sqrt))

    def one(it, cache, x, g, m, v):
        s, _ = xla.nadam_scalars(it, cache)
        return xla.dense_update(x, g, m, v, s)

    ours = jax.jit(jax.vmap(one))(its, caches, xs, gs, ms, vs)
    for a, name in zip(ours, "xmv", strict=True):
        assert_same_bits(a, np.stack([e["xmv".index(name)] for e in expected]), name)
    # One optimizer state, a batch of parameters (the scalars broadcast).
    s, _ = step_scalars.nadam_scalars(np.dtype("float32"), 7, np.float32(0.3))
    shared = jax.jit(jax.vmap(lambda x, g, m, v, s: xla.dense_update(x, g, m, v, s),
                              in_axes=(0, 0, 0, 0, None)))(xs, gs, ms, vs, s)
    for b in range(batch):
        for a, e, name in zip(shared, reference.dense_step(xs[b], gs[b], ms[b], vs[b], s,
                                                           np.sqrt), "xmv", strict=True):
            assert_same_bits(a[b], e, f"{name}[{b}]")


def test_the_guards_are_what_makes_step_one_exact():
    # The case: one 100k-element float32 parameter from zero, step 1. Without the
    # guards XLA fuses products into FMAs and divides by reciprocals, and the bits differ.
    rng = np.random.default_rng(15)
    n = 100_000
    x = np.zeros(n, np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    s, _ = step_scalars.nadam_scalars(np.dtype("float32"), 0, np.float32(1.0))
    expected = reference.dense_step(x, g, x, x, s, np.sqrt)[0]

    def step(it, x, g):
        scalars, _ = xla.nadam_scalars(it, 1.0)
        return xla.dense_update(x, g, jnp.zeros_like(x), jnp.zeros_like(x), scalars)[0]

    assert_same_bits(jax.jit(step)(0, x, g), expected, "x at step 1, guarded")
    with guards_removed():
        unguarded = np.asarray(jax.jit(step)(0, x, g))
    assert (unguarded != expected).sum() > 1000, "XLA no longer rewrites: revisit the guards"


def test_float16_matches_the_reference():
    # TensorFlow computes float16 op by op through float32, rounding each result to float16;
    # XLA:CPU keeps each op's rounding here too.
    rng = np.random.default_rng(16)
    d = np.dtype("float16")
    x, m, v = rng.standard_normal(3000).astype(d), np.zeros(3000, d), np.zeros(3000, d)
    jx, jm, jv, jcache, cache = x, m, v, jnp.asarray(1.0, d), d.type(1.0)
    step = jax.jit(
        lambda it, c, x, g, m, v: (lambda sc: (xla.dense_update(x, g, m, v, sc[0]), sc[1]))(
            xla.nadam_scalars(it, c, 0.01, dtype=d)
        )
    )
    for it in range(200):
        g = (rng.standard_normal(3000) * 10.0 ** rng.integers(-6, 2, 3000)).astype(d)
        s, cache = step_scalars.nadam_scalars(d, it, cache, 0.01)
        x, m, v = reference.dense_step(x, g, m, v, s, np.sqrt)
        (jx, jm, jv), jcache = step(jnp.asarray(it), jcache, jx, g, jm, jv)
        for a, b, name in zip((jx, jm, jv, jcache), (x, m, v, cache), "xmvc", strict=True):
            assert_same_bits(a, b, f"{name} at step {it + 1}")


@pytest.mark.parametrize("bad", ["bfloat16", "int32", "complex64", "bool"])
def test_unsupported_dtypes_are_a_type_error_naming_the_dtype(bad):
    with pytest.raises(TypeError, match=f"{bad}.*float16, float32 or float64"):
        xla.nadam_scalars(0, 1.0, dtype=bad)
    x = jnp.zeros(3, bad)
    s, _ = xla.nadam_scalars(0, 1.0)
    with pytest.raises(TypeError, match=f"variable's dtype is {bad}"):
        xla.dense_update(x, x, x, x, s)
    with pytest.raises(TypeError, match=f"variable's dtype is {bad}"):
        xla.sparse_update(x, jnp.asarray([0]), x[:1], x, x, s)


def test_a_float_iteration_count_is_a_type_error():
    with pytest.raises(TypeError, match="iterations must be an integer"):
        xla.nadam_scalars(1.5, 1.0)
