"""`nadam.torch.Nadam(..., in_backward=True)`: each parameter stepped inside backward.

One backward is one Keras step (one scalar set; `iterations` and `momentum_cache` advanced
once, also when a parameter gets no gradient), bit for bit the steps of the same optimizer
stepped normally and of the Keras 2 oracle; the gradients are freed as they are stepped. The
decisions of `nadam.integrations.torch_in_backward` (two backwards, no parameter reached, an
exception half-way, bad settings, threads, hooks' lifetime, state dicts) each have a test.
"""

from __future__ import annotations

import copy
import gc
import os
import threading

import numpy as np
import pytest
import torch
from torch_helpers import assert_all_bit_equal, assert_bit_equal

from nadam.torch import Nadam

STEPS = 7  # the branch is used at steps 1, 4 and 7


# --- a model with a branch used every third step ---------------------------------------------
def _model(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.ModuleDict:
    torch.manual_seed(seed)
    model = torch.nn.ModuleDict({
        "trunk": torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                                     torch.nn.Linear(16, 8), torch.nn.Tanh()),
        "head": torch.nn.Linear(8, 1),
        "branch": torch.nn.Linear(8, 1),
    })
    return model.to(dtype)


def _batch(step: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(1000 + step)
    x = torch.from_numpy(rng.standard_normal((5, 6)) * 2).to(dtype)
    y = torch.from_numpy(rng.standard_normal((5, 1))).to(dtype)
    return x, y


def _uses_branch(step: int) -> bool:
    return step % 3 == 1


def _loss(model: torch.nn.ModuleDict, step: int, dtype: torch.dtype = torch.float32):
    x, y = _batch(step, dtype)
    hidden = model["trunk"](x)
    out = model["head"](hidden)
    if _uses_branch(step):
        out = out + model["branch"](hidden)
    return torch.nn.functional.mse_loss(out, y)


def _groups(model: torch.nn.ModuleDict, two_groups: bool) -> list[dict]:
    if not two_groups:
        return [{"params": list(model.parameters())}]
    return [
        {"params": list(model["trunk"].parameters())},
        {"params": [*model["head"].parameters(), *model["branch"].parameters()], "lr": 0.02,
         "clipvalue": 0.05},
    ]


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _snapshot(opt: Nadam, model: torch.nn.Module) -> tuple[list, list, int, float | None]:
    return _params(model), opt.get_weights(), opt.iterations, opt.momentum_cache


def _assert_same(ours: Nadam, ours_model, theirs: Nadam, theirs_model, what: str) -> None:
    assert_all_bit_equal(list(ours_model.parameters()), list(theirs_model.parameters()),
                         f"{what}: parameters")
    assert_all_bit_equal(ours.get_weights(), theirs.get_weights(), f"{what}: get_weights()")
    assert ours.iterations == theirs.iterations


def _normal_step(opt: Nadam, model, step: int, dtype=torch.float32) -> None:
    opt.zero_grad()
    _loss(model, step, dtype).backward()
    opt.step()


# --- bit for bit the normal steps --------------------------------------------------------------
@pytest.mark.parametrize(
    ("dtype", "settings", "two_groups"),
    [
        (torch.float32, {}, False),
        (torch.float64, {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-4}, False),
        (torch.float32, {"lr": 0.01, "clipnorm": 0.1, "decay": 0.01}, True),
    ],
    ids=["float32", "float64", "two-groups-clipped"],
)
def test_steps_equal_normal_stepping_with_a_branch_used_every_third_step(
    dtype, settings, two_groups
):
    normal_model, model = _model(dtype=dtype), _model(dtype=dtype)
    normal = Nadam(_groups(normal_model, two_groups), **settings)
    ours = Nadam(_groups(model, two_groups), in_backward=True, **settings)
    assert ours.in_backward and not normal.in_backward
    for step in range(1, 3 * STEPS):
        _normal_step(normal, normal_model, step, dtype)
        _loss(model, step, dtype).backward()  # the step happens here
        assert all(p.grad is None for p in model.parameters())
        _assert_same(ours, model, normal, normal_model, f"step {step}")
    assert ours.iterations == 3 * STEPS - 1
    # The branch's slots came at step 1, with everything else: one round.
    assert {ours.state[p]["round"] for p in model.parameters()} == {0}


def test_parameters_first_stepped_later_append_their_slots_as_in_a_normal_step():
    normal_model, model = _model(), _model()
    normal, ours = Nadam(normal_model.parameters()), Nadam(model.parameters(), in_backward=True)
    for step in range(2, 8):  # the branch first appears at step 4
        _normal_step(normal, normal_model, step)
        _loss(model, step).backward()
        _assert_same(ours, model, normal, normal_model, f"step {step}")
    branch = list(model["branch"].parameters())
    assert [ours.state[p]["round"] for p in branch] == [1, 1]


def test_per_parameter_optimizers_drift_from_step_4_and_ours_does_not():
    """torch's "optimizer in backward" recipe, one optimizer per parameter: the branch's
    optimizers count only the steps that reached the branch, so their momentum schedule falls
    behind from the branch's second use (step 4). Ours advances once per backward."""
    normal_model, per_param_model, model = _model(), _model(), _model()
    normal = Nadam(normal_model.parameters())
    per_param = {p: Nadam([p]) for p in per_param_model.parameters()}

    def step_one(param: torch.Tensor) -> None:
        per_param[param].step()
        per_param[param].zero_grad()

    for param in per_param_model.parameters():
        param.register_post_accumulate_grad_hook(step_one)
    ours = Nadam(model.parameters(), in_backward=True)
    first_drift = None
    for step in range(1, STEPS + 1):
        _normal_step(normal, normal_model, step)
        _loss(per_param_model, step).backward()
        _loss(model, step).backward()
        expected = _params(normal_model)
        assert_all_bit_equal(_params(model), expected, f"ours at step {step}")
        same = all(torch.equal(a, b) for a, b in zip(_params(per_param_model), expected,
                                                    strict=True))
        if not same and first_drift is None:
            first_drift = step
    assert first_drift == 4
    assert ours.iterations == STEPS


def test_steps_equal_the_keras_2_oracle():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tf_keras

    model = _model(seed=3)
    params = list(model.parameters())
    tf_vars = [tf_keras.backend.variable(p.detach().numpy().copy()) for p in params]
    keras = tf_keras.optimizers.legacy.Nadam(learning_rate=0.01)
    seen: dict[int, np.ndarray] = {}
    for index, param in enumerate(params):  # registered first: runs before the optimizer's
        param.register_post_accumulate_grad_hook(
            lambda p, index=index: seen.__setitem__(index, p.grad.numpy().copy())
        )
    ours = Nadam(params, lr=0.01, in_backward=True)
    for step in range(1, STEPS + 1):
        seen.clear()
        _loss(model, step).backward()
        assert (len(seen) == len(params)) == _uses_branch(step)
        keras.apply_gradients([(seen[i], tf_vars[i]) for i in sorted(seen)])
        assert_all_bit_equal(params, [v.numpy() for v in tf_vars], f"step {step}: parameters")
        assert_all_bit_equal(ours.get_weights(), keras.get_weights(), f"step {step}: weights")


def test_sparse_embedding_gradients_step_as_normally():
    def build():
        torch.manual_seed(5)
        return torch.nn.Embedding(7, 3, sparse=True), torch.nn.Linear(3, 1)

    def loss(embedding, linear, step):
        ids = torch.tensor([[1, 3, 3], [step % 7, 0, 1]])
        return linear(embedding(ids)).pow(2).mean()

    normal_modules, modules = build(), build()
    normal_params = [p for m in normal_modules for p in m.parameters()]
    params = [p for m in modules for p in m.parameters()]
    normal, ours = Nadam(normal_params), Nadam(params, in_backward=True)
    for step in range(4):
        normal.zero_grad()
        loss(*normal_modules, step).backward()
        assert normal_params[0].grad.is_sparse
        normal.step()
        loss(*modules, step).backward()
        assert_all_bit_equal(params, normal_params, f"step {step}")
        assert_all_bit_equal(ours.get_weights(), normal.get_weights(), f"step {step}")


# --- memory: gradients are freed as they are stepped -------------------------------------------
def test_no_two_parameter_gradients_exist_at_once():
    model = _model()
    params = list(model.parameters())
    live: list[int] = []

    def count(_: torch.Tensor) -> None:  # registered after the optimizer's hook
        live.append(sum(p.grad is not None for p in params))

    opt = Nadam(params, in_backward=True)
    for param in params:
        param.register_post_accumulate_grad_hook(count)
    _loss(model, 1).backward()
    assert live == [0] * len(params)
    assert opt.iterations == 1


# --- what is a step ----------------------------------------------------------------------------
def test_two_backwards_of_one_retained_graph_are_two_steps():
    """The graph does not save the parameter (its gradient is the constant `c`), so it can be
    run twice; each run is a step. (A graph that saved a parameter refuses its second run
    once the parameter moved, with torch's in-place error, as with `step()` in between.)"""
    c = torch.tensor([0.5, -2.0, 3.0])
    w, normal_w = (torch.nn.Parameter(torch.tensor([1.0, 2.0, -1.0])) for _ in range(2))
    ours, normal = Nadam([w], in_backward=True), Nadam([normal_w])
    loss = (w * c).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    for _ in range(2):
        normal_w.grad = c.clone()
        normal.step()
    assert_bit_equal(w.detach(), normal_w.detach(), "parameter")
    assert_all_bit_equal(ours.get_weights(), normal.get_weights(), "weights")
    assert ours.iterations == 2 and w.grad is None


def test_a_backward_that_reaches_no_parameter_is_no_step():
    model = _model()
    opt = Nadam(model.parameters(), in_backward=True)
    before = _params(model)
    free = torch.ones(3, requires_grad=True)
    (free * 2).sum().backward()
    torch.autograd.grad(_loss(model, 1), list(model.parameters()))  # accumulates nothing
    assert opt.iterations == 0 and opt.momentum_cache is None
    assert opt.get_weights() == [] and len(opt.state) <= 1
    assert_all_bit_equal(_params(model), before, "parameters")
    _loss(model, 1).backward()
    assert opt.iterations == 1


def test_step_updates_nothing_returns_the_closure_loss_and_zero_grad_is_harmless():
    normal_model, model = _model(), _model()
    normal, ours = Nadam(normal_model.parameters()), Nadam(model.parameters(), in_backward=True)
    for step in range(1, 5):  # the ordinary loop, unchanged
        _normal_step(normal, normal_model, step)
        ours.zero_grad()
        _loss(model, step).backward()
        assert ours.step() is None
        ours.zero_grad(set_to_none=False)
        _assert_same(ours, model, normal, normal_model, f"step {step}")

    def closure():  # a closure that runs backward steps once, inside it
        ours.zero_grad()
        loss = _loss(model, 5)
        loss.backward()
        return loss

    expected_loss = _loss(normal_model, 5).detach()
    _normal_step(normal, normal_model, 5)
    loss = ours.step(closure)
    assert_bit_equal(loss.detach(), expected_loss, "the closure's loss")
    _assert_same(ours, model, normal, normal_model, "step(closure)")
    assert ours.iterations == 5


def test_non_reentrant_activation_checkpointing_is_one_step():
    from torch.utils.checkpoint import checkpoint

    normal_model, model = _model(), _model()
    normal, ours = Nadam(normal_model.parameters()), Nadam(model.parameters(), in_backward=True)
    for step in range(1, 4):
        _normal_step(normal, normal_model, step)
        x, y = _batch(step)
        hidden = checkpoint(model["trunk"], x, use_reentrant=False)
        out = model["head"](hidden)
        if _uses_branch(step):
            out = out + model["branch"](hidden)
        torch.nn.functional.mse_loss(out, y).backward()
        _assert_same(ours, model, normal, normal_model, f"step {step}")


# --- failures --------------------------------------------------------------------------------
def test_an_exception_half_way_commits_the_step_for_the_parameters_already_stepped():
    """The head's gradients arrive (and are stepped) before the trunk's; an activation hook
    raising in between stops the backward. The step is committed with the head stepped, the
    trunk untouched with no gradient; the next backward is the next step."""
    model, expected_model = _model(), _model()
    ours = Nadam(model.parameters(), in_backward=True)
    expected = Nadam(expected_model.parameters())
    x, y = _batch(2)
    hidden = model["trunk"](x)
    hidden.register_hook(lambda g: (_ for _ in ()).throw(RuntimeError("stop here")))
    trunk_before = _params(model["trunk"])
    with pytest.raises(RuntimeError, match="stop here"):
        torch.nn.functional.mse_loss(model["head"](hidden), y).backward()
    # The same step on the normal face: the head's gradients only.
    expected_hidden = expected_model["trunk"](x).detach()
    torch.nn.functional.mse_loss(expected_model["head"](expected_hidden), y).backward()
    expected.step()
    _assert_same(ours, model, expected, expected_model, "after the failed backward")
    assert_all_bit_equal(_params(model["trunk"]), trunk_before, "the trunk")
    assert all(p.grad is None for p in model.parameters())
    assert ours.iterations == 1
    for step in (3, 4):  # then on as usual
        _normal_step(expected, expected_model, step)
        _loss(model, step).backward()
        _assert_same(ours, model, expected, expected_model, f"step {step}")


@pytest.mark.parametrize(
    ("break_it", "error", "match"),
    [
        (lambda opt, model: opt.param_groups[0].__setitem__("lr", -1.0), ValueError,
         r"param_groups\[0\].*lr"),
        (lambda opt, model: opt.param_groups[0].__setitem__("global_clipnorm", 1.0), ValueError,
         r"param_groups\[0\].*global_clipnorm.*in_backward"),
        (lambda opt, model: opt.param_groups[0].__setitem__("betas", (0.9, 0.999999999)),
         ValueError, "beta_2"),
    ],
    ids=["negative-lr", "global-clipnorm", "beta_2-is-1"],
)
def test_bad_settings_raise_inside_backward_and_change_nothing(break_it, error, match):
    model = _model()
    opt = Nadam(model.parameters(), in_backward=True)
    _loss(model, 1).backward()
    before = _snapshot(opt, model)
    saved = copy.deepcopy(opt.param_groups[0])
    break_it(opt, model)
    with pytest.raises(error, match=match):
        _loss(model, 1).backward()
    params, weights, iterations, cache = before
    assert_all_bit_equal(_params(model), params, "parameters")
    assert_all_bit_equal(opt.get_weights(), weights, "weights")
    assert (opt.iterations, opt.momentum_cache) == (iterations, cache)
    # Fixed, the next backward is step 2 of a normal run.
    opt.param_groups[0].update({k: v for k, v in saved.items() if k != "params"})
    opt.zero_grad()
    normal_model = _model()
    normal = Nadam(normal_model.parameters())
    for step in (1, 2):
        _normal_step(normal, normal_model, step)
    _loss(model, 2).backward()
    _assert_same(opt, model, normal, normal_model, "after the fix")


def test_a_parameter_that_no_longer_fits_its_slots_is_refused_before_anything_changes():
    model = _model()
    opt = Nadam(model.parameters(), in_backward=True)
    _loss(model, 1).backward()
    head = model["head"].weight
    before_weights = opt.get_weights()
    with torch.no_grad():
        head.data = torch.zeros(2, 8)  # reshaped behind the optimizer's back
    others = _params(model)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[4\].*slots"):
        (head * 2).sum().backward()  # its gradient is the first (and only) of the backward
    assert_all_bit_equal(_params(model), others, "parameters")
    assert_all_bit_equal(opt.get_weights(), before_weights, "weights")
    assert opt.iterations == 1


def test_global_clipnorm_is_refused_at_construction_and_in_added_groups():
    model = _model()
    with pytest.raises(ValueError, match="defaults: global_clipnorm=1.0 cannot be used with "
                                         "in_backward=True"):
        Nadam(model.parameters(), global_clipnorm=1.0, in_backward=True)
    with pytest.raises(ValueError, match=r"param_groups\[0\]: global_clipnorm"):
        Nadam([{"params": model.parameters(), "global_clipnorm": 2.0}], in_backward=True)
    opt = Nadam(model["trunk"].parameters(), in_backward=True)
    groups = copy.copy(opt.param_groups)
    with pytest.raises(ValueError, match=r"param_groups\[1\]: global_clipnorm"):
        opt.add_param_group({"params": model["head"].parameters(), "global_clipnorm": 1.0})
    assert opt.param_groups == groups
    _loss(model, 2).backward()
    assert model["head"].weight.grad is not None  # not watched: the group was not added
    assert model["trunk"][0].weight.grad is None


def test_in_backward_must_be_a_bool():
    with pytest.raises(TypeError, match="in_backward must be True or False, got str 'yes'"):
        Nadam(_model().parameters(), in_backward="yes")


# --- param groups, hooks' lifetime, state ----------------------------------------------------
def test_add_param_group_watches_the_new_parameters():
    normal_model, model = _model(), _model()
    normal = Nadam(normal_model["trunk"].parameters())
    normal.add_param_group({"params": [*normal_model["head"].parameters(),
                                       *normal_model["branch"].parameters()], "lr": 0.01})
    ours = Nadam(model["trunk"].parameters(), in_backward=True)
    ours.add_param_group({"params": [*model["head"].parameters(),
                                     *model["branch"].parameters()], "lr": 0.01})
    for step in range(1, 5):
        _normal_step(normal, normal_model, step)
        _loss(model, step).backward()
        _assert_same(ours, model, normal, normal_model, f"step {step}")


def test_remove_hooks_returns_to_normal_stepping():
    normal_model, model = _model(), _model()
    normal, ours = Nadam(normal_model.parameters()), Nadam(model.parameters(), in_backward=True)
    for step in (1, 2):
        _normal_step(normal, normal_model, step)
        _loss(model, step).backward()
    ours.remove_hooks()
    assert not ours.in_backward
    for step in (3, 4):
        _normal_step(normal, normal_model, step)
        ours.zero_grad()
        _loss(model, step).backward()
        assert model["head"].weight.grad is not None  # no longer stepped inside backward
        ours.step()
        _assert_same(ours, model, normal, normal_model, f"step {step}")


def test_a_garbage_collected_optimizer_leaves_no_hooks_behind():
    model = _model()
    opt = Nadam(model.parameters(), in_backward=True)
    _loss(model, 1).backward()
    del opt
    gc.collect()
    assert all(not p._post_accumulate_grad_hooks for p in model.parameters())
    before = _params(model)
    _loss(model, 4).backward()  # reaches every parameter, the branch too
    assert_all_bit_equal(_params(model), before, "parameters")
    assert all(p.grad is not None for p in model.parameters())


def test_a_deep_copy_is_an_ordinary_optimizer_of_the_copied_parameters():
    model = _model()
    opt = Nadam(model.parameters(), in_backward=True)
    _loss(model, 1).backward()
    model_copy, opt_copy = copy.deepcopy((model, opt))
    assert not opt_copy.in_backward and opt.in_backward
    normal_model = _model()
    normal = Nadam(normal_model.parameters())
    for step in (1, 2):
        _normal_step(normal, normal_model, step)
    _normal_step(opt_copy, model_copy, 2)
    _assert_same(opt_copy, model_copy, normal, normal_model, "the copy")
    assert opt.iterations == 1  # the original's hooks did not step for the copy


@pytest.mark.parametrize("direction", ["in-backward to normal", "normal to in-backward"])
def test_state_dicts_move_between_the_modes(direction):
    reference_model, model = _model(), _model()
    reference = Nadam(reference_model.parameters())
    first_in_backward = direction == "in-backward to normal"
    first = Nadam(model.parameters(), in_backward=first_in_backward)
    for step in range(1, 4):
        _normal_step(reference, reference_model, step)
        _normal_step(first, model, step)  # also the ordinary loop in in-backward mode
    state = copy.deepcopy(first.state_dict())
    if first_in_backward:
        first.remove_hooks()
    second = Nadam(model.parameters(), in_backward=not first_in_backward)
    second.load_state_dict(state)
    for step in range(4, 8):
        _normal_step(reference, reference_model, step)
        _normal_step(second, model, step)
        _assert_same(second, model, reference, reference_model, f"step {step}")


# --- threads ---------------------------------------------------------------------------------
def test_backwards_in_two_threads_are_each_one_step():
    """Two threads train two models through one optimizer at once: every backward is one step
    (the schedule advances once per backward, whatever the interleaving)."""
    models = [_model(seed=1), _model(seed=2)]
    opt = Nadam([{"params": m.parameters()} for m in models], in_backward=True)
    per_thread = 6
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def train(model: torch.nn.ModuleDict) -> None:
        try:
            barrier.wait()
            for step in range(per_thread):
                _loss(model, step).backward()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=train, args=(m,)) for m in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert opt.iterations == 2 * per_thread
    sequential_model = _model(seed=1)
    sequential = Nadam(sequential_model.parameters())
    for step in range(2 * per_thread):
        _normal_step(sequential, sequential_model, step)
    assert_bit_equal(torch.tensor(opt.momentum_cache, dtype=torch.float32),
                     torch.tensor(sequential.momentum_cache, dtype=torch.float32),
                     "momentum_cache")
    assert all(p.grad is None for m in models for p in m.parameters())


