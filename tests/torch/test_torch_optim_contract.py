"""`nadam.torch.Nadam` keeps the generic `torch.optim.Optimizer` contract.

These are the behaviours PyTorch's own generic optimizer tests (`TestOptimRenewed`) ask of
every optimizer: construction and its errors, param groups (lists, dicts, named parameters,
`add_param_group`), `step(closure)`, `zero_grad`, the step / state_dict / load_state_dict
hooks, `state_dict` round trips (deepcopy, pickle, `torch.save` with `weights_only`), loading
older or foreign-looking state dicts, LR schedulers, a tensor `lr`, empty and 0-d parameters,
`__repr__`, `torch.compile`. Written for this project; where we differ on purpose the test
states our documented behaviour instead:

- one momentum schedule per optimizer: `betas[0]` (and `schedule_decay`) equal in all groups;
- a parameter twice in one group is an error (torch only warns);
- complex parameters are a TypeError (Keras trains real variables only);
- sparse gradients follow Keras's rule (m and v decay in every row), so a sparse step is not
  the dense step of the same values;
- a loaded state dict is copied, and checked before anything changes.
"""

from __future__ import annotations

import copy
import io
import pickle
from typing import Any

import pytest
import torch
from torch.nn import Parameter
from torch.optim.lr_scheduler import ReduceLROnPlateau, StepLR
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from nadam import IndexedSlices
from nadam import Nadam as KerasFaceNadam
from nadam.torch import Nadam

OUR_SETTINGS = ("lr", "betas", "eps", "schedule_decay", "decay", "clipnorm", "clipvalue",
                "global_clipnorm")


def _same(a: Any, b: Any) -> bool:
    """Equal as state: same keys and types, tensors with the same dtype, shape and bits."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
            and torch.equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


def _linear(seed=0, contiguous=True):
    """A weight, a bias and an input, as torch's generic tests build them."""
    generator = torch.Generator().manual_seed(seed)
    if contiguous:
        weight = Parameter(torch.randn(10, 5, generator=generator))
        bias = Parameter(torch.randn(10, generator=generator))
    else:
        weight = Parameter(torch.randn(10, 5, 2, generator=generator)[..., 0])
        bias = Parameter(torch.randn(10, 2, generator=generator)[..., 0])
    data = torch.randn(5, generator=generator)
    return weight, bias, data


def _loss_closure(opt, weight, bias, data):
    def closure():
        opt.zero_grad()
        loss = (weight.mv(data) + bias).pow(2).sum()
        loss.backward()
        return loss

    return closure


def _stepped(steps=3, seed=0, **settings):
    weight, bias, data = _linear(seed)
    opt = Nadam([weight, bias], **settings)
    closure = _loss_closure(opt, weight, bias, data)
    for _ in range(steps):
        opt.step(closure)
    return opt, weight, bias, data


def _twin(weight, bias, data, params=None):
    """Equal (not identical) parameters and a fresh optimizer over them."""
    weight_c, bias_c = (Parameter(t.detach().clone()) for t in (weight, bias))
    twin = Nadam(params(weight_c, bias_c) if params else [weight_c, bias_c])
    return twin, weight_c, bias_c, _loss_closure(twin, weight_c, bias_c, data)


# --- construction -----------------------------------------------------------------------------
def test_construction_errors_of_every_torch_optimizer():
    p, q = Parameter(torch.randn(1, 1)), Parameter(torch.randn(1, 1))
    with pytest.raises(ValueError, match="optimizer got an empty parameter list"):
        Nadam([])
    with pytest.raises(TypeError, match="params argument given to the optimizer should be an "
                                        "iterable of Tensors or dicts"):
        Nadam(p)
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter "
                                         "group"):
        Nadam([{"params": p}, {"params": p}])
    with pytest.raises(ValueError, match="all optimizer params should be with/without names"):
        Nadam([("weight", p), q])
    with pytest.raises(ValueError, match="all optimizer param groups should be with/without "
                                         "names"):
        Nadam([{"params": [p], "lr": 1e-2}, {"params": [("weight", q)]}])
    # torch's optimizers say "Tensor lr must be 1-element"; ours names the setting the same way.
    with pytest.raises(ValueError, match="lr must be a scalar"):
        Nadam([p], lr=torch.tensor([0.001, 0.001]))
    with pytest.raises(ValueError, match=r"\blr\b.*-1\.0"):
        Nadam([p], lr=-1.0)
    with pytest.raises(ValueError, match=r"betas\[0\].*1\.0"):
        Nadam([p], betas=(1.0, 0.999))


