"""Keras 2's Nadam as a Keras 3 optimizer (`nadam.keras.Nadam`), on the JAX, PyTorch and
TensorFlow backends.

Keras 3's own `keras.optimizers.Nadam` dropped the 0.004 in the momentum schedule and ignores
`decay`; this one is `tf_keras.optimizers.legacy.Nadam` bit for bit, inside Keras 3's
optimizer: `model.compile`/`fit`, `apply`/`apply_gradients`, `stateless_apply` (JAX), `.keras`
files, and the base class's clipping, gradient accumulation, EMA, loss scaling and weight
decay.

The step is the engine's, per backend:

- PyTorch: the engine itself (`nadam.engine`): host scalars (`step_scalars`) and the fused
  CPU kernel through NumPy views of the tensors, or the CUDA kernel (`kernels.torch_foreach`);
  torch's own CPU `sqrt` is not correctly rounded and it keeps subnormal numbers, so its ops
  could not give Keras 2's bits.
- TensorFlow: `kernels.tf_ops`, Keras 2's ops in Keras 2's order (traced by `tf.function`).
- JAX: `kernels.xla`, the same order in `jax.numpy`, guarded against XLA's rewrites (traced
  by `jax.jit`, `stateless_apply` included).

The momentum cache (the running product of the schedule) is a Keras variable, so
`stateless_apply` carries it; it advances once per step in `_backend_update_step`, before the
base class updates the variables (as Keras 3's Nadam advances its own product).

What a step is: one update of the variables. With `gradient_accumulation_steps=k` that is
every k-th call (Keras 3's `iterations` counts these, `optimizer._iterations` every call), so
the schedule, `decay` and a learning-rate schedule see the same step numbers as a Keras 2 run
that applies the averaged gradients once per k batches.

Example:
    >>> import keras
    >>> from nadam.keras import Nadam
    >>> x = keras.Variable([1.0, -2.0, 3.0])
    >>> opt = Nadam()
    >>> opt.apply([keras.ops.convert_to_tensor([0.1, -0.5, 2.0])], [x])
    >>> [round(float(a), 7) for a in keras.ops.convert_to_numpy(x)]
    [0.9989436, -1.9989436, 2.9989436]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from nadam import checks, engine, kernels
from nadam.step_scalars import momentum_cache_after

_BACKENDS = ("jax", "tensorflow", "torch")


class _StepScalars:
    """The current step's scalars per variable dtype, set by `_backend_update_step` for the
    `update_step` calls the base class makes within it (Keras 3 calls `update_step` once per
    variable with no room for a step's shared values), cleared when the step ends."""

    __slots__ = ("by_dtype",)

    def __init__(self) -> None:
        self.by_dtype: dict[str, Any] | None = None


@keras.saving.register_keras_serializable(package="nadam", name="Nadam")
class Nadam(keras.optimizers.Optimizer):
    """Keras 2's Nadam (`tf_keras.optimizers.legacy.Nadam`) as a Keras 3 optimizer.

    Args:
        learning_rate: a non-negative number, a `keras.optimizers.schedules`
            `LearningRateSchedule` (called with the step count, see the module docstring) or a
            zero-argument callable.
        beta_1, beta_2: numbers in [0, 1). Python numbers are rounded to float32 first, as
            Keras 2's hyperparameter variables are.
        epsilon: a number >= 0 (None or 0: 1e-7), added after the square root.
        schedule_decay: the momentum schedule's constant,
            `mu_t = beta_1 * (1 - 0.5 * 0.96 ** (schedule_decay * t))` (Keras 2: 0.004).
        decay: time-inverse learning-rate decay, `lr / (1 + decay * iterations)` (Keras 2's
            documented `decay`, which its Nadam ignored; 0 leaves the rate alone).
        **kwargs: Keras 3's optimizer arguments: `name`, `weight_decay`, `clipnorm`,
            `clipvalue`, `global_clipnorm`, `use_ema`, `ema_momentum`,
            `ema_overwrite_frequency`, `loss_scale_factor`, `gradient_accumulation_steps`.

    Raises ValueError or TypeError at construction for a value out of range or of the wrong
    kind, naming it, and ValueError on a backend other than JAX, PyTorch or TensorFlow.

    Example:
        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> model.compile(optimizer=Nadam(learning_rate=0.01), loss="mse")
        >>> _ = model.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0)
        >>> int(model.optimizer.iterations)
        1
    """

    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: Any = 0.9,
        beta_2: Any = 0.999,
        epsilon: Any = 1e-7,
        schedule_decay: Any = 0.004,
        decay: Any = 0.0,
        **kwargs: Any,
    ) -> None:
        backend = keras.backend.backend()
        if backend not in _BACKENDS:
            raise ValueError(
                f"nadam.keras.Nadam runs on Keras 3's {', '.join(_BACKENDS)} backends; this "
                f"process uses the '{backend}' backend (KERAS_BACKEND)"
            )
        learning_rate = _checked_learning_rate(learning_rate)
        beta_1, beta_2 = (_checked_beta(v, n) for v, n in ((beta_1, "beta_1"),
                                                           (beta_2, "beta_2")))
        epsilon = checks.epsilon(epsilon)
        ranges = checks.HYPERPARAMETER_RANGES
        schedule_decay = checks.finite_number(schedule_decay, "schedule_decay",
                                              ranges["schedule_decay"])
        decay = checks.finite_number(decay, "decay", ranges["decay"])
        for key in ("clipnorm", "clipvalue", "global_clipnorm", "weight_decay"):
            kwargs[key] = checks.clip_threshold(kwargs.get(key), key)
        if kwargs.get("loss_scale_factor") is not None:
            kwargs["loss_scale_factor"] = checks.finite_number(
                kwargs["loss_scale_factor"], "loss_scale_factor", checks.POSITIVE
            )
        name = kwargs.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"Expected name to be a non-empty string, received: {name!r}")
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.schedule_decay = schedule_decay
        self.decay = decay
        self._backend_name = backend
        self._step_scalars = _StepScalars()

    # --- state ----------------------------------------------------------------------------
    def build(self, var_list: Sequence[Any]) -> None:
        """Create the slots m ("momentum") and v ("velocity") of each variable, then the
        momentum cache, in the first variable's dtype (Keras 2's) and starting at 1.

        The variables come in Keras 3's Nadam's order (`[iteration, learning_rate, ...,
        momentums, velocities, cache]`), so the two share `set_weights` layouts.
        """
        if self.built:
            return
        for variable in var_list:
            _check_float_variable(variable)
        # A beta that rounds to 1 in a variable's dtype (0.9999 in float16) would make NaN.
        engine.check_hypers_fit(
            [engine.Hypers.of(0.0, self.beta_1, self.beta_2, self.epsilon)],
            [(0, np.dtype(_dtype_name(variable))) for variable in var_list],
        )
        dtype = var_list[0].dtype if var_list else keras.backend.floatx()
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"]
        )
        self._momentum_cache = self.add_variable(
            shape=(), dtype=dtype, initializer="ones", name="momentum_cache"
        )

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Keras 3's `set_weights`, after checking the whole list first: its length, every
        shape, numbers only, `iterations` a non-negative whole number and the momentum cache
        in [0, 1]; a ValueError (or TypeError) leaves every variable as it was (Keras 3's own
        writes the variables before a mismatch and ignores extra or missing entries)."""
        if self.built:
            self._check_state([np.asarray(keras.ops.convert_to_numpy(w))
                               if not isinstance(w, np.ndarray) else w for w in weights])
        super().set_weights(weights)

    def load_own_variables(self, store: Any) -> None:
        """Keras 3's loading of this optimizer's variables from a `.keras` file, checked as
        `set_weights` checks a list before anything is written."""
        if self.built and len(store.keys()) == len(self.variables):
            self._check_state([np.asarray(store[str(i)]) for i in range(len(self.variables))])
        super().load_own_variables(store)

    def _check_state(self, arrays: Sequence[Any]) -> None:
        shapes = [tuple(v.shape) for v in self.variables]
        arrays = checks.weight_arrays(self.name, shapes, arrays)
        checks.iteration_count(arrays[0], "iterations")
        checks.momentum_cache(arrays[-1])

    @property
    def momentum_cache(self) -> Any:
        """The momentum cache: prod_{i<=t} mu_i after t steps (a Keras variable)."""
        return self._momentum_cache

    # --- the step -------------------------------------------------------------------------
    def _get_current_learning_rate(self) -> Any:
        # A schedule sees the step count (updates), as in Keras 2; Keras 3's base passes the
        # count of calls, which differs under gradient accumulation.
        if isinstance(self._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            return self._learning_rate(self.iterations)
        return super()._get_current_learning_rate()

    def apply(self, grads: Sequence[Any], trainable_variables: Sequence[Any] | None = None
              ) -> None:
        """Keras 3's `apply`, after checking every gradient against its variable: a gradient
        of another dtype or shape is a ValueError naming the variable, raised before anything
        changes (weight decay, accumulators, slots, counters)."""
        variables = self._trainable_variables if trainable_variables is None else list(
            trainable_variables)
        if len(grads) and (trainable_variables is not None or self.built):
            if len(grads) != len(variables):
                raise ValueError(
                    f"Got {len(grads)} gradients for {len(variables)} variables; pass one "
                    "gradient (or None) per variable"
                )
            _check_gradients(grads, variables)
        return super().apply(grads, trainable_variables)

    def _backend_update_step(
        self, grads: Sequence[Any], trainable_variables: Sequence[Any], learning_rate: Any
    ) -> None:
        if self._backend_name == "torch":
            self._engine_step(grads, trainable_variables, learning_rate)
            return
        if self._backend_name == "tensorflow" and _in_tf_xla_context():
            warnings.warn(
                "nadam.keras.Nadam is being compiled with XLA (jit_compile=True): XLA fuses "
                "multiply-adds and rewrites divisions, so the steps will not have Keras 2's "
                "bits. Compile the model with jit_compile=False to keep them.",
                UserWarning,
                stacklevel=2,
            )
        kernel = self._kernel()
        iterations = keras.ops.convert_to_tensor(self.iterations)
        learning_rate = keras.ops.convert_to_tensor(learning_rate)
        cache = keras.ops.convert_to_tensor(self._momentum_cache)
        # Every dtype's scalars from the cache as it was; then the cache advances once, in
        # its own dtype, whatever the variables' dtypes (Keras 2's order).
        by_dtype, new_cache = engine.prepare_traced(
            kernel, iterations, cache, [_dtype_name(v) for v in trainable_variables],
            learning_rate, self.decay, self.beta_1, self.beta_2, self.epsilon,
            self.schedule_decay, cache_dtype=_dtype_name(self._momentum_cache),
        )
        self.assign(self._momentum_cache, new_cache)
        self._step_scalars.by_dtype = by_dtype
        try:
            super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            self._step_scalars.by_dtype = None

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """One variable's update with this step's scalars (JAX and TensorFlow backends)."""
        scalars = self._step_scalars.by_dtype
        if scalars is None:
            raise RuntimeError(
                "nadam.keras.Nadam.update_step runs inside a step (apply, apply_gradients, "
                "stateless_apply), which prepares the step's scalars first"
            )
        kernel = self._kernel()
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        s = scalars[_dtype_name(variable)]
        read = keras.ops.convert_to_tensor
        if _is_indexed_slices(gradient):
            x, m_new, v_new = kernel.sparse_update(
                read(variable), gradient.indices, gradient.values, read(m), read(v), s
            )
        else:
            x, m_new, v_new = kernel.dense_update(read(variable), gradient, read(m), read(v), s)
        self.assign(m, m_new)
        self.assign(v, v_new)
        self.assign(variable, x)

    def _kernel(self) -> Any:
        return kernels.traced(self._backend_name)

    def _engine_step(
        self, grads: Sequence[Any], variables: Sequence[Any], learning_rate: Any
    ) -> None:
        """The torch backend's step: the engine's host scalars and kernels over the tensors.

        In place on the variables' tensors; inside `stateless_apply` on copies (the tensors
        there are the caller's), assigned back.
        """
        import torch
        from keras.src.backend.common.stateless_scope import in_stateless_scope

        from nadam import engine
        from nadam.backends.torch import TORCH_BACKEND

        stateless = in_stateless_scope()
        slots = [(self._momentums[self._get_variable_index(x)],
                  self._velocities[self._get_variable_index(x)]) for x in variables]
        owners = [owner for x, (m, v) in zip(variables, slots, strict=True)
                  for owner in (x, m, v)]
        tensors = [o.value.clone() if stateless else o.value for o in owners]
        updates = []
        for position, grad in enumerate(grads):
            x, m, v = tensors[3 * position: 3 * position + 3]
            update = engine.checked_update(TORCH_BACKEND, x, _torch_dense(grad, x),
                                           check_variable=TORCH_BACKEND.check_tensor)
            update.m, update.v = m, v
            updates.append(update)
        iterations = int(keras.ops.convert_to_numpy(self.iterations))
        cache = np.asarray(keras.ops.convert_to_numpy(self._momentum_cache))[()]
        lr = np.asarray(keras.ops.convert_to_numpy(learning_rate))
        hypers = engine.Hypers.of(lr, self.beta_1, self.beta_2, self.epsilon, self.decay,
                                  self.schedule_decay)
        keys = [(0, update.dtype) for update in updates]
        engine.check_hypers_fit([hypers], keys)
        context = engine.prepare(iterations, cache, [hypers], keys)
        with torch.no_grad():
            engine.apply(updates, context)
        if stateless:
            for owner, tensor in zip(owners, tensors, strict=True):
                owner.assign(tensor)
        self._momentum_cache.assign(np.asarray(context.momentum_cache))

    # --- configuration --------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Keras 3's optimizer config plus this rule's keys; `from_config` restores it."""
        config = super().get_config()
        config.update({
            "beta_1": _plain(self.beta_1),
            "beta_2": _plain(self.beta_2),
            "epsilon": self.epsilon,
            "schedule_decay": self.schedule_decay,
            "decay": self.decay,
        })
        return config

    # --- switching from Keras 3's Nadam ---------------------------------------------------
    @classmethod
    def from_keras_nadam(cls, optimizer: Any, **overrides: Any) -> Nadam:
        """This optimizer in place of a (built) `keras.optimizers.Nadam`, mid-run.

        Takes its hyperparameters and base settings (`overrides` replace any of them, or add
        `schedule_decay` / `decay`), its step count, momentums and velocities (and EMA
        averages and gradient accumulators where both have them). The momentum cache is
        recomputed as the product this rule's schedule reaches after that many steps (Keras
        3's product follows another schedule), so the run continues as if it had used this
        optimizer from the start with the same slots. Warns that the schedules differ.

        Example:
            >>> import keras
            >>> x = keras.Variable([1.0, 2.0])
            >>> theirs = keras.optimizers.Nadam()
            >>> theirs.apply([keras.ops.ones(2)], [x])
            >>> import warnings
            >>> with warnings.catch_warnings():
            ...     warnings.simplefilter("ignore")
            ...     ours = Nadam.from_keras_nadam(theirs)
            >>> int(ours.iterations)
            1
        """
        if not isinstance(optimizer, keras.optimizers.Nadam):
            raise TypeError(
                "from_keras_nadam takes a keras.optimizers.Nadam, got "
                f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"
            )
        config = optimizer.get_config()
        config.pop("name", None)
        config.update(overrides)
        ours = cls.from_config(config)
        if not optimizer.built:
            return ours
        warnings.warn(
            "Switching from keras.optimizers.Nadam to nadam.keras.Nadam: the momentum "
            "schedules differ (Keras 3: mu_t = beta_1 * (1 - 0.5 * 0.96 ** t); Keras 2: "
            "0.96 ** (schedule_decay * t)). The step count, momentums and velocities are kept; "
            "the momentum cache is recomputed for this schedule.",
            UserWarning,
            stacklevel=2,
        )
        ours.build(optimizer._trainable_variables)
        ours._iterations.assign(optimizer._iterations.value)
        pairs = [(ours._momentums, optimizer._momentums),
                 (ours._velocities, optimizer._velocities)]
        if ours.use_ema and optimizer.use_ema:
            pairs.append((ours._model_variables_moving_average,
                          optimizer._model_variables_moving_average))
        if ours.gradient_accumulation_steps and (
            ours.gradient_accumulation_steps == optimizer.gradient_accumulation_steps
        ):
            pairs.append((ours._accumulated_gradients, optimizer._accumulated_gradients))
        for mine, theirs in pairs:
            for target, source in zip(mine, theirs, strict=True):
                if target is not None and source is not None:
                    target.assign(source.value)
        steps = int(keras.ops.convert_to_numpy(ours.iterations))
        ours._momentum_cache.assign(
            np.asarray(ours.momentum_cache_after(steps, _dtype_name(ours._momentum_cache)))
        )
        return ours

    def momentum_cache_after(self, steps: int, dtype: str = "float32") -> np.generic:
        """The momentum cache this optimizer holds after `steps` steps from a fresh start:
        prod_{i<=steps} mu_i in `dtype`, op by op as each step computes it (it reaches
        exactly 0 when it underflows, and stays there).

        Example:
            >>> print(Nadam().momentum_cache_after(1))
            0.45007348
        """
        return momentum_cache_after(steps, dtype, self.beta_1, self.schedule_decay)


