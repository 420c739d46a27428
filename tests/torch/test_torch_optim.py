"""`nadam.torch.Nadam`, the torch.optim face: the same steps as `nadam.Nadam`, bit for bit.

The Keras face (`nadam.Nadam` over the same tensors) is the reference here; its agreement with
Keras is tested in test_torch_oracle.py and tests/conformance.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from torch_helpers import (
    DTYPES,
    PATHS,
    assert_all_bit_equal,
    assert_bit_equal,
    coo_rows,
    numpy,
    on_path,
    parameter,
    random_array,
    random_rows,
    tensor,
)

from nadam import Nadam as KerasFaceNadam
from nadam import clipping
from nadam.backends.base import DenseGrad
from nadam.backends.torch import TORCH_BACKEND
from nadam.torch import Nadam

SHAPES = [(3,), (2, 4), ()]


def _grads(rng, params, dtype):
    return [tensor(random_array(rng, p.shape, dtype)) for p in params]


def _set_grads(params, grads):
    for param, grad in zip(params, grads, strict=True):
        param.grad = None if grad is None else grad.clone()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "settings",
    [{}, {"clipnorm": 0.3, "decay": 0.05}, {"clipvalue": 0.02}, {"global_clipnorm": 0.5}],
    ids=["defaults", "clipnorm-decay", "clipvalue", "global_clipnorm"],
)
def test_one_group_equals_the_keras_face_dense_and_sparse(dtype, path, settings):
    rng = np.random.default_rng(0)
    arrays = [random_array(rng, s, dtype) for s in [*SHAPES, (7, 2)]]
    ours, theirs = [parameter(a) for a in arrays], [parameter(a) for a in arrays]
    opt = Nadam(ours, lr=0.01, betas=(0.8, 0.99), eps=1e-6, **settings)
    reference = KerasFaceNadam(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-6,
                               **settings)
    for step in range(20):
        grads = _grads(rng, ours, dtype)
        if step % 3:
            values, indices = random_rows(rng, 7, (2,), dtype)
            grads[-1] = coo_rows(values, indices, (7, 2))
        _set_grads(ours, grads)
        with on_path(path):
            opt.step()
            reference.apply_gradients(zip(grads, theirs, strict=True))
    assert_all_bit_equal(ours, theirs, "parameters")
    assert_all_bit_equal(opt.get_weights(), reference.get_weights(), "get_weights()")
    assert opt.iterations == 20
    assert opt.momentum_cache == float(reference.momentum_cache.numpy())


def test_param_groups_have_their_own_lr_beta_2_eps_decay_and_clipping():
    # Each group equals a Keras-face optimizer with that group's settings: iterations and the
    # momentum cache advance once per step for all groups alike.
    rng = np.random.default_rng(1)
    first = [parameter(random_array(rng, s, np.float32)) for s in SHAPES]
    second = [parameter(random_array(rng, s, np.float32)) for s in SHAPES]
    settings = {"lr": 0.02, "betas": (0.9, 0.95), "eps": 1e-4, "decay": 0.1, "clipvalue": 0.05}
    opt = Nadam([{"params": first}, {"params": second, **settings}])
    ref_first = KerasFaceNadam()
    ref_second = KerasFaceNadam(learning_rate=0.02, beta_2=0.95, epsilon=1e-4, decay=0.1,
                                clipvalue=0.05)
    copies = [[parameter(numpy(p)) for p in group] for group in (first, second)]
    for _ in range(10):
        grads = _grads(rng, first + second, np.float32)
        _set_grads(first + second, grads)
        opt.step()
        ref_first.apply_gradients(zip(grads[:3], copies[0], strict=True))
        ref_second.apply_gradients(zip(grads[3:], copies[1], strict=True))
    assert_all_bit_equal(first + second, copies[0] + copies[1], "parameters")
    for group, ref, params in ((first, ref_first, copies[0]), (second, ref_second, copies[1])):
        for ours, theirs in zip(group, params, strict=True):
            for slot in ("m", "v"):
                assert_bit_equal(opt.state[ours][slot], ref.get_slot(theirs, slot), slot)
    assert opt.momentum_cache == float(ref_first.momentum_cache.numpy())


def test_global_clipnorm_is_taken_over_every_group_sharing_the_threshold():
    rng = np.random.default_rng(2)
    params = [parameter(random_array(rng, s, np.float64)) for s in SHAPES]
    copies = [parameter(numpy(p)) for p in params]
    opt = Nadam([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}], global_clipnorm=0.1)
    ref_a, ref_b = KerasFaceNadam(), KerasFaceNadam(learning_rate=0.1)
    for _ in range(5):
        grads = _grads(rng, params, np.float64)
        _set_grads(params, grads)
        opt.step()
        clipped = clipping.clip_by_global_norm(
            [(TORCH_BACKEND, DenseGrad(g)) for g in grads], 0.1
        )
        clipped = [c.array for c in clipped]
        ref_a.apply_gradients(zip(clipped[:2], copies[:2], strict=True))
        ref_b.apply_gradients(zip(clipped[2:], copies[2:], strict=True))
    assert_all_bit_equal(params, copies)


def test_step_with_closure_returns_the_loss_and_zero_grad_clears():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = Nadam(model.parameters())
    data = torch.randn(4, 3)

    def closure():
        opt.zero_grad()
        loss = model(data).pow(2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad
    assert opt.iterations == 1
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    before = [numpy(p) for p in model.parameters()]
    opt.step()  # no gradient at all: nothing moves and the schedule does not advance
    assert opt.iterations == 1
    assert_all_bit_equal(list(model.parameters()), before)


def test_parameters_without_gradients_are_skipped_and_get_state_when_they_get_one():
    a, b = parameter(np.ones(2, np.float32)), parameter(np.ones(3, np.float32))
    frozen = torch.ones(2)  # requires_grad=False: torch.optim accepts it
    opt = Nadam([a, b, frozen])
    a.grad = torch.ones(2)
    opt.step()
    assert b not in opt.state
    assert [w.shape for w in opt.get_weights()] == [(), (), (2,), (2,)]
    b.grad = torch.ones(3)
    opt.step()
    assert [w.shape for w in opt.get_weights()] == [(), (), (2,), (2,), (3,), (3,)]  # as Keras
    assert torch.equal(frozen, torch.ones(2))


def test_a_group_added_later_joins_the_global_schedule_as_a_late_keras_variable():
    rng = np.random.default_rng(3)
    early, late = parameter(random_array(rng, (3,), np.float32)), parameter(
        random_array(rng, (2, 2), np.float32)
    )
    ref_early, ref_late = parameter(numpy(early)), parameter(numpy(late))
    opt, ref = Nadam([early]), KerasFaceNadam()
    for step in range(8):
        if step == 4:
            opt.add_param_group({"params": [late]})
        grads = _grads(rng, [early, late], np.float32)
        if step < 4:
            grads[1] = None
        _set_grads([early, late], grads)
        opt.step()
        pairs = [(grads[0], ref_early)] + ([(grads[1], ref_late)] if step >= 4 else [])
        ref.apply_gradients(pairs)
    assert_all_bit_equal([early, late], [ref_early, ref_late])
    assert_all_bit_equal(opt.get_weights(), ref.get_weights(), "get_weights()")


def _trained(seed, steps):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    embedding = torch.nn.Embedding(6, 4, sparse=True)
    opt = Nadam([{"params": model.parameters()}, {"params": embedding.parameters(), "lr": 0.01}],
                decay=0.01)
    ids = torch.tensor([1, 3, 1, 5])

    def step():
        opt.zero_grad()
        model(embedding(ids)).pow(2).sum().backward()
        opt.step()

    for _ in range(steps):
        step()
    return model, embedding, opt, step


def test_state_dict_round_trip_through_torch_save_gives_identical_subsequent_steps():
    model, embedding, opt, step = _trained(0, 5)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert set(saved["state"]) == {"nadam", 0, 1, 2, 3, 4}
    assert set(saved["state"][0]) == {"m", "v", "round"}
    assert saved["state"]["nadam"]["iterations"] == 5

    model2, embedding2 = copy.deepcopy(model), copy.deepcopy(embedding)
    opt2 = Nadam([{"params": model2.parameters()}, {"params": embedding2.parameters()}])
    opt2.load_state_dict(saved)
    assert opt2.param_groups[1]["lr"] == 0.01 and opt2.param_groups[0]["decay"] == 0.01
    ids = torch.tensor([1, 3, 1, 5])
    for _ in range(5):
        step()
        opt2.zero_grad()
        model2(embedding2(ids)).pow(2).sum().backward()
        opt2.step()
    params = [*model.parameters(), *embedding.parameters()]
    params2 = [*model2.parameters(), *embedding2.parameters()]
    assert_all_bit_equal(params2, params, "parameters")
    assert_all_bit_equal(opt2.get_weights(), opt.get_weights(), "get_weights()")


def test_one_state_dict_can_seed_two_optimizers_without_sharing_state():
    model, _, opt, _ = _trained(1, 3)
    state = opt.state_dict()
    clones = [copy.deepcopy(model) for _ in range(2)]
    optimizers = [Nadam(c.parameters()) for c in clones]
    for optimizer in optimizers:
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(6, 4))]})
        optimizer.load_state_dict(state)
    for clone, optimizer in zip(clones, optimizers, strict=True):
        for p in clone.parameters():
            p.grad = torch.ones_like(p)
        optimizer.step()
    assert_all_bit_equal(list(clones[0].parameters()), list(clones[1].parameters()))
    assert_all_bit_equal(optimizers[0].get_weights(), optimizers[1].get_weights())
    assert opt.iterations == 3 and int(state["state"]["nadam"]["iterations"]) == 3


def test_lr_schedulers_drive_lr_like_a_keras_learning_rate_callable():
    rng = np.random.default_rng(4)
    params = [parameter(random_array(rng, s, np.float32)) for s in SHAPES]
    copies = [parameter(numpy(p)) for p in params]
    opt = Nadam(params, lr=0.05)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    current = {"lr": 0.05}
    ref = KerasFaceNadam(learning_rate=lambda: current["lr"])
    for _ in range(7):
        grads = _grads(rng, params, np.float32)
        _set_grads(params, grads)
        current["lr"] = opt.param_groups[0]["lr"]
        opt.step()
        ref.apply_gradients(zip(grads, copies, strict=True))
        scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**3)
    assert_all_bit_equal(params, copies)


def test_one_cycle_lr_cycles_the_momentum_of_every_group_together():
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    opt = Nadam([{"params": params[:1]}, {"params": params[1:]}])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=6)
    betas = []
    for _ in range(5):
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        scheduler.step()
        betas.append(opt.param_groups[0]["betas"][0])
    assert len(set(betas)) > 1 and opt.iterations == 5


def test_a_tensor_lr_equals_the_same_float():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    first, second = Nadam([a], lr=torch.tensor(0.003)), Nadam([b], lr=0.003)
    for _ in range(3):
        a.grad = b.grad = torch.linspace(-1, 1, 3)
        first.step()
        second.step()
    assert_bit_equal(a, b)


def test_grad_scaler_skipped_steps_do_not_advance_the_schedule():
    torch.manual_seed(5)
    model = torch.nn.Linear(3, 2)
    reference_model = copy.deepcopy(model)
    opt, ref = Nadam(model.parameters()), Nadam(reference_model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    data = torch.randn(4, 3)
    for step in range(4):
        overflow = step == 1
        opt.zero_grad()
        loss = model(data).pow(2).mean() * (float("inf") if overflow else 1.0)
        scaler.scale(loss).backward()
        cache_before = opt.momentum_cache
        scaler.step(opt)
        scaler.update()
        if overflow:
            assert opt.iterations == 1 and opt.momentum_cache == cache_before
            continue
        ref.zero_grad()
        reference_model(data).pow(2).mean().backward()
        ref.step()
    # Scaling by powers of two is exact: the scaled run equals the unscaled one bit for bit.
    assert opt.iterations == ref.iterations == 3
    assert scaler.get_scale() == 2.0**9
    assert_all_bit_equal(list(model.parameters()), list(reference_model.parameters()))
    assert_all_bit_equal(opt.get_weights(), ref.get_weights())


def test_keras_layout_get_weights_and_continuing_from_a_keras_face_state():
    rng = np.random.default_rng(6)
    params = [parameter(random_array(rng, s, np.float32)) for s in SHAPES]
    keras_face = KerasFaceNadam()
    for _ in range(4):
        keras_face.apply_gradients(zip(_grads(rng, params, np.float32), params, strict=True))
    clones = [parameter(numpy(p)) for p in params]
    opt = Nadam(clones)
    assert opt.get_weights() == []
    opt.build()
    opt.set_weights(keras_face.get_weights())
    assert opt.iterations == 4
    assert_all_bit_equal(opt.get_weights(), keras_face.get_weights())
    for _ in range(4):
        grads = _grads(rng, params, np.float32)
        keras_face.apply_gradients(zip(grads, params, strict=True))
        _set_grads(clones, grads)
        opt.step()
    assert_all_bit_equal(clones, params)
    assert_all_bit_equal(opt.get_weights(), keras_face.get_weights())


def test_momentum_cache_has_the_dtype_of_the_first_parameter_updated():
    a = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.ones(2, dtype=torch.float32))
    opt = Nadam([a, b])
    b.grad = torch.ones(2)
    opt.step()
    assert opt.state["nadam"]["momentum_cache"].dtype == torch.float32
    a.grad = torch.ones(2, dtype=torch.float64)
    opt.step()
    assert [w.dtype for w in opt.get_weights()] == [np.int64] + [np.float32] * 3 + [
        np.float64] * 2


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_torch_face_on_cuda_equals_the_cpu_run():
    rng = np.random.default_rng(7)
    arrays = [random_array(rng, s, np.float32) for s in SHAPES]
    gpu = [torch.nn.Parameter(tensor(a).cuda()) for a in arrays]
    cpu = [parameter(a) for a in arrays]
    opt_gpu, opt_cpu = Nadam(gpu), Nadam(cpu)
    for _ in range(10):
        grads = _grads(rng, cpu, np.float32)
        _set_grads(cpu, grads)
        _set_grads(gpu, [g.cuda() for g in grads])
        opt_gpu.step()
        opt_cpu.step()
    assert all(opt_gpu.state[p]["m"].is_cuda for p in gpu)
    assert_all_bit_equal(gpu, cpu)