_DTENSOR_SCRIPT = """
import socket, torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from nadam.torch import Nadam
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
mesh = init_device_mesh("cpu", (1,))
plain = torch.nn.Parameter(torch.ones(3))
sharded = torch.nn.Parameter(distribute_tensor(torch.ones(4, 2), mesh, [Shard(0)]))
opt = Nadam([plain], in_backward=True)
try:
    opt.add_param_group({"params": [sharded]})
except TypeError as error:
    print("TypeError:", error)
print("groups:", len(opt.param_groups), "watched:", sharded._post_accumulate_grad_hooks)
try:
    Nadam([sharded], in_backward=True)
except TypeError as error:
    print("TypeError:", error)
dist.destroy_process_group()
"""


def test_dtensor_parameters_are_refused_before_anything_changes():
    """FSDP2's sharded parameters never pass through autograd's accumulation: in_backward
    would silently never step them. A process group of one, in a subprocess of its own."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _DTENSOR_SCRIPT], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("TypeError: param_groups[1]['params'][0] is a DTensor")
    assert "no gradient hook would ever fire" in lines[0]
    assert lines[1] == "groups: 1 watched: None"
    assert lines[2].startswith("TypeError: param_groups[0]['params'][0] is a DTensor")


def test_a_process_group_of_several_ranks_gets_a_warning_about_ddp(monkeypatch):
    """Under DDP the hooks would step each rank's own gradient (DDP averages after them): the
    ranks drift apart (README, Scale-out). One rank, or no process group: no warning."""
    import warnings

    import torch.distributed as dist

    params = list(_model().parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Nadam(params, in_backward=True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Nadam(params, in_backward=True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    with pytest.warns(RuntimeWarning, match="DistributedDataParallel each rank would step"):
        Nadam(params, in_backward=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Nadam(params)  # stepping normally is right under DDP


def test_parameters_sharing_memory_are_refused_at_the_first_gradient():
    base = torch.arange(6, dtype=torch.float32)
    first, second = torch.nn.Parameter(base[:4]), torch.nn.Parameter(base[2:])
    opt = Nadam([first, second], in_backward=True)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\].*and "
                                         r"param_groups\[0\]\['params'\]\[1\].*share memory"):
        (first * 2).sum().backward()
    assert torch.equal(base, torch.arange(6, dtype=torch.float32))
    assert opt.iterations == 0 and opt.get_weights() == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_parameters_step_inside_backward_as_normally():
    """On CUDA the hooks run on autograd's device thread; the steps are the normal ones."""
    normal_model, model = _model().cuda(), _model().cuda()
    normal, ours = Nadam(normal_model.parameters()), Nadam(model.parameters(), in_backward=True)
    for step in range(1, STEPS + 1):
        x, y = (t.cuda() for t in _batch(step))
        normal.zero_grad()
        for m in (normal_model, model):
            hidden = m["trunk"](x)
            out = m["head"](hidden)
            if _uses_branch(step):
                out = out + m["branch"](hidden)
            torch.nn.functional.mse_loss(out, y).backward()
        normal.step()
        _assert_same(ours, model, normal, normal_model, f"step {step}")
        assert all(p.grad is None for p in model.parameters())


def test_many_failed_backwards_each_commit_one_step_and_are_forgotten():
    """A backward that raises never runs its end-of-backward callback: its record is dropped
    once 64 are kept (its graph task never comes back), and each one was exactly one step."""
    model = _model()
    opt = Nadam(model.parameters(), in_backward=True)
    for step in range(70):
        x, y = _batch(step)
        hidden = model["trunk"](x)
        hidden.register_hook(lambda g: (_ for _ in ()).throw(RuntimeError("stop")))
        with pytest.raises(RuntimeError, match="stop"):
            torch.nn.functional.mse_loss(model["head"](hidden), y).backward()
    assert opt.iterations == 70
    assert len(opt._nadam_in_backward._open) == 64
    _loss(model, 1).backward()  # then an ordinary backward: kept (the oldest dropped), closed
    assert opt.iterations == 71 and len(opt._nadam_in_backward._open) == 63
    # The momentum cache advanced once per backward: as 71 normal steps advance it.
    w = torch.nn.Parameter(torch.zeros(2))
    reference = Nadam([w])
    for _ in range(71):
        w.grad = torch.ones(2)
        reference.step()
    assert_all_bit_equal(opt.get_weights()[:2], reference.get_weights()[:2], "schedule")
