"""`Nadam`: Dozat's Nesterov-accelerated Adam with Keras 2's momentum schedule.

This module is the rule: which slots Nadam keeps (`m`, `v` per variable and one
`momentum_cache` per optimizer), how one step's scalars are computed with Keras's rounding,
and which kernel applies them. The bookkeeping is `Optimizer`'s; the arrays are the backends'.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from nadam import kernels, tf_math
from nadam.backends import Backend, backend_for
from nadam.kernels import NadamScalars
from nadam.optimizer import Optimizer, _is_real_number
from nadam.variables import Variable

_DECAY_BASE = np.float32(0.96)  # Keras casts the literal 0.96 from float32.


def _keras_cast(value: Any, dtype: np.dtype) -> np.generic:
    """Cast a hyperparameter as Keras does: a Python number goes through float32 first."""
    if not isinstance(value, np.generic) and isinstance(value, numbers.Real):
        value = np.float32(value)
    return dtype.type(value)


def _flush_subnormal(value: np.generic) -> np.generic:
    # TensorFlow's CPU kernels flush float32/float64 subnormals to zero, so Keras's momentum
    # cache becomes exactly 0 once the product underflows (float32 with the defaults: from
    # step 111 on; float64: step 976), where NumPy would keep a subnormal. float16 keeps them.
    if value.dtype != np.float16 and 0 < abs(value) < np.finfo(value.dtype).tiny:
        return value.dtype.type(0)
    return value


def nadam_scalars(
    dtype: Any,
    iterations: int,
    momentum_cache: Any,
    lr: Any = 0.001,
    beta_1: Any = 0.9,
    beta_2: Any = 0.999,
    epsilon: float = 1e-7,
    schedule_decay: float = 0.004,
) -> tuple[NadamScalars, np.generic]:
    """One step's scalars in `dtype`, and the new momentum cache (`prod`) in `dtype`.

    Every scalar op runs in `dtype`, in Keras 2's order. `lr`, `beta_1` and `beta_2` given as
    Python numbers are rounded to float32 first, as Keras's hyper variables are; NumPy scalars
    are cast directly. `epsilon` and `schedule_decay` convert to `dtype` directly.

    Example:
        >>> s, prod = nadam_scalars("float32", iterations=0, momentum_cache=1.0)
        >>> print(prod)  # mu_1 = 0.9 * (1 - 0.5 * 0.96 ** 0.004)
        0.45007348
    """
    dtype = np.dtype(dtype)
    d = dtype.type
    lr_t, beta_1_t, beta_2_t = (_keras_cast(x, dtype) for x in (lr, beta_1, beta_2))
    one, half = d(1), d(0.5)
    local_step, next_step = d(iterations + 1), d(iterations + 2)
    decay_base, decay = d(_DECAY_BASE), d(schedule_decay)
    mu_t = beta_1_t * (one - half * tf_math.pow(decay_base, decay * local_step))
    mu_t1 = beta_1_t * (one - half * tf_math.pow(decay_base, decay * next_step))
    prod = _flush_subnormal(_flush_subnormal(d(momentum_cache)) * mu_t)
    prod1 = _flush_subnormal(prod * mu_t1)
    scalars = NadamScalars(
        lr=lr_t,
        beta_1=beta_1_t,
        beta_2=beta_2_t,
        one_minus_beta_1=one - beta_1_t,
        one_minus_beta_2=one - beta_2_t,
        epsilon=d(epsilon),
        one_minus_mu_t=one - mu_t,
        mu_t1=mu_t1,
        one_minus_prod=one - prod,
        one_minus_prod1=one - prod1,
        v_correction=one - tf_math.pow(beta_2_t, local_step),
    )
    return scalars, prod


class Nadam(Optimizer):
    """Keras 2's Nadam optimizer on NumPy arrays, PyTorch tensors and JAX arrays.

    Args:
        learning_rate: a number, a 0-d array, a zero-argument callable or a
            `nadam.schedules.LearningRateSchedule`.
        beta_1, beta_2: decay rates of the first and second moments, in [0, 1); numbers,
            0-d arrays or zero-argument callables.
        epsilon: added to the bias-corrected root of `v`; None or 0 means 1e-7.
        name: the optimizer's name.
        **kwargs: `clipnorm`, `clipvalue`, `global_clipnorm`, `lr` (deprecated alias of
            `learning_rate`), `decay` (time-inverse learning-rate decay) and
            `schedule_decay` (the momentum schedule constant, 0.004).

    Example:
        >>> import numpy as np
        >>> from nadam import Nadam, Variable
        >>> x = Variable([1.0, -2.0, 3.0])
        >>> opt = Nadam()
        >>> opt.apply_gradients([(np.array([0.1, -0.5, 2.0], np.float32), x)])
        1
        >>> x.numpy()
        array([ 0.99894357, -1.9989436 ,  2.9989436 ], dtype=float32)
    """

    _EXTRA_KWARGS = ("schedule_decay",)
    _HYPER_RANGES = {
        **Optimizer._HYPER_RANGES,
        "beta_1": (0.0, 1.0, False),
        "beta_2": (0.0, 1.0, False),
    }

    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: Any = 0.9,
        beta_2: Any = 0.999,
        epsilon: float | None = 1e-7,
        name: str = "Nadam",
        **kwargs: Any,
    ) -> None:
        schedule_decay = kwargs.pop("schedule_decay", 0.004)
        super().__init__(name, **kwargs)
        self.schedule_decay = schedule_decay
        self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
        self._set_hyper("beta_1", beta_1)
        self._set_hyper("beta_2", beta_2)
        self.epsilon = epsilon
        self._momentum_cache: Variable | None = None
        self._momentum_cache_read: np.generic | None = None
        self._scalars_by_dtype: dict[np.dtype, tuple[NadamScalars, np.generic]] = {}

    # --- plain (non-hyper) settings -------------------------------------------------------
    @property
    def epsilon(self) -> float:
        """The constant added to the denominator (1e-7 when given None or 0)."""
        return self._epsilon

    @epsilon.setter
    def epsilon(self, value: float | None) -> None:
        if value is not None and not _is_real_number(value):
            raise TypeError(f"epsilon must be a number, got {type(value).__name__}")
        if value is not None and (value < 0 or math.isnan(value)):
            raise ValueError(f"epsilon must be >= 0, received: {value}")
        self._epsilon = value or 1e-7

    @property
    def schedule_decay(self) -> float:
        """The momentum schedule constant: mu_t = beta_1 (1 - 0.5 * 0.96 ** (t * this))."""
        return self._schedule_decay

    @schedule_decay.setter
    def schedule_decay(self, value: float) -> None:
        if not _is_real_number(value):
            raise TypeError(f"schedule_decay must be a number, got {type(value).__name__}")
        if value < 0 or math.isnan(value):
            raise ValueError(f"Expected schedule_decay >= 0, received: {value}")
        self._schedule_decay = value

    @property
    def momentum_cache(self) -> Variable | None:
        """The running product of the momentum schedule (None before the first step)."""
        return self._momentum_cache

    # --- the rule --------------------------------------------------------------------------
    def _create_slots(self, var_list: list[Any]) -> None:
        if self._momentum_cache is None and var_list:
            first = var_list[0]
            dtype = backend_for(first).dtype(first)
            self._momentum_cache = self.add_weight(
                "momentum_cache", shape=(), dtype=dtype, initializer="ones"
            )
        # All m slots before all v slots: Keras's weight order. Variables that have both
        # already (every step after the first) are skipped without a call per variable.
        new = self._lacking_slots(var_list, ("m", "v"))
        for var in new:
            self.add_slot(var, "m")
        for var in new:
            self.add_slot(var, "v")

    def _prepare(self, places: list[tuple[str, np.dtype]]) -> dict:
        cache = self._momentum_cache
        self._momentum_cache_read = cache.value[()]
        self._scalars_by_dtype = {}
        apply_state = super()._prepare(places)
        # The cache advances once per call in its own dtype, whatever the variables' dtypes.
        _, prod = self._step_scalars(cache.dtype)
        cache.assign(prod)
        return apply_state

    def _step_scalars(self, dtype: np.dtype) -> tuple[NadamScalars, np.generic]:
        # Once per dtype and step: the cache's dtype is usually the variables' dtype too.
        known = self._scalars_by_dtype.get(dtype)
        if known is None:
            known = self._scalars_by_dtype[dtype] = nadam_scalars(
                dtype,
                int(self._iterations.value),
                self._momentum_cache_read,
                lr=self._decayed_lr(dtype),
                beta_1=self._get_hyper("beta_1", dtype),
                beta_2=self._get_hyper("beta_2", dtype),
                epsilon=self._epsilon,
                schedule_decay=self._schedule_decay,
            )
        return known

    def _prepare_local(self, var_device: str, var_dtype: np.dtype, apply_state: dict) -> None:
        super()._prepare_local(var_device, var_dtype, apply_state)
        scalars, _ = self._step_scalars(var_dtype)
        apply_state[(var_device, var_dtype)]["scalars"] = scalars

    def _scalars_for(self, backend: Backend, var: Any, apply_state: dict) -> NadamScalars:
        return apply_state[(backend.device(var), backend.dtype(var))]["scalars"]

    def _apply_dense_group(
        self, backend: Backend, variables: list[Any], grads: list[Any], apply_state: dict
    ) -> None:
        first = variables[0]
        device, dtype = backend.device(first), backend.dtype(first)
        kernel = kernels.select(backend, device, dtype)
        slots = [self._slots[id(var)] for var in variables]  # made by _create_slots
        kernel.dense(
            backend,
            variables,
            grads,
            [var_slots["m"] for var_slots in slots],
            [var_slots["v"] for var_slots in slots],
            self._scalars_for(backend, first, apply_state),
        )

    def _resource_apply_dense(self, grad: Any, var: Any, apply_state: dict) -> None:
        self._apply_dense_group(self._backend_of(var), [var], [grad], apply_state)

    def _resource_apply_sparse(self, grad: Any, var: Any, indices: Any, apply_state: dict) -> None:
        backend = self._backend_of(var)
        kernel = kernels.select(backend, backend.device(var), backend.dtype(var))
        kernel.sparse(
            backend,
            var,
            grad,
            indices,
            self.get_slot(var, "m"),
            self.get_slot(var, "v"),
            self._scalars_for(backend, var, apply_state),
        )

    # --- configuration ---------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Keras's Nadam keys plus `schedule_decay`; `decay` is the learning-rate decay.

        Example:
            >>> Nadam().get_config()["schedule_decay"]
            0.004
        """
        config = super().get_config()
        config.update(
            {
                "learning_rate": self._serialize_hyperparameter("learning_rate"),
                "decay": self._serialize_hyperparameter("decay"),
                "beta_1": self._serialize_hyperparameter("beta_1"),
                "beta_2": self._serialize_hyperparameter("beta_2"),
                "epsilon": self._epsilon,
                "schedule_decay": self._schedule_decay,
            }
        )
        return config

    @classmethod
    def from_config(
        cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None
    ) -> Nadam:
        """Build from a config; a Keras 2 config (no `schedule_decay`) maps `decay` to it."""
        config = dict(config)
        if "schedule_decay" not in config:
            config["schedule_decay"] = config.pop("decay", 0.004)
        return super().from_config(config, custom_objects=custom_objects)
