"""`kernels.traced`: the step inside a framework's traces, chosen by the kernels package."""

from __future__ import annotations

import pytest

from nadam import kernels


def test_each_framework_has_its_traced_step():
    assert kernels.traced("jax").__name__ == "nadam.kernels.xla"
    assert kernels.traced("tensorflow").__name__ == "nadam.kernels.tf_ops"
    for framework in ("jax", "tensorflow"):
        module = kernels.traced(framework)
        for name in ("nadam_scalars", "decayed_learning_rate", "dense_update", "sparse_update"):
            assert callable(getattr(module, name)), (framework, name)


@pytest.mark.parametrize("framework", ["torch", "numpy", ""])
def test_another_framework_is_a_clear_error(framework):
    with pytest.raises(ValueError, match=f"No traced Nadam step for {framework!r}"):
        kernels.traced(framework)
