"""`nadam.Nadam` on torch tensors: in place, Keras layout, and bit-identical to the NumPy path.

Every torch run here is compared with the same run on `nadam.Variable`s over NumPy arrays (whose
agreement with Keras is established by tests/conformance), bit for bit, on both kernel paths.
"""

from __future__ import annotations

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

import nadam
from nadam import IndexedSlices, Nadam, Variable
from nadam.backends import backend_for
from nadam.backends.base import SparseGrad
from nadam.backends.torch import TORCH_BACKEND
from nadam.kernels import reference, torch_foreach
from nadam.nadam import nadam_scalars

SHAPES = [(), (3, 4), (50,), (2, 3, 2)]
CLIPS = [{}, {"clipnorm": 0.5}, {"clipvalue": 0.01}, {"global_clipnorm": 1.0}]


def _twin_run(dtype, path, steps, rng, sparse_every=0, **kwargs):
    """The same random steps on torch parameters and on NumPy Variables; both end states."""
    arrays = [random_array(rng, s, dtype) for s in [*SHAPES, (6, 3)]]
    params = [parameter(a) for a in arrays]
    variables = [Variable(a) for a in arrays]
    ours_torch, ours_numpy = Nadam(**kwargs), Nadam(**kwargs)
    for step in range(steps):
        grads = [random_array(rng, a.shape, dtype) for a in arrays]
        torch_grads = [tensor(g) for g in grads]
        if sparse_every and step % sparse_every == 0:
            values, indices = random_rows(rng, 6, (3,), dtype)
            grads[-1] = IndexedSlices(values, indices, (6, 3))
            # Alternate the two torch spellings of the same sparse gradient.
            torch_grads[-1] = (
                coo_rows(values, indices, (6, 3)) if step % 2 else
                IndexedSlices(tensor(values), torch.from_numpy(indices), (6, 3))
            )
        with on_path(path):
            ours_torch.apply_gradients(zip(torch_grads, params, strict=True))
            ours_numpy.apply_gradients(zip(grads, variables, strict=True))
    return (params, ours_torch), (variables, ours_numpy)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [*DTYPES, np.float16])
@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: next(iter(c), "none"))
def test_dense_and_sparse_steps_equal_the_numpy_path_bit_for_bit(dtype, path, clip):
    rng = np.random.default_rng(11)
    (params, opt_t), (variables, opt_n) = _twin_run(dtype, path, 25, rng, sparse_every=2, **clip)
    assert_all_bit_equal(params, variables, "parameters")
    assert_all_bit_equal(opt_t.get_weights(), opt_n.get_weights(), "get_weights()")
    assert int(opt_t.iterations.numpy()) == 25


def test_parameters_are_updated_in_place_and_slots_live_beside_them():
    rng = np.random.default_rng(0)
    model = torch.nn.Linear(4, 3).double()
    params = list(model.parameters())
    storage = [(p, p.data_ptr(), p.data) for p in params]
    opt = Nadam(learning_rate=0.01)
    opt.apply_gradients([(tensor(random_array(rng, p.shape, np.float64)), p) for p in params])
    for param, pointer, data in storage:
        assert param.data_ptr() == pointer  # same storage, written in place
        assert param.data.data_ptr() == data.data_ptr()
        assert isinstance(param, torch.nn.Parameter) and param.requires_grad and param.is_leaf
        for slot_name in ("m", "v"):
            slot = opt.get_slot(param, slot_name)
            assert isinstance(slot, torch.Tensor)
            assert (slot.dtype, slot.device, slot.shape) == (param.dtype, param.device, param.shape)
            assert not slot.requires_grad
    assert list(model.parameters())[0] is params[0]


