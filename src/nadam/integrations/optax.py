"""Keras 2's Nadam as an `optax.GradientTransformation`, bit-identical to Keras under `jax.jit`.

`nadam(...)` returns the usual pair of pure functions. `update` computes Keras 2's step with
`nadam.kernels.xla` (the per-step scalars and the element-wise step, guarded against XLA's
rewrites) and returns, for each parameter, the negation of what Keras subtracts from it, so
that `optax.apply_updates(params, updates)`, which adds, gives Keras's new value bit for bit:
`p + (-d)` is `p - d` in IEEE arithmetic, signed zeros and flushing included. `params` is not
needed.

The state, `NadamState(count, momentum_cache, m, v)`, is a pytree of arrays: it works under
`jax.jit` (donate it), `lax.scan`, `vmap` and with sharded parameters (m and v take their
parameters' shardings). `to_keras_weights` / `from_keras_weights` convert it to and from
Keras's `get_weights()` layout, `[iterations, momentum_cache, m..., v...]` (parameters in
`jax.tree.leaves` order), which `nadam.Nadam`, `nadam.torch.Nadam` and tf_keras's legacy Nadam
read and write, so a run moves between them with its optimizer state.

Example:
    >>> import jax.numpy as jnp, optax
    >>> from nadam.optax import nadam
    >>> params = {"w": jnp.ones(3)}
    >>> tx = nadam(learning_rate=1e-3)
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.asarray([0.1, -0.5, 2.0])}, state)
    >>> optax.apply_updates(params, updates)["w"]
    Array([0.99894357, 1.0010564 , 0.99894357], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nadam import checks, engine, schedules
from nadam.hyperparameters import Hyperparameters
from nadam.kernels import xla

__all__ = ["NadamState", "from_keras_weights", "nadam", "to_keras_weights"]

_COUNT_DTYPE = jnp.int32  # optax's step counters are int32; Keras's `iterations` is int64.


class NadamState(NamedTuple):
    """The optimizer state: Keras's `iterations`, `momentum_cache` and the slots m and v.

    `count` is the number of steps taken (int32); `momentum_cache` the running product of the
    momentum schedule (0-d, in the dtype of the first parameter, as Keras's); `m` and `v` are
    pytrees shaped like the parameters.
    """

    count: jax.Array
    momentum_cache: jax.Array
    m: optax.Updates
    v: optax.Updates


LearningRate = float | Callable[[jax.Array], Any] | schedules.LearningRateSchedule


def nadam(
    learning_rate: LearningRate = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-7,
    schedule_decay: float = 0.004,
    decay: float = 0.0,
) -> optax.GradientTransformation:
    """Keras 2's Nadam (tf_keras.optimizers.legacy.Nadam) as an optax transformation.

    Args:
        learning_rate: a number (rounded through float32, as Keras's hyper variable), an optax
            schedule (a function of the step count; its arithmetic is its own, cast to each
            parameter's dtype) or a `nadam.schedules` schedule (evaluated as Keras evaluates
            it, exactly, on the host through `jax.pure_callback`, also under jit).
        b1, b2: Keras's `beta_1` and `beta_2`, in [0, 1).
        eps: Keras's `epsilon`, added outside the square root (None or 0 means 1e-7).
        schedule_decay: the momentum schedule's constant: mu_t = b1 (1 - 0.5 * 0.96 ** (t *
            schedule_decay)); 1.0 gives Keras 3's schedule.
        decay: time-inverse learning-rate decay, lr / (1 + decay * count) (SPEC 4.1).

    Any of them may also be a JAX array, cast to each parameter's dtype; traced ones (from
    `optax.inject_hyperparams`, which changes hyperparameters during training) are used
    unchecked. Give `inject_hyperparams` `hyperparam_dtype=jnp.float32` to round numbers as
    Keras does.

    Raises:
        ValueError: a hyperparameter out of range (`Expected b1 in [0, 1), received: 1.0`).
        TypeError: a hyperparameter that is not a number; at `init`, a parameter that is not
            float16, float32 or float64.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = nadam(0.01, schedule_decay=1.0)
        >>> tx.init({"w": jnp.zeros(2)}).count
        Array(0, dtype=int32)
    """
    learning_rate_at = _learning_rate(learning_rate)
    beta_1 = _step_value(b1, "b1", checks.UNIT_INTERVAL)
    beta_2 = _step_value(b2, "b2", checks.UNIT_INTERVAL)
    epsilon = eps if isinstance(eps, jax.core.Tracer) else checks.epsilon(eps, "eps")
    schedule_decay = _step_value(schedule_decay, "schedule_decay", checks.NON_NEGATIVE, False)
    decay = _step_value(decay, "decay", checks.FINITE_NON_NEGATIVE)

    def init_fn(params: optax.Params) -> NadamState:
        leaves = _checked_leaves(params, "parameter")
        cache_dtype = jnp.result_type(leaves[0]) if leaves else jnp.float32
        return NadamState(
            count=jnp.zeros([], _COUNT_DTYPE),
            momentum_cache=jnp.ones([], cache_dtype),
            m=jax.tree.map(jnp.zeros_like, params),
            v=jax.tree.map(jnp.zeros_like, params),
        )

    def update_fn(
        updates: optax.Updates, state: NadamState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, NadamState]:
        del params  # Keras's step needs only the gradients and the state.
        grads, treedef = jax.tree.flatten(updates)
        ms, vs = treedef.flatten_up_to(state.m), treedef.flatten_up_to(state.v)
        _check_gradients(updates, grads, ms)
        count, cache = state.count, state.momentum_cache
        scalars, new_cache = engine.prepare_traced(
            xla, count, cache, [np.dtype(g.dtype) for g in grads], learning_rate_at(count),
            decay, beta_1, beta_2, epsilon, schedule_decay,
        )
        steps = [
            xla.dense_decrement(g, m, v, scalars[np.dtype(g.dtype)])
            for g, m, v in zip(grads, ms, vs, strict=True)
        ]
        new_updates = treedef.unflatten([-decrement for decrement, _, _ in steps])
        new_state = NadamState(
            count=optax.safe_increment(count),
            momentum_cache=new_cache,
            m=treedef.unflatten([m for _, m, _ in steps]),
            v=treedef.unflatten([v for _, _, v in steps]),
        )
        return new_updates, new_state

    return optax.GradientTransformation(init_fn, update_fn)


def _learning_rate(learning_rate: Any) -> Callable[[jax.Array], Any]:
    """A function of the (traced) count giving the step's learning rate before `decay`."""
    if isinstance(learning_rate, schedules.LearningRateSchedule):
        store = Hyperparameters()
        store.set("learning_rate", learning_rate)
        # One copy of the schedules' maths (NumPy, with the C library's pow/cos/log, as
        # TensorFlow's kernels): evaluated on the host, the way the Keras face evaluates it.
        result = jax.ShapeDtypeStruct((), store.resolve("learning_rate", 0).dtype)

        def on_host(count: np.ndarray) -> np.ndarray:
            return store.resolve("learning_rate", int(count))

        return lambda count: jax.pure_callback(on_host, result, count, vmap_method="sequential")
    if callable(learning_rate):
        return lambda count: jnp.asarray(learning_rate(count))
    value = _step_value(learning_rate, "learning_rate", checks.NON_NEGATIVE)
    return lambda count: value


