"""`Nadam`: Dozat's Nesterov-accelerated Adam with Keras 2's momentum schedule (the Keras face).

The rule lives beside it: which slots Nadam keeps (`m`, `v` per variable, one `momentum_cache`
per optimizer), its per-step scalars (`nadam.step_scalars`) and its element-wise update
(`kernels.reference`). The step itself is the engine's (`nadam.engine`); this class translates
Keras's hooks into it: its slots, the `StepContext` for a step, and the commit of the cache.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nadam import checks, engine
from nadam.backends import Backend, backend_for
from nadam.kernels import NadamScalars
from nadam.optimizer import STEP_CONTEXT, Optimizer
from nadam.step_scalars import nadam_scalars
from nadam.variables import IndexedSlices, Variable

__all__ = ["Nadam", "nadam_scalars"]


class Nadam(Optimizer):
    """Keras 2's Nadam optimizer on NumPy arrays, PyTorch tensors and JAX arrays (the Keras face).

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

    # --- plain (non-hyper) settings -------------------------------------------------------
    @property
    def epsilon(self) -> float:
        """The constant added to the denominator (1e-7 when given None or 0)."""
        return self._epsilon

    @epsilon.setter
    def epsilon(self, value: float | None) -> None:
        self._epsilon = checks.epsilon(value)

    @property
    def schedule_decay(self) -> float:
        """The momentum schedule constant: mu_t = beta_1 (1 - 0.5 * 0.96 ** (t * this))."""
        return self._schedule_decay

    @schedule_decay.setter
    def schedule_decay(self, value: float) -> None:
        if not checks.is_real_number(value):
            raise TypeError(f"schedule_decay must be a number, got {type(value).__name__}")
        checks.check_in_range(float(value), "schedule_decay", checks.NON_NEGATIVE)
        self._schedule_decay = value

    @property
    def momentum_cache(self) -> Variable | None:
        """The running product of the momentum schedule (None before the first step)."""
        return self._momentum_cache

    # --- the rule's state ------------------------------------------------------------------
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

    # --- one step through the engine -----------------------------------------------------
    def _step_context(
        self, places: list[tuple[str, np.dtype]], hypers: dict[str, np.ndarray], iterations: int
    ) -> engine.StepContext:
        return engine.prepare(
            iterations, self._momentum_cache.value[()], (self._step_hypers(hypers),),
            [(0, dtype) for _, dtype in places],
        )

    def _step_hypers(self, hypers: dict[str, np.ndarray]) -> engine.Hypers:
        return engine.Hypers(
            hypers["learning_rate"], hypers["beta_1"], hypers["beta_2"], self._epsilon,
            hypers["decay"], self._schedule_decay,
        )

    def _check_step(
        self, places: list[tuple[str, np.dtype]], hypers: dict[str, np.ndarray]
    ) -> None:
        engine.check_hypers_fit((self._step_hypers(hypers),), [(0, dtype) for _, dtype in places])

    def _prepare_local(self, var_device: str, var_dtype: np.dtype, apply_state: dict) -> None:
        scalars = apply_state[STEP_CONTEXT].scalars[(0, var_dtype)]
        apply_state[(var_device, var_dtype)].update(lr_t=scalars.lr, scalars=scalars)

    def _apply_updates(self, updates: list[engine.Update], apply_state: dict) -> None:
        for update in updates:
            if update.v is None:  # slots made by this step
                if update.sharding is None:
                    slots = self._slots.get(update.var)
                    update.m, update.v = slots["m"], slots["v"]
                else:  # a DTensor's slots are DTensors too; the engine steps the local shards
                    slots = self._slots.get(update.sharding.whole)
                    update.m, update.v = slots["m"]._local_tensor, slots["v"]._local_tensor
        cls = type(self)
        dense_hook = sparse_hook = None
        # A subclass's own per-variable hooks are called, as Keras does; otherwise the
        # engine runs the fused kernels over whole groups.
        if cls._resource_apply_dense is not Nadam._resource_apply_dense:
            def dense_hook(update: engine.Update, _: NadamScalars) -> None:
                self._dense_hook(update, apply_state)
        if (
            cls._resource_apply_sparse is not Nadam._resource_apply_sparse
            or cls._resource_apply_sparse_duplicate_indices
            is not Optimizer._resource_apply_sparse_duplicate_indices
        ):
            def sparse_hook(update: engine.Update, _: NadamScalars) -> None:
                self._sparse_hook(update, apply_state)
        engine.apply(updates, apply_state[STEP_CONTEXT], dense_hook, sparse_hook, self._memo)

    def _commit(self, apply_state: dict) -> None:
        # The cache advances once per call in its own dtype, whatever the variables' dtypes.
        self._momentum_cache.assign(apply_state[STEP_CONTEXT].momentum_cache)

    def _scalars_for(self, backend: Backend, var: Any, apply_state: dict) -> NadamScalars:
        return apply_state[(backend.device(var), backend.dtype(var))]["scalars"]

    def _resource_apply_dense(self, grad: Any, var: Any, apply_state: dict) -> None:
        """Keras's per-variable hook: one variable's dense step (for subclasses' `super()`)."""
        self._apply_one(var, grad, apply_state)

    def _resource_apply_sparse(self, grad: Any, var: Any, indices: Any, apply_state: dict) -> None:
        """Keras's per-variable hook: one variable's sparse step over unique `indices`."""
        backend = self._backend_of(var)
        self._apply_one(var, IndexedSlices(grad, indices, backend.shape(var)), apply_state)

    def _apply_one(self, var: Any, grad: Any, apply_state: dict) -> None:
        # The engine's kernels for one variable, with this step's scalars for its dtype.
        backend = self._backend_of(var)
        update = engine.checked_update(backend, var, grad)
        update.m, update.v = self.get_slot(var, "m"), self.get_slot(var, "v")
        scalars = self._scalars_for(backend, var, apply_state)
        engine.apply([update], engine.StepContext(0, scalars.lr, {(0, update.dtype): scalars}))

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