# --- checks ----------------------------------------------------------------------------------
def _checked_learning_rate(value: Any) -> Any:
    if isinstance(value, keras.optimizers.schedules.LearningRateSchedule) or (
        callable(value) and not hasattr(value, "shape")
    ):
        return value
    return float(checks.hyperparameter(value, "learning_rate"))


def _checked_beta(value: Any, name: str) -> Any:
    array = checks.hyperparameter(value, name)
    if isinstance(value, np.floating):
        return value  # a NumPy scalar is cast to the variable's dtype directly, as in Keras 2
    return float(array)


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, np.generic) else value


def _dtype_name(x: Any) -> str:
    return keras.backend.standardize_dtype(x.dtype)


def _check_float_variable(variable: Any) -> None:
    dtype = _dtype_name(variable)
    if dtype not in ("float16", "float32", "float64"):
        raise TypeError(
            f"Variable {getattr(variable, 'path', getattr(variable, 'name', variable))} has "
            f"dtype {dtype}; nadam.keras.Nadam trains float16, float32 and float64 variables"
        )


def _is_indexed_slices(gradient: Any) -> bool:
    return type(gradient).__name__ == "IndexedSlices"


def _check_gradients(grads: Sequence[Any], variables: Sequence[Any]) -> None:
    """ValueError before anything changes if a gradient's dtype or shape is not its
    variable's (Keras 3's own Nadam casts silently; Keras 2 refused)."""
    for grad, variable in zip(grads, variables, strict=True):
        if grad is None:  # dropped by Keras with a warning
            continue
        values = grad.values if _is_indexed_slices(grad) else grad
        if not hasattr(values, "dtype"):
            continue  # a nested list: Keras converts it
        grad_dtype = keras.backend.standardize_dtype(values.dtype)
        var_dtype = _dtype_name(variable)
        name = getattr(variable, "path", None) or getattr(variable, "name", "?")
        if grad_dtype != var_dtype:
            raise ValueError(
                f"Gradient for variable {name} has dtype {grad_dtype}, but the variable has "
                f"dtype {var_dtype}"
            )
        if not _is_indexed_slices(grad):
            grad_shape = tuple(grad.shape)
            if grad_shape != tuple(variable.shape):
                raise ValueError(
                    f"Gradient for variable {name} has shape {grad_shape}, but the variable "
                    f"has shape {tuple(variable.shape)}"
                )


def _in_tf_xla_context() -> bool:
    """Whether TensorFlow is tracing for XLA here (`tf.function(jit_compile=True)`)."""
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


def _torch_dense(grad: Any, like: Any) -> Any:
    import torch

    if isinstance(grad, torch.Tensor):
        return grad
    return torch.as_tensor(keras.ops.convert_to_numpy(grad), device=like.device)
