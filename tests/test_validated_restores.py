"""`set_weights` on the Keras face refuses state that no run can produce (SPEC 4.8).

`iterations` must be a whole number in [0, 2**63 - 1] (before, NaN and 1e30 were cast to
-2**63 and the next step computed NaN); `momentum_cache` a number in [0, 1]. Every refusal is
a ValueError naming the weight, raised before anything is written. The torch.optim face:
torch/test_torch_validated_restores.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import nadam
from nadam import Nadam, Variable


def _stepped() -> tuple[Nadam, Variable]:
    x = Variable(np.array([1.0, -2.0, 3.0], np.float32), name="x")
    opt = Nadam(learning_rate=0.01)
    opt.apply_gradients([(np.array([0.1, -0.5, 2.0], np.float32), x)])
    return opt, x


def _with(opt: Nadam, position: int, value) -> list:
    weights = opt.get_weights()
    weights = [w * 0.5 if w.dtype.kind == "f" and w.ndim else w for w in weights]  # a change
    weights[position] = value
    return weights


def _refused(opt: Nadam, x: Variable, weights: list, match: str) -> None:
    before = [w.tobytes() for w in opt.get_weights()]
    with pytest.raises(ValueError, match=match):
        opt.set_weights(weights)
    assert [w.tobytes() for w in opt.get_weights()] == before
    assert opt.apply_gradients([(np.ones(3, np.float32), x)]) == 2  # and it steps on
    assert np.all(np.isfinite(x.numpy()))


@pytest.mark.parametrize("value, match", [
    (np.int64(-1), r"iterations \(weight 0 given to set_weights\) in \[0, 2\*\*63 - 1\]"),
    (np.float64("nan"), r"iterations \(weight 0 .*\) to be a whole number, received: nan"),
    (np.float64("inf"), r"to be a whole number, received: inf"),
    (np.float64(2.5), r"to be a whole number, received: 2.5"),
    (np.float64(1e30), r"in \[0, 2\*\*63 - 1\] \(a non-negative int64\), received: 1e\+30"),
    (np.uint64(2**63), r"received: 9223372036854775808"),
    (np.float32(-3.0), r"in \[0, 2\*\*63 - 1\]"),
    (np.bool_(True), r"iterations .* non-negative integer, received: True"),
])
def test_iterations_no_run_can_have_are_refused(value, match):
    opt, x = _stepped()
    _refused(opt, x, _with(opt, 0, value), match)


@pytest.mark.parametrize("value, match", [
    (np.float32("nan"), r"momentum_cache \(weight 1 given to set_weights\) in \[0, 1\], "
     r"received: nan"),
    (np.float32(1.5), r"in \[0, 1\], received: 1.5"),
    (np.float32(-0.25), r"in \[0, 1\], received: -0.25"),
    (np.float64("inf"), r"in \[0, 1\], received: inf"),
])
def test_a_momentum_cache_no_run_can_have_is_refused(value, match):
    opt, x = _stepped()
    _refused(opt, x, _with(opt, 1, value), match)


def test_a_momentum_cache_that_is_not_a_scalar_is_refused_with_keras_text():
    opt, x = _stepped()
    _refused(opt, x, _with(opt, 1, np.ones(1, np.float32)),
             r"Optimizer weight shape \(\) not compatible with provided weight shape \(1,\)")


def test_checks_come_after_keras_own_length_and_shape_checks():
    opt, x = _stepped()
    weights = _with(opt, 0, np.float64("nan"))
    weights[-1] = np.zeros(4, np.float32)
    _refused(opt, x, weights, "not compatible with provided weight shape")


@pytest.mark.parametrize("iterations, cache", [
    (np.float64(3.0), np.float32(0.0)),  # a whole float counts; the cache underflows to 0
    (np.int32(0), np.float64(1.0)),  # a fresh state; the cache is cast to its dtype
])
def test_what_runs_produce_is_accepted(iterations, cache):
    opt, _ = _stepped()
    opt.set_weights(_with(opt, 0, iterations)[:1] + [cache] + opt.get_weights()[2:])
    got = opt.get_weights()
    assert got[0].dtype == np.int64 and int(got[0]) == int(iterations)
    assert got[1].dtype == np.float32 and float(got[1]) == float(cache)


def test_a_custom_optimizer_checks_its_iterations_too():
    class Plain(nadam.Optimizer):
        def _create_slots(self, var_list):
            for var in var_list:
                self.add_slot(var, "velocity")

    opt = Plain("plain")
    opt.build([Variable(np.zeros(2))])
    with pytest.raises(ValueError, match="whole number"):
        opt.set_weights([np.float64("nan"), np.zeros(2)])
    assert int(opt.iterations.value) == 0