def test_a_parameter_twice_in_one_group_is_an_error_not_a_warning():
    p = Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=r"\['params'\]\[1\] .* appears twice in the group"):
        Nadam([p, p])


def test_complex_parameters_are_a_type_error():
    z = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(TypeError, match="complex64; Nadam trains only float16, float32"):
        Nadam([z])
    opt = Nadam([Parameter(torch.ones(2))])
    with pytest.raises(TypeError, match="complex64"):
        opt.add_param_group({"params": [z]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize(
    "flag", ["foreach", "fused", "differentiable", "capturable", "maximize", "weight_decay"]
)
def test_there_are_no_implementation_flags_to_pass(flag):
    # The kernel is chosen by capability (device, dtype, memory layout), never by a flag.
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{flag}'"):
        Nadam([Parameter(torch.ones(2))], **{flag: True})
    assert set(Nadam([Parameter(torch.ones(2))]).defaults) == set(OUR_SETTINGS)


def test_repr_lists_every_group_and_its_settings():
    opt = Nadam([{"params": [Parameter(torch.ones(2))]},
                 {"params": [Parameter(torch.ones(3))], "lr": 0.5}])
    text = repr(opt)
    assert text.startswith("Nadam (") and "Parameter Group 1" in text
    assert "    lr: 0.5\n" in text and "    schedule_decay: 0.004\n" in text
    assert all(f"    {name}: " in text for name in OUR_SETTINGS)


# --- param groups -----------------------------------------------------------------------------
def _group_forms(weight, bias):
    return {
        "list": [weight, bias],
        "generator": (p for p in (weight, bias)),
        "one dict": [{"params": [weight, bias]}],
        "dict per tensor": [{"params": weight}, {"params": bias}],
        "named": [("weight", weight), ("bias", bias)],
    }


@pytest.mark.parametrize("form", ["list", "generator", "one dict", "dict per tensor", "named"])
def test_every_way_of_passing_params_takes_the_same_steps(form):
    weight, bias, data = _linear()
    reference, ref_weight, ref_bias, ref_closure = _twin(weight, bias, data)
    opt = Nadam(_group_forms(weight, bias)[form])
    closure = _loss_closure(opt, weight, bias, data)
    for _ in range(5):
        opt.step(closure)
        reference.step(ref_closure)
    assert torch.equal(weight, ref_weight) and torch.equal(bias, ref_bias)
    if form == "named":
        assert opt.param_groups[0]["param_names"] == ["weight", "bias"]
        assert opt.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]


def test_add_param_group_fills_in_the_defaults_and_the_group_steps():
    p, q = Parameter(torch.ones(2)), Parameter(torch.ones(3))
    opt = Nadam([p], lr=0.01, decay=0.1)
    opt.add_param_group({"params": q, "eps": 1e-3})
    group = opt.param_groups[1]
    assert group["params"] == [q] and group["lr"] == 0.01 and group["decay"] == 0.1
    assert group["eps"] == 1e-3 and set(group) == {"params", *OUR_SETTINGS}
    q.grad = torch.ones(3)
    opt.step()
    assert "m" in opt.state[q] and p not in opt.state and opt.iterations == 1


def test_add_param_group_with_another_beta_1_is_refused_before_it_joins():
    # The momentum schedule and its cache are one per optimizer, as in Keras.
    opt = Nadam([Parameter(torch.ones(2))])
    with pytest.raises(ValueError, match="momentum schedule"):
        opt.add_param_group({"params": [Parameter(torch.ones(2))], "betas": (0.5, 0.999)})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [Parameter(torch.ones(2))], "betas": (0.9, 0.99)})