def test_get_weights_is_numpy_in_keras_layout_and_set_weights_round_trips():
    rng = np.random.default_rng(1)
    params = [parameter(random_array(rng, s, np.float32)) for s in [(3,), (2, 2)]]
    opt = Nadam()
    for _ in range(3):
        opt.apply_gradients([(tensor(random_array(rng, p.shape, np.float32)), p) for p in params])
    weights = opt.get_weights()
    assert all(isinstance(w, np.ndarray) for w in weights)
    assert [(w.dtype, w.shape) for w in weights] == [
        (np.int64, ()), (np.float32, ()), (np.float32, (3,)), (np.float32, (2, 2)),
        (np.float32, (3,)), (np.float32, (2, 2)),
    ]
    assert_bit_equal(weights[2], opt.get_slot(params[0], "m"))
    assert_bit_equal(weights[5], opt.get_slot(params[1], "v"))
    # The copies do not alias the slots.
    weights[2][...] = 7
    assert not torch.equal(opt.get_slot(params[0], "m"), torch.full((3,), 7.0))

    # A second optimizer built on copies and loaded with set_weights continues identically.
    clones = [parameter(numpy(p)) for p in params]
    other = Nadam()
    other.build(clones)
    other.set_weights(opt.get_weights())
    for _ in range(3):
        grads = [random_array(rng, p.shape, np.float32) for p in params]
        opt.apply_gradients([(tensor(g), p) for g, p in zip(grads, params, strict=True)])
        other.apply_gradients([(tensor(g), p) for g, p in zip(grads, clones, strict=True)])
    assert_all_bit_equal(clones, params, "parameters")
    assert_all_bit_equal(other.get_weights(), opt.get_weights(), "get_weights()")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_sqrt_is_the_correctly_rounded_numpy_sqrt(dtype):
    # torch's vectorized CPU sqrt differs from IEEE in the last bit on some CPUs; ours must not.
    values = np.random.default_rng(2).random(100_003).astype(dtype)
    assert_bit_equal(TORCH_BACKEND.sqrt(torch.from_numpy(values)), np.sqrt(values))
    transposed = torch.from_numpy(values[:100_000].reshape(100, 1000).copy()).t()
    assert_bit_equal(TORCH_BACKEND.sqrt(transposed), np.sqrt(numpy(transposed)))


def test_as_numpy_view_shares_memory_only_for_contiguous_cpu_tensors():
    t = torch.zeros(2, 3, requires_grad=True)
    view = TORCH_BACKEND.as_numpy_view(t)
    assert isinstance(view, np.ndarray) and view.flags.writeable
    view[1, 2] = 5.0
    assert float(t.detach()[1, 2]) == 5.0
    assert TORCH_BACKEND.as_numpy_view(torch.arange(4)).dtype == np.int64
    assert TORCH_BACKEND.as_numpy_view(t.detach().t()) is None  # not contiguous
    assert TORCH_BACKEND.as_numpy_view(torch.zeros(3, dtype=torch.bfloat16)) is None
    assert TORCH_BACKEND.as_numpy_view(torch.zeros(3).to_sparse()) is None
    assert TORCH_BACKEND.as_numpy_view(torch.zeros(3)._neg_view()) is None
    assert TORCH_BACKEND.as_numpy_view(np.zeros(3)) is None


def test_as_numpy_view_lends_the_same_view_while_the_memory_is_the_same():
    t = torch.zeros(5, requires_grad=True)
    first = TORCH_BACKEND.as_numpy_view(t)
    version = t._version
    again = TORCH_BACKEND.as_numpy_view(t)
    assert again is first  # what lets the fused kernel keep its address table
    assert t._version == version + 1  # every lending still counts as an in-place write
    with torch.no_grad():
        t.data = torch.full((5,), 2.0)  # new storage behind the same Parameter object
    moved = TORCH_BACKEND.as_numpy_view(t)
    assert moved is not first and moved.ctypes.data == t.data_ptr()
    np.testing.assert_array_equal(moved, np.full(5, 2.0, np.float32))
    with torch.no_grad():
        t.data = torch.zeros(2, 3)  # same object, other shape
    assert TORCH_BACKEND.as_numpy_view(t).shape == (2, 3)