def _step_value(value: Any, name: str, allowed: checks.Range, keras_rounding: bool = True) -> Any:
    """A hyperparameter checked against `allowed` and held as the step reads it.

    A Python number is rounded through float32 when `keras_rounding` (Keras's hyper variables:
    learning_rate, beta_1, beta_2, decay) and a NumPy scalar kept, as the Keras face does
    (`engine.Hypers`); a JAX array is kept and cast to each parameter's dtype. A traced one
    (`optax.inject_hyperparams` under jit) cannot be checked here and is used as it is.
    """
    if isinstance(value, jax.core.Tracer):
        return value
    checks.real_number(value, name, allowed)
    if isinstance(value, jax.Array) or not keras_rounding:
        return value
    return engine.Hypers.of(value, 0.0, 0.0, 1e-7).learning_rate  # the engine's one rounding


def _checked_leaves(tree: Any, what: str) -> list[Any]:
    """The leaves of `tree`; TypeError naming the first one Nadam cannot train."""
    leaves_with_paths, _ = jax.tree_util.tree_flatten_with_path(tree)
    for path, leaf in leaves_with_paths:
        dtype = jnp.result_type(leaf)
        try:
            xla.checked_dtype(dtype, f"{what} {jax.tree_util.keystr(path) or '(the root)'}")
        except TypeError as error:
            raise TypeError(str(error)) from None
    return [leaf for _, leaf in leaves_with_paths]