def test_a_group_with_a_tiny_lr_stays_put_while_the_other_learns():
    weight, bias, data = _linear()
    irrelevant = Parameter(torch.randn(2))
    before = irrelevant.detach().clone()
    opt = Nadam([{"params": [weight, bias], "lr": 1e-3}, {"params": [irrelevant]}], lr=1e-28)
    closure = _loss_closure(opt, weight, bias, data)
    initial = closure().item()
    for _ in range(20):
        closure()
        irrelevant.grad = torch.rand_like(irrelevant)
        opt.step()
    assert closure().item() < initial
    assert torch.equal(irrelevant.detach(), before)


# --- step -------------------------------------------------------------------------------------
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("scheduler", [None, "StepLR", "ReduceLROnPlateau"])
def test_the_loss_goes_down(contiguous, scheduler):
    weight, bias, data = _linear(contiguous=contiguous)
    opt = Nadam([weight, bias], lr=0.01)
    schedulers = {
        None: [],
        "StepLR": [StepLR(opt, gamma=0.9, step_size=10)],
        "ReduceLROnPlateau": [ReduceLROnPlateau(opt)],
    }[scheduler]
    closure = _loss_closure(opt, weight, bias, data)
    initial = closure().item()
    for _ in range(20):
        loss = opt.step(closure)
        for sched in schedulers:
            sched.step(loss.item()) if isinstance(sched, ReduceLROnPlateau) else sched.step()
    assert closure().item() < initial


def test_param_groups_with_an_lr_scheduler_go_the_right_way():
    weight, bias, data = _linear()
    opt = Nadam([{"params": [weight]}, {"params": [bias], "lr": 0.01}])
    schedulers = [StepLR(opt, gamma=0.9, step_size=10), ReduceLROnPlateau(opt)]
    closure = _loss_closure(opt, weight, bias, data)
    initial = closure().item()
    for _ in range(20):
        loss = opt.step(closure)
        schedulers[0].step()
        schedulers[1].step(loss.item())
    assert closure().item() < initial


def test_step_returns_what_the_closure_returns_and_runs_it_with_grad_enabled():
    weight, bias, data = _linear()
    opt = Nadam([weight, bias])
    closure = _loss_closure(opt, weight, bias, data)
    with torch.no_grad():
        loss = opt.step(closure)  # the closure still records its graph
    assert isinstance(loss, torch.Tensor) and loss.grad_fn is not None
    assert opt.step(lambda: 7) == 7 and opt.iterations == 2
    assert opt.step() is None


def test_a_step_without_gradients_or_with_zero_gradients_leaves_parameters_alone():
    frozen = [torch.randn(2, 3) for _ in range(2)]  # requires_grad=False: accepted, never moved
    before = [t.clone() for t in frozen]
    opt = Nadam(frozen)
    assert torch.equal(opt.step(lambda: torch.tensor([1.0])), torch.tensor([1.0]))
    assert all(map(torch.equal, frozen, before)) and opt.iterations == 0
    param = torch.randn(5, 1, requires_grad=True)
    start = param.detach().clone()
    opt = Nadam([param])
    param.grad = torch.zeros_like(param)
    opt.step()
    assert torch.equal(param.detach(), start) and opt.iterations == 1


def test_zero_size_and_zero_dim_parameters_step_beside_the_others():
    weight, bias, data = _linear()
    empty = torch.empty(0, 3, requires_grad=True)
    scalar = torch.empty((), requires_grad=True)
    with torch.no_grad():
        scalar.fill_(0.5)
    opt = Nadam([weight, bias, empty, scalar])
    reference, ref_weight, ref_bias, ref_closure = _twin(weight, bias, data)
    closure = _loss_closure(opt, weight, bias, data)
    for _ in range(3):
        closure()
        empty.grad = torch.empty(0, 3)
        scalar.grad = torch.tensor(0.25)
        opt.step()
        reference.step(ref_closure)
    assert torch.equal(weight, ref_weight) and torch.equal(bias, ref_bias)
    assert opt.state[empty]["m"].shape == (0, 3) and float(scalar.detach()) < 0.5