@pytest.mark.parametrize("path", PATHS)
def test_a_gradient_with_autograd_history_steps_like_its_detached_values(path):
    # create_graph=True gives gradients that require grad; the step must use their values and
    # record nothing in autograd. Plain gradients are used as they are (no detached copy).
    rng = np.random.default_rng(5)
    start = random_array(rng, (3, 4), np.float32)
    w = torch.nn.Parameter(torch.from_numpy(random_array(rng, (3, 4), np.float32)))
    (graph_grad,) = torch.autograd.grad((w ** 3).sum(), w, create_graph=True)
    assert graph_grad.requires_grad
    p, q = parameter(start), parameter(start)
    with on_path(path):
        Nadam().apply_gradients([(graph_grad, p)])
        Nadam().apply_gradients([(graph_grad.detach().clone(), q)])
    assert_bit_equal(p, numpy(q))
    assert p.is_leaf and p.grad_fn is None and p.requires_grad
    plain = torch.ones(3)
    dense = TORCH_BACKEND.gradient(plain, torch.nn.Parameter(torch.zeros(3)))
    assert dense.array is plain


def test_as_numpy_view_forgets_a_tensor_when_it_is_freed():
    cache = TORCH_BACKEND._views._entries
    t = torch.zeros(3)
    TORCH_BACKEND.as_numpy_view(t)
    key = id(t)
    assert key in cache
    del t
    assert key not in cache


@pytest.mark.parametrize("dtype", DTYPES)
def test_replacing_param_data_between_fused_steps_updates_the_new_memory(dtype):
    # The kernel's address table must follow `param.data = ...`, not keep writing the old
    # storage: compare with the NumPy path stepping a Variable that is reassigned the same way.
    rng = np.random.default_rng(3)
    start, replacement = random_array(rng, (4, 6), dtype), random_array(rng, (4, 6), dtype)
    grads = [random_array(rng, (4, 6), dtype) for _ in range(3)]
    p, w = parameter(start), Variable(start.copy())
    ours, theirs = Nadam(), Nadam()
    for step, g in enumerate(grads):
        if step == 2:
            with torch.no_grad():
                p.data = tensor(replacement.copy())
            w.assign(replacement)
        ours.apply_gradients([(tensor(g), p)])
        theirs.apply_gradients([(g, w)])
    assert_bit_equal(p, w.numpy())
    assert_all_bit_equal(ours.get_weights(), theirs.get_weights())


@pytest.mark.parametrize("path", PATHS)
def test_a_step_between_forward_and_backward_is_caught_by_autograd_as_in_torch(path):
    # The parameter is saved for backward; updating it in place (through torch ops or a NumPy
    # view) must make the stale backward fail rather than silently use new values.
    p = torch.nn.Parameter(torch.ones(4))
    loss = (p * p).sum()
    with on_path(path):
        Nadam().apply_gradients([(torch.ones(4), p)])
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def _foreach_case(seed, dtype):
    """Tensors x, g, m, v of several shapes; the last ones transposed (not contiguous)."""
    rng = np.random.default_rng(seed)
    shapes = [(), (7,), (33, 5), (1000,), (6, 4)]
    case = []
    for absolute in (False, False, False, True):
        arrays = [random_array(rng, s, dtype) for s in shapes]
        tensors = [tensor(np.abs(a) if absolute else a) for a in arrays]
        tensors[-1] = tensors[-1].t()  # foreach falls back to per-tensor ops for these
        case.append(tensors)
    return case


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_foreach_kernel_equals_the_reference_bit_for_bit(dtype):
    # The CUDA fast path, run on the CPU (where _foreach_ ops loop over the tensors).
    s, _ = nadam_scalars(np.dtype(dtype), 4, np.float32(0.2), lr=0.01, beta_2=0.99)
    ours, theirs = _foreach_case(3, dtype), _foreach_case(3, dtype)
    torch_foreach.apply_dense(TORCH_BACKEND, *ours, s)
    reference.apply_dense(TORCH_BACKEND, *theirs, s)
    assert not ours[0][-1].is_contiguous()
    for a, b in zip(ours, theirs, strict=True):
        assert_all_bit_equal(a, b)

    rng = np.random.default_rng(4)
    x, m, v = (tensor(random_array(rng, (6, 3), dtype)) for _ in range(3))
    v = v.abs()
    rows, indices = tensor(random_array(rng, (2, 3), dtype)), torch.tensor([4, 1])
    copies = [t.clone() for t in (x, m, v)]
    torch_foreach.apply_sparse(TORCH_BACKEND, x, rows, indices, m, v, s)
    reference.apply_sparse(TORCH_BACKEND, copies[0], rows, indices, copies[1], copies[2], s)
    assert_all_bit_equal([x, m, v], copies)