def _check_gradients(updates: Any, grads: Sequence[Any], ms: Sequence[Any]) -> None:
    """Each gradient has its parameter's shape and dtype (a static check, at trace time)."""
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(updates)[0]]
    for path, g, m in zip(paths, grads, ms, strict=True):
        if jnp.shape(g) != jnp.shape(m) or jnp.result_type(g) != jnp.result_type(m):
            raise ValueError(
                f"Gradient {path or '(the root)'} has shape {jnp.shape(g)} and dtype "
                f"{jnp.result_type(g)}, but its parameter (and so its optimizer state) has shape "
                f"{jnp.shape(m)} and dtype {jnp.result_type(m)}"
            )


# --- Keras's get_weights() layout ----------------------------------------------------------
def to_keras_weights(state: NadamState, params: optax.Params) -> list[np.ndarray]:
    """The state as Keras's `get_weights()` lists it: `[iterations (int64), momentum_cache,
    m of each parameter..., v of each parameter...]`, parameters in `jax.tree.leaves` order.

    Feed it to `set_weights` of `nadam.Nadam`, `nadam.torch.Nadam` or tf_keras's legacy Nadam
    (built over the same variables in the same order) to continue the run there.

    Example:
        >>> import jax.numpy as jnp
        >>> params = [jnp.zeros(2)]
        >>> [w.shape for w in to_keras_weights(nadam().init(params), params)]
        [(), (), (2,), (2,)]
    """
    if not isinstance(state, NadamState):
        raise TypeError(
            f"Expected state to be the NadamState of nadam.optax.nadam (inside optax.chain, "
            f"its own element of the chain's state), received: "
            f"{type(state).__module__}.{type(state).__qualname__}"
        )
    _, treedef = jax.tree.flatten(params)
    try:
        ms, vs = treedef.flatten_up_to(state.m), treedef.flatten_up_to(state.v)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"params do not have the structure of the state's m and v: {error}"
        ) from None
    return [
        np.asarray(state.count, np.int64),
        np.asarray(state.momentum_cache),
        *(np.asarray(m) for m in ms),
        *(np.asarray(v) for v in vs),
    ]


def from_keras_weights(weights: Sequence[Any], params: optax.Params) -> NadamState:
    """A `NadamState` for `params` from Keras's `get_weights()` layout (see `to_keras_weights`).

    Checked before anything is built, with the Keras face's messages: the length, every shape,
    `iterations` a whole number in [0, 2**31 - 1] (the state's int32 count), `momentum_cache` a
    number in [0, 1]. m and v are cast to their parameters' dtypes and placed with their
    shardings; the cache keeps its dtype (Keras's: the first variable's).

    Example:
        >>> import numpy as np, jax.numpy as jnp
        >>> weights = [np.int64(5), np.float32(0.0185), np.ones(2), np.ones(2)]
        >>> from_keras_weights(weights, [jnp.zeros(2)]).count
        Array(5, dtype=int32)
    """
    leaves, treedef = jax.tree.flatten(params)
    _checked_leaves(params, "parameter")
    shapes = [(), ()] + [tuple(jnp.shape(leaf)) for leaf in leaves] * 2
    arrays = checks.weight_arrays("Nadam", shapes, weights)
    iterations = checks.iteration_count(arrays[0])
    if iterations > np.iinfo(np.int32).max:
        raise ValueError(
            f"Expected iterations in [0, 2**31 - 1] (the optax state's int32 count), received: "
            f"{iterations}"
        )
    checks.momentum_cache(arrays[1])
    cache = arrays[1]
    if cache.dtype.kind != "f":
        cache = cache.astype(jnp.result_type(leaves[0]) if leaves else np.float32)
    xla.checked_dtype(cache.dtype, "momentum_cache's dtype")
    if cache.dtype == np.float64 and not jax.config.jax_enable_x64:
        raise TypeError(
            "momentum_cache is float64 (a float64 model's state), which JAX holds only with "
            "64-bit mode on: call jax.config.update('jax_enable_x64', True) first"
        )
    n = len(leaves)

    def placed(array: np.ndarray, leaf: Any) -> jax.Array:
        value = jnp.asarray(array, jnp.result_type(leaf))
        sharding = getattr(leaf, "sharding", None)
        return jax.device_put(value, sharding) if sharding is not None else value

    return NadamState(
        count=jnp.asarray(iterations, _COUNT_DTYPE),
        momentum_cache=jnp.asarray(cache),
        m=treedef.unflatten([placed(a, leaf) for a, leaf in zip(arrays[2:2 + n], leaves,
                                                                strict=True)]),
        v=treedef.unflatten([placed(a, leaf) for a, leaf in zip(arrays[2 + n:], leaves,
                                                                strict=True)]),
    )