def test_a_tensor_lr_can_be_changed_in_place_and_steps_like_the_float():
    weight, bias, data = _linear()
    lr = torch.tensor(1e-3)
    opt = Nadam([weight, bias], lr=lr)
    reference, ref_weight, ref_bias, ref_closure = _twin(weight, bias, data)
    closure = _loss_closure(opt, weight, bias, data)
    for step in range(4):
        if step == 2:
            lr.fill_(0.01)  # the group holds this tensor: a change shows in the next step
            reference.param_groups[0]["lr"] = float(lr)
        opt.step(closure)
        reference.step(ref_closure)
        assert torch.equal(weight, ref_weight) and torch.equal(bias, ref_bias)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(set_to_none):
    weight, bias, data = _linear()
    opt = Nadam([weight, bias])
    _loss_closure(opt, weight, bias, data)()
    grad = weight.grad
    opt.zero_grad(set_to_none=set_to_none)
    if set_to_none:
        assert weight.grad is None and bias.grad is None
    else:
        assert weight.grad is grad and not weight.grad.any() and not bias.grad.any()


# --- hooks ------------------------------------------------------------------------------------
def test_step_hooks_run_in_order_and_can_be_removed():
    calls = []
    opt = Nadam([torch.tensor([1.0, 1.0])])
    other = torch.optim.SGD([torch.tensor([1.0])])
    handles = [
        register_optimizer_step_pre_hook(lambda *_: calls.append("global pre")),
        register_optimizer_step_post_hook(lambda *_: calls.append("global post")),
        opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", o))),
        opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", o))),
    ]
    try:
        opt.step()
        other.step()
    finally:
        for handle in handles:
            handle.remove()
    assert calls == ["global pre", ("pre", opt), ("post", opt), "global post",
                     "global pre", "global post"]
    opt.step()
    assert len(calls) == 6


def test_a_step_pre_hook_may_set_the_gradients():
    p = Parameter(torch.ones(3))
    opt = Nadam([p])
    opt.register_step_pre_hook(lambda o, args, kwargs: setattr(p, "grad", torch.ones(3)))
    opt.step()
    assert opt.iterations == 1 and float(p.detach()[0]) < 1.0


def test_state_dict_pre_and_post_hooks():
    p = torch.rand(2, 3, requires_grad=True)
    opt = Nadam([p])

    def post_hook(optimizer, state_dict):
        state_dict["saw_test"] = state_dict["state"].pop("test", None) == 1
        return state_dict

    opt.register_state_dict_post_hook(post_hook)
    assert opt.state_dict()["saw_test"] is False
    opt.register_state_dict_pre_hook(lambda o: o.state.__setitem__("test", 1))
    state_dict = opt.state_dict()
    assert state_dict["saw_test"] is True and "test" not in state_dict["state"]
    p.grad = torch.ones(2, 3)
    opt.step()  # a non-parameter entry in `state` is no obstacle to stepping
    assert opt.state["test"] == 1 and opt.iterations == 1


def test_load_state_dict_pre_hooks_run_in_order_and_may_return_a_new_dict():
    p = torch.rand(2, 3, requires_grad=True)
    opt = Nadam([p])
    state_dict = opt.state_dict()

    def set_lr(optimizer, loaded):
        loaded["param_groups"][0]["lr"] = 0.002

    def replace(optimizer, loaded):
        new = copy.deepcopy(loaded)
        new["param_groups"][0]["lr"] = 0.003
        return new

    opt.register_load_state_dict_pre_hook(set_lr)
    opt.load_state_dict(state_dict)
    assert opt.param_groups[0]["lr"] == 0.002
    opt.register_load_state_dict_pre_hook(replace, prepend=True)
    opt.load_state_dict(state_dict)
    assert opt.param_groups[0]["lr"] == 0.002  # set_lr runs last, on replace's dict


def test_our_checks_see_what_the_pre_hooks_made():
    # A pre-hook may repair (or break) a state dict: the checks run after it.
    opt, weight, bias, _ = _stepped()
    state_dict = copy.deepcopy(opt.state_dict())
    state_dict["param_groups"][0]["betas"] = (2.0, 0.999)
    fix = opt.register_load_state_dict_pre_hook(
        lambda o, loaded: loaded["param_groups"][0].__setitem__("betas", (0.9, 0.999))
    )
    opt.load_state_dict(state_dict)
    fix.remove()
    opt.register_load_state_dict_pre_hook(
        lambda o, loaded: loaded["param_groups"][0].__setitem__("lr", -1.0)
    )
    with pytest.raises(ValueError, match=r"loaded param_groups\[0\]: .*\blr\b"):
        opt.load_state_dict(opt.state_dict())