def test_device_scalars_are_exact():
    s, _ = nadam_scalars(np.dtype(np.float64), 9, 0.3, lr=0.123456789, beta_1=0.87)
    packed = torch_foreach.device_scalars(s, torch.zeros(1, dtype=torch.float64))
    for ours, theirs in zip(packed, s, strict=True):
        assert ours.dim() == 0 and float(ours) == float(theirs)


def test_fast_path_choice_by_device():
    assert torch_foreach.choose(TORCH_BACKEND, "cuda:0", np.dtype(np.float32)).name == (
        "torch-foreach"
    )
    assert torch_foreach.choose(TORCH_BACKEND, "cpu", np.dtype(np.float32)) is None
    assert torch_foreach.choose(nadam.backends.NUMPY_BACKEND, "cuda:0", np.float32) is None


def test_dedupe_sums_repeats_in_first_occurrence_order_like_the_numpy_backend():
    rng = np.random.default_rng(4)
    for dtype in (np.float16, np.float32, np.float64):
        values, indices = random_rows(rng, 5, (3, 2), dtype)
        ours = TORCH_BACKEND.dedupe(SparseGrad(tensor(values), torch.from_numpy(indices)))
        theirs = nadam.backends.NUMPY_BACKEND.dedupe(SparseGrad(values, indices))
        assert_bit_equal(ours.values, theirs.values)
        assert_bit_equal(ours.indices, theirs.indices)


def test_minimize_with_a_callable_and_with_a_loss_tensor():
    # Keras's docstring example: lr=0.2, x=10, loss = x**2 / 2, one step gives 9.78871.
    x = torch.nn.Parameter(torch.tensor(10.0))
    opt = Nadam(learning_rate=0.2)
    assert opt.minimize(lambda: x**2 / 2, [x]) == 1
    assert round(float(x.detach()), 5) == 9.78871

    y = torch.nn.Parameter(torch.tensor(10.0))
    other = Nadam(learning_rate=0.2)
    other.minimize(y**2 / 2, lambda: [y])  # a tensor with a graph, a callable var_list
    assert_bit_equal(y, x)
    assert y.grad is None  # autograd.grad: nothing accumulated into .grad


def test_minimize_equals_apply_gradients_of_autograd_gradients_with_grad_loss():
    rng = np.random.default_rng(5)
    w = parameter(random_array(rng, (3, 2), np.float64))
    w2 = parameter(numpy(w))
    data = tensor(random_array(rng, (4, 3), np.float64))
    cotangent = tensor(random_array(rng, (4, 2), np.float64))
    Nadam().minimize(lambda: data @ w, [w], grad_loss=cotangent)  # a non-scalar loss
    (grad,) = torch.autograd.grad(data @ w2, [w2], grad_outputs=cotangent)
    Nadam().apply_gradients([(grad, w2)])
    assert_bit_equal(w, w2)


def test_gradients_none_for_an_unused_parameter_and_get_gradients_refuses_it():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = Nadam()
    with pytest.warns(UserWarning, match=r"Gradients do not exist for variables \[Parameter"):
        opt.minimize(lambda: (a * 3).sum(), [a, b])
    assert torch.equal(b.detach(), torch.ones(2)) and not torch.equal(a.detach(), torch.ones(2))
    grads = opt.get_gradients(lambda: (a * 3).sum(), [a])
    assert_bit_equal(grads[0], np.full(2, 3.0, np.float32))
    with pytest.raises(ValueError, match=r"Parameter\(shape=\(2,\).*has `None` for gradient"):
        opt.get_gradients(lambda: (a * 3).sum(), [a, b])
    with pytest.raises(ValueError, match="No gradients provided for any variable"):
        opt.minimize(torch.tensor(1.0), [a])  # a loss with no graph reads no variable