@pytest.mark.parametrize("with_pre_hook", [False, True])
def test_load_state_dict_post_hook_may_add_non_parameter_state(with_pre_hook):
    opt, weight, bias, data = _stepped()

    def replace(optimizer, loaded):
        new = copy.deepcopy(loaded)
        new["param_groups"][0]["lr"] = 0.003
        return new

    def post_hook(optimizer):
        optimizer.state["pre_hook_ran"] = optimizer.param_groups[0]["lr"] == 0.003
        optimizer.state["loaded"] = True

    if with_pre_hook:
        opt.register_load_state_dict_pre_hook(replace)
    opt.register_load_state_dict_post_hook(post_hook)
    opt.load_state_dict(opt.state_dict())
    assert opt.state["loaded"] is True and opt.state["pre_hook_ran"] is with_pre_hook
    _loss_closure(opt, weight, bias, data)()
    opt.step()
    assert opt.iterations == 4
    saved = opt.state_dict()
    assert saved["state"]["loaded"] is True
    opt.load_state_dict(saved)  # and such a state loads again
    assert opt.state["loaded"] is True and opt.iterations == 4


# --- state and state_dict ---------------------------------------------------------------------
def test_state_is_a_defaultdict_and_not_empty_after_a_step():
    model = torch.nn.Linear(5, 5)
    opt = Nadam(model.parameters())
    assert isinstance(opt.state, dict) and opt.state.default_factory is dict
    model(torch.rand(2, 5)).sum().backward()
    opt.step()
    assert all(len(entry) > 0 for entry in opt.state.values())
    assert set(opt.state[model.weight]) == {"m", "v", "round"}
    assert set(opt.state["nadam"]) == {"iterations", "momentum_cache"}


@pytest.mark.parametrize("named_first", [False, True], ids=["plain", "named"])
@pytest.mark.parametrize("named_second", [False, True], ids=["plain", "named"])
def test_state_dict_is_deterministic_and_loading_it_continues_the_same_run(
    named_first, named_second
):
    def params(weight, bias):
        return [("name0", weight), ("name1", bias)] if named_second else [weight, bias]

    weight, bias, data = _linear()
    opt = Nadam([("name0", weight), ("name1", bias)] if named_first else [weight, bias])
    closure = _loss_closure(opt, weight, bias, data)
    for _ in range(10):
        opt.step(closure)
    twin, weight_c, bias_c, closure_c = _twin(weight, bias, data, params)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(10):
        opt.step(closure)
        twin.step(closure_c)
        assert torch.equal(weight, weight_c) and torch.equal(bias, bias_c)

    def without_names(state_dict):
        state_dict = copy.deepcopy(state_dict)
        for group in state_dict["param_groups"]:
            group.pop("param_names", None)
        return state_dict

    assert _same(without_names(opt.state_dict()), without_names(twin.state_dict()))
    if named_first or named_second:
        assert twin.state_dict()["param_groups"][0]["param_names"] == ["name0", "name1"]
    # Repeated parameters get the same ids in the state dict.
    twin.param_groups.extend(twin.param_groups)
    assert _same(without_names(opt.state_dict())["param_groups"][-1],
                 without_names(twin.state_dict())["param_groups"][-1])


def test_save_and_load_with_weights_only_and_pickle_give_an_equal_state_dict():
    opt, *_ = _stepped(steps=3, decay=0.01, clipnorm=1.0)
    state_dict = opt.state_dict()
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    for weights_only in (False, True):
        buffer.seek(0)
        assert _same(torch.load(buffer, weights_only=weights_only), state_dict)
    assert _same(pickle.loads(pickle.dumps(state_dict)), state_dict)
    assert _same(copy.deepcopy(state_dict), state_dict)


def test_loading_copies_the_state_so_the_dict_and_its_source_stay_as_they_were():
    opt, weight, bias, data = _stepped()
    state_dict = opt.state_dict()
    snapshot = copy.deepcopy(state_dict)
    twin, weight_c, bias_c, closure_c = _twin(weight, bias, data)
    twin.load_state_dict(state_dict)
    for _ in range(3):
        twin.step(closure_c)
    assert _same(state_dict, snapshot)  # torch's own optimizers would share these tensors
    assert opt.iterations == 3 and twin.iterations == 6


def test_deepcopy_and_pickle_of_the_optimizer_continue_the_same_run():
    opt, weight, bias, data = _stepped()
    copied = copy.deepcopy(opt)

    def public(obj):
        return {name for name in vars(obj) if not name.startswith("_")}

    assert public(copied) == public(opt)
    weight_c, bias_c = copied.param_groups[0]["params"]
    assert weight_c is not weight and torch.equal(weight_c, weight)
    pickled = pickle.loads(pickle.dumps(opt))
    weight_p, bias_p = pickled.param_groups[0]["params"]
    closures = [_loss_closure(o, w, b, data) for o, w, b in
                ((opt, weight, bias), (copied, weight_c, bias_c), (pickled, weight_p, bias_p))]
    for _ in range(3):
        for optimizer, closure in zip((opt, copied, pickled), closures, strict=True):
            optimizer.step(closure)
    for other in (weight_c, weight_p):
        assert torch.equal(other, weight)
    assert copied.iterations == pickled.iterations == opt.iterations == 6


def test_an_older_state_dict_without_our_newer_settings_gets_the_defaults():
    opt, weight, bias, data = _stepped(lr=0.01)
    state_dict = copy.deepcopy(opt.state_dict())
    for group in state_dict["param_groups"]:
        for name in ("schedule_decay", "decay", "clipnorm", "clipvalue", "global_clipnorm"):
            del group[name]
    twin, weight_c, bias_c, closure_c = _twin(weight, bias, data)
    twin.load_state_dict(state_dict)
    assert set(twin.param_groups[0]) == {"params", *OUR_SETTINGS}
    assert twin.param_groups[0]["lr"] == 0.01
    closure = _loss_closure(opt, weight, bias, data)
    for _ in range(3):
        opt.step(closure)
        twin.step(closure_c)
    assert torch.equal(weight, weight_c) and torch.equal(bias, bias_c)


def test_iterations_saved_as_a_python_int_loads_like_the_tensor():
    # torch's optimizers accept a `step` that is not a tensor; our counter is `iterations`.
    opt, weight, bias, data = _stepped()
    state_dict = copy.deepcopy(opt.state_dict())
    state_dict["state"]["nadam"]["iterations"] = 3
    twin, weight_c, bias_c, closure_c = _twin(weight, bias, data)
    twin.load_state_dict(state_dict)
    assert twin.state["nadam"]["iterations"].dtype == torch.int64
    opt.step(_loss_closure(opt, weight, bias, data))
    twin.step(closure_c)
    assert torch.equal(weight, weight_c) and twin.iterations == 4


def test_entries_that_are_not_about_a_parameter_load_as_they_are():
    opt, weight, bias, data = _stepped()
    state_dict = copy.deepcopy(opt.state_dict())
    state_dict["state"]["epoch"] = 3
    state_dict["state"]["history"] = [1.0, 0.5]
    state_dict["state"][7] = {"unrelated": torch.ones(1)}  # an id of no parameter of ours
    twin, weight_c, bias_c, closure_c = _twin(weight, bias, data)
    twin.load_state_dict(state_dict)
    assert twin.state["epoch"] == 3 and twin.state["history"] == [1.0, 0.5]
    assert torch.equal(twin.state[7]["unrelated"], torch.ones(1))
    twin.step(closure_c)
    saved = twin.state_dict()
    assert saved["state"]["epoch"] == 3 and twin.iterations == 4


def test_a_state_dict_saved_before_any_step_loads():
    weight, bias, data = _linear()
    fresh = Nadam([weight, bias]).state_dict()
    assert fresh["state"] == {}
    opt, *_ = _stepped()
    opt.load_state_dict(fresh)
    assert opt.iterations == 0 and opt.momentum_cache is None and opt.get_weights() == []