def test_embedding_sparse_gradients_through_minimize_equal_the_dense_equivalent_rows():
    # nn.Embedding(sparse=True): only the looked-up rows of the weight move; m and v decay
    # everywhere (compared with the NumPy path fed the same rows as IndexedSlices).
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(8, 3, sparse=True).double()
    table = Variable(numpy(embedding.weight))
    ids = torch.tensor([[1, 5, 1], [7, 1, 2]])
    weights = tensor(np.random.default_rng(6).standard_normal((2, 3, 3)))
    ours, theirs = Nadam(), Nadam()
    for _ in range(4):
        ours.minimize(lambda: (embedding(ids) * weights).sum(), [embedding.weight])
        rows = IndexedSlices(numpy(weights).reshape(-1, 3), numpy(ids).reshape(-1), (8, 3))
        theirs.apply_gradients([(rows, table)])
    assert_bit_equal(embedding.weight, table)
    assert_all_bit_equal(ours.get_weights(), theirs.get_weights())
    untouched = [0, 3, 4, 6]
    assert_bit_equal(embedding.weight[untouched], numpy(table)[untouched])
    assert (numpy(ours.get_slot(embedding.weight, "m"))[untouched] == 0).all()


class _MyParameter(torch.nn.Parameter):
    """A Parameter subclass from outside torch: still a torch tensor."""


def test_tensor_subclasses_from_other_modules_are_routed_to_the_torch_backend():
    p = _MyParameter(torch.ones(2))
    assert type(p).__module__ != "torch" and backend_for(p) is TORCH_BACKEND
    Nadam().apply_gradients([(torch.ones(2), p)])
    assert float(p.detach()[0]) < 1.0


def test_mixed_numpy_and_torch_variables_in_one_call_match_separate_backends():
    rng = np.random.default_rng(8)
    a, b = random_array(rng, (3,), np.float32), random_array(rng, (2,), np.float32)
    p, v = parameter(a), Variable(b)
    ref_p, ref_v = Variable(a), Variable(b)
    opt, ref = Nadam(), Nadam()
    for _ in range(5):
        ga, gb = random_array(rng, (3,), np.float32), random_array(rng, (2,), np.float32)
        opt.apply_gradients([(tensor(ga), p), (gb, v)])
        ref.apply_gradients([(ga, ref_p), (gb, ref_v)])
    assert_bit_equal(p, ref_p)
    assert_bit_equal(v, ref_v)
    assert_all_bit_equal(opt.get_weights(), ref.get_weights())


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_steps_equal_the_cpu_reference_bit_for_bit(dtype):
    rng = np.random.default_rng(9)
    arrays = [random_array(rng, s, dtype) for s in [*SHAPES, (6, 3)]]
    on_gpu = [torch.nn.Parameter(tensor(a).cuda()) for a in arrays]
    on_cpu = [parameter(a) for a in arrays]
    gpu_opt, cpu_opt = Nadam(), Nadam()
    for step in range(20):
        grads = [tensor(random_array(rng, a.shape, dtype)) for a in arrays]
        values, indices = random_rows(rng, 6, (3,), dtype)
        if step % 2:
            grads[-1] = coo_rows(values, indices, (6, 3))
        gpu_opt.apply_gradients([(g.cuda(), p) for g, p in zip(grads, on_gpu, strict=True)])
        with nadam.kernels.reference_only():
            cpu_opt.apply_gradients(zip(grads, on_cpu, strict=True))
    assert nadam.kernels.select(TORCH_BACKEND, "cuda:0", np.dtype(dtype)).name == "torch-foreach"
    assert all(p.is_cuda for p in on_gpu) and opt_slots_on_cuda(gpu_opt, on_gpu)
    # Duplicate sparse rows are summed with atomics on CUDA: allow reordering of those sums.
    for gpu, cpu in zip(on_gpu[:-1], on_cpu[:-1], strict=True):
        assert_bit_equal(gpu, cpu)
    np.testing.assert_allclose(numpy(on_gpu[-1]), numpy(on_cpu[-1]), rtol=1e-5)


def opt_slots_on_cuda(opt, params):
    return all(opt.get_slot(p, s).is_cuda for p in params for s in ("m", "v"))