# --- load_state_dict checks: everything before anything changes ------------------------------
def _breakages():
    def set_in(path, value):
        def breaker(state_dict):
            target = state_dict
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
        return breaker

    def drop(path):
        def breaker(state_dict):
            target = state_dict
            for key in path[:-1]:
                target = target[key]
            del target[path[-1]]
        return breaker

    return [
        ("parameter state not a dict", set_in(("state", 1), 3), r"must be a dict, got int"),
        ("no round", drop(("state", 0, "round")), r"no non-negative integer 'round'"),
        ("negative round", set_in(("state", 0, "round"), -1), r"'round'"),
        ("m of another shape", set_in(("state", 0, "m"), torch.ones(2)),
         r"has m of shape \(2,\), but the parameter has shape \(10, 5\)"),
        ("no v", drop(("state", 1, "v")), r"has v of shape None"),
        ("schedule not a dict", set_in(("state", "nadam"), 5), r"state\['nadam'\] must be a dict"),
        ("no iterations", drop(("state", "nadam", "iterations")), r"'iterations'\] must be a "
         "non-negative integer"),
        ("negative iterations", set_in(("state", "nadam", "iterations"), torch.tensor(-1)),
         r"'iterations'\] must be a non-negative integer"),
        ("float iterations", set_in(("state", "nadam", "iterations"), torch.tensor(3.0)),
         r"'iterations'\] must be a non-negative integer"),
        ("bool iterations", set_in(("state", "nadam", "iterations"), True),
         r"'iterations'\] must be a non-negative integer"),
        ("cache above 1", set_in(("state", "nadam", "momentum_cache"), torch.tensor(1.5)),
         r"'momentum_cache'\] must be a one-element float16, float32 or float64 tensor in"),
        ("NaN cache", set_in(("state", "nadam", "momentum_cache"), torch.tensor(float("nan"))),
         r"'momentum_cache'\]"),
        ("cache a float", set_in(("state", "nadam", "momentum_cache"), 0.5), r"'momentum_cache'\]"),
        ("slots without a cache", drop(("state", "nadam", "momentum_cache")),
         r"slots for 2 parameter\(s\) but no state\['nadam'\]\['momentum_cache'\]"),
        ("bad lr", set_in(("param_groups", 0, "lr"), -0.1), r"loaded param_groups\[0\]: .*\blr\b"),
        ("bad betas", set_in(("param_groups", 0, "betas"), (2.0, 0.9)),
         r"loaded param_groups\[0\]: .*betas\[0\]"),
        ("too few groups", set_in(("param_groups",), []),
         r"different number of parameter groups"),  # torch's own check, also before changes
    ]


@pytest.mark.parametrize("case", _breakages(), ids=lambda case: case[0])
def test_a_broken_state_dict_raises_and_changes_nothing(case):
    _, breaker, message = case
    opt, weight, bias, data = _stepped()
    source, *_ = _stepped(steps=5, seed=1, lr=0.05)
    broken = copy.deepcopy(source.state_dict())
    breaker(broken)
    before_state = copy.deepcopy(opt.state_dict())
    before_groups = [dict(group) for group in opt.param_groups]
    before_params = [weight.detach().clone(), bias.detach().clone()]
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(broken)
    assert _same(opt.state_dict(), before_state)
    assert len(opt.param_groups) == len(before_groups)
    for group, before in zip(opt.param_groups, before_groups, strict=True):
        assert group.keys() == before.keys()
        assert all(group[k] is before[k] or group[k] == before[k] for k in group)
    assert torch.equal(weight, before_params[0]) and torch.equal(bias, before_params[1])
    opt.step(_loss_closure(opt, weight, bias, data))  # and it still steps as before
    assert opt.iterations == 4


def test_loaded_groups_must_share_the_momentum_schedule():
    p, q = Parameter(torch.ones(2)), Parameter(torch.ones(3))
    opt = Nadam([{"params": [p]}, {"params": [q]}])
    state_dict = copy.deepcopy(opt.state_dict())
    state_dict["param_groups"][1]["betas"] = (0.8, 0.999)
    with pytest.raises(ValueError, match="momentum schedule"):
        opt.load_state_dict(state_dict)
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)


# --- schedulers that drive betas --------------------------------------------------------------
def test_cyclic_lr_cycles_beta_1_in_every_group_together():
    params = [Parameter(torch.ones(2)), Parameter(torch.ones(3))]
    opt = Nadam([{"params": params[:1]}, {"params": params[1:]}])
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=1e-3, max_lr=1e-2, step_size_up=2, cycle_momentum=True,
        base_momentum=0.8, max_momentum=0.9,
    )
    seen = set()
    for _ in range(4):
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        scheduler.step()
        assert opt.param_groups[0]["betas"] == opt.param_groups[1]["betas"]
        seen.add(opt.param_groups[0]["betas"][0])
    assert len(seen) > 1 and opt.iterations == 4


# --- sparse gradients: Keras's rule ----------------------------------------------------------
def _rosenbrock(xy):
    x, y = xy
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def _rosenbrock_grad(xy):
    x, y = xy
    return torch.stack((-400 * x * (y - x**2) - 2 * (1 - x), 200 * (y - x**2)))


def test_rosenbrock_with_uncoalesced_sparse_gradients_follows_keras_sparse_rule():
    # Coordinate descent with one row a step, given as two uncoalesced entries: equal, bit for
    # bit, to the Keras face with IndexedSlices; not equal to the dense step of the same values
    # (Keras decays m and v in rows without gradient, and leaves those rows of x alone).
    ours = Parameter(torch.tensor([1.5, 1.5], dtype=torch.float64))
    keras_var = Parameter(ours.detach().clone())
    dense = Parameter(ours.detach().clone())
    opt, keras_face = Nadam([ours], lr=0.01), KerasFaceNadam(learning_rate=0.01)
    dense_opt = Nadam([dense], lr=0.01)
    start = _rosenbrock(ours.detach())
    for step in range(200):
        row = step % 2
        full = _rosenbrock_grad(ours.detach())[row]
        values = torch.stack((full / 4, full - full / 4))
        indices = torch.tensor([row, row])
        ours.grad = torch.sparse_coo_tensor(indices.reshape(1, -1), values, (2,),
                                            check_invariants=True)
        opt.step()
        keras_face.apply_gradients([(IndexedSlices(values, indices), keras_var)])
        dense_grad = torch.zeros(2, dtype=torch.float64)
        dense_grad[row] = _rosenbrock_grad(dense.detach())[row]
        dense.grad = dense_grad
        dense_opt.step()
        assert torch.equal(ours.detach(), keras_var.detach())
    assert _rosenbrock(ours.detach()) < start
    assert not torch.equal(ours.detach(), dense.detach())


# --- torch.compile ----------------------------------------------------------------------------
# Dynamo cannot trace the step (NumPy views, numba): it must break the graph around it and run
# it eagerly, never fail or trace NumPy calls into tensor ops.
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_step_inside_a_compiled_function_runs_eagerly_with_the_same_result():
    weight, bias, data = _linear()
    opt = Nadam([weight, bias])
    reference, ref_weight, ref_bias, ref_closure = _twin(weight, bias, data)
    closure = _loss_closure(opt, weight, bias, data)

    @torch.compile(backend="eager")
    def compiled_step():
        opt.step()

    for _ in range(3):
        closure()
        compiled_step()
        reference.step(ref_closure)
    assert torch.equal(weight, ref_weight) and torch.equal(bias, ref_bias)
    assert opt.iterations == 3


# --- devices ----------------------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_a_cpu_state_dict_loads_onto_cuda_parameters_and_continues_the_run():
    opt, weight, bias, data = _stepped()
    state_dict = copy.deepcopy(opt.state_dict())
    snapshot = copy.deepcopy(state_dict)
    weight_c, bias_c = (Parameter(t.detach().cuda()) for t in (weight, bias))
    twin = Nadam([weight_c, bias_c])
    twin.load_state_dict(state_dict)
    assert _same(state_dict, snapshot)
    assert twin.state[weight_c]["m"].is_cuda and not twin.state["nadam"]["iterations"].is_cuda
    closure = _loss_closure(opt, weight, bias, data)
    closure_c = _loss_closure(twin, weight_c, bias_c, data.cuda())
    for _ in range(5):
        opt.step(closure)
        twin.step(closure_c)
    assert torch.allclose(weight_c.cpu(), weight, rtol=1e-5, atol=1e-6)
    # The other way: a checkpoint mapped to CUDA loads onto CPU parameters.
    buffer = io.BytesIO()
    torch.save(twin.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, map_location="cuda", weights_only=True)
    again = Nadam([Parameter(weight.detach().clone()), Parameter(bias.detach().clone())])
    again.load_state_dict(loaded)
    assert not again.state["nadam"]["momentum_cache"].is_cuda

