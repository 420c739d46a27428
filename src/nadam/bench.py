"""How fast is one Nadam step, next to the memory-bandwidth limit and to the other Nadams?

One run measures, on this machine:
1. the limit: a streaming kernel with the step's access pattern (read 4 float32 arrays, write 3),
   compiled with numba and run on all cores, over as many elements as each case, on random
   values like a real step's (all-zero arrays stream faster here and are reported alongside);
2. one Nadam step for each (case, implementation): the median of repeated steps after warm-up,
   each implementation in a fresh process;
3. the memory of one step on the 64M-parameter case: what the step allocates (peak RSS during
   the step minus RSS before it) and the peak RSS beyond the process without arrays and the
   model's x, g, m, v (which also counts a framework's memory pools and compiled code);
4. the time of the first step in a fresh process, with a cold and a warm compiled-code cache.

It prints markdown tables. Peers that are not installed are skipped with a line saying so.
The benchmark ships with the package, so that it runs from any install:

    python -m nadam bench                            # small cases, fewer steps (under a minute)
    python -m nadam bench --full                     # everything (about eight minutes)
    python benchmarks/bench_step.py --rounds 3       # everything three times, interleaved
    python benchmarks/bench_step.py --cases 16M --impls nadam torch-foreach

(`python -m nadam bench` runs the quick version unless told `--full`;
`benchmarks/bench_step.py` and `python -m nadam.bench` run everything unless told `--quick`.)

Our optimizer runs through the public `Nadam.apply_gradients`, from step 1000 of a run on (see
MID_TRAINING_STEP; "nadam-early" times the first steps); "nadam (kernel call)" calls the fused
kernel directly with precomputed scalars, to show what the optimizer's own bookkeeping costs on
top; "nadam-torch" is `nadam.torch.Nadam` on CPU torch tensors. Times vary on a shared machine:
medians, and the load average is printed. Only NumPy is imported with this module; numba and
the peers are imported by the worker processes that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LR, BETA_1, BETA_2, EPSILON = 1e-3, 0.9, 0.999, 1e-7
BYTES_PER_PARAM = 28  # float32: read x, g, m, v and write x, m, v
MID_TRAINING_STEP = 1000
"""Our steps are timed from this step on: a run spends all but its first ~111 float32 steps with
the momentum cache underflowed to 0, where the kernel skips two divisions that are by exactly 1
(see `nadam.kernels._cpu_numba._divides`). The `nadam-early` row times the first steps."""


# --- the cases ---------------------------------------------------------------------------------
def transformer_shapes(total: int = 1 << 24, tensors: int = 200) -> list[tuple[int, ...]]:
    """`tensors` shapes of a GPT-like model (12 blocks of 16 tensors and the embeddings) whose
    sizes add up to about `total`."""
    d, blocks = 320, 12
    block = [
        (d,), (d,),  # layer norm
        (d, d), (d,), (d, d), (d,), (d, d), (d,),  # q, k, v
        (d, d), (d,),  # attention output
        (d,), (d,),  # layer norm
        (d, 4 * d), (4 * d,), (4 * d, d), (d,),  # MLP
    ]
    shapes = [s for _ in range(blocks) for s in block]
    shapes += [(d,), (d,), (1024, d), (2, d), (d, 10), (10,), (d, d)]  # final norm, heads
    used = sum(int(np.prod(s)) for s in shapes)
    shapes.append(((total - used) // d, d))  # token embedding takes the rest
    assert len(shapes) == tensors, len(shapes)
    return shapes


def mlp_shapes(total: int = 100_000, tensors: int = 20) -> list[tuple[int, ...]]:
    """A ten-layer MLP (weights and biases) of about `total` parameters."""
    widths = [196, 128, 96, 96, 96, 96, 96, 96, 64, 48, 10]
    shapes: list[tuple[int, ...]] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        shapes += [(fan_in, fan_out), (fan_out,)]
    used = sum(int(np.prod(s)) for s in shapes)
    shapes[0] = (widths[0] + (total - used) // widths[1], widths[1])
    assert len(shapes) == tensors
    return shapes


@dataclass(frozen=True)
class Case:
    name: str
    shapes: list[tuple[int, ...]]
    warmup: int
    steps: int

    @property
    def params(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes)


def cases(quick: bool) -> dict[str, Case]:
    scale = 4 if quick else 1
    all_cases = [
        Case("1M", [(1 << 20,)], 10, 100 // scale),
        Case("16M", [(1 << 24,)], 5, 30 // scale),
        Case("64M", [(1 << 26,)], 3, 15 // scale),
        Case("200 tensors, 16M", transformer_shapes(), 5, 30 // scale),
        Case("20 tensors, 100k", mlp_shapes(), 50, 1000 // scale),
    ]
    return {c.name: c for c in all_cases}


QUICK_CASES = ("1M", "20 tensors, 100k")
MEMORY_CASE = "64M"


# --- the implementations, each run inside a worker process --------------------------------------
class Skip(Exception):
    """The implementation cannot run here (a peer that is not installed)."""


def _arrays(case: Case) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    xs = [rng.random(s, dtype=np.float32) - np.float32(0.5) for s in case.shapes]
    gs = [(rng.random(s, dtype=np.float32) - np.float32(0.5)) * np.float32(0.01)
          for s in case.shapes]
    return xs, gs


def _import(module: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as error:
        raise Skip(f"{module} is not installed ({error})") from error


def _to_mid_training(opt: Any, step: Callable[[], Any]) -> None:
    """Take one step (which creates the state), then move the state to step MID_TRAINING_STEP
    of a run: its momentum cache has underflowed to 0, as in any float32 run past step ~111."""
    step()
    weights = opt.get_weights()
    weights[0] = np.int64(MID_TRAINING_STEP)
    weights[1] = np.zeros_like(weights[1])
    opt.set_weights(weights)


def _setup_nadam(case: Case, mid_training: bool) -> Callable[[], None]:
    import nadam

    xs, gs = _arrays(case)
    variables = [nadam.Variable(x) for x in xs]
    del xs
    opt = nadam.Nadam(LR, BETA_1, BETA_2, EPSILON)
    pairs = list(zip(gs, variables, strict=True))

    def step() -> None:
        opt.apply_gradients(pairs)

    step.optimizer = opt  # type: ignore[attr-defined]  # for the benchmark's own tests
    if mid_training:
        _to_mid_training(opt, step)
    else:
        # Keeps every timed step in the early phase, however many steps are timed.
        step.between = lambda: opt.momentum_cache.assign(np.float32(1.0))  # type: ignore
    return step


def setup_nadam(case: Case) -> Callable[[], None]:
    return _setup_nadam(case, mid_training=True)


def setup_nadam_early(case: Case) -> Callable[[], None]:
    return _setup_nadam(case, mid_training=False)


def _torch_parameters(case: Case) -> list[Any]:
    """The case's arrays as CPU torch parameters (sharing memory), gradients attached."""
    torch = _import("torch")
    xs, gs = _arrays(case)
    params = [torch.from_numpy(x).requires_grad_() for x in xs]
    for p, g in zip(params, gs, strict=True):
        p.grad = torch.from_numpy(g)
    return params


def setup_nadam_torch(case: Case) -> Callable[[], None]:
    params = _torch_parameters(case)
    import nadam.torch

    opt = nadam.torch.Nadam(params, lr=LR, betas=(BETA_1, BETA_2), eps=EPSILON)
    _to_mid_training(opt, opt.step)
    return opt.step


def setup_nadam_reference(case: Case) -> Callable[[], None]:
    import nadam

    step = setup_nadam(case)

    def reference_step() -> None:
        with nadam.kernels.reference_only():
            step()

    return reference_step


def setup_nadam_kernel(case: Case) -> Callable[[], None]:
    from nadam.backends import NUMPY_BACKEND
    from nadam.kernels import cpu
    from nadam.nadam import nadam_scalars

    xs, gs = _arrays(case)
    ms, vs = [np.zeros_like(x) for x in xs], [np.zeros_like(x) for x in xs]
    cpu.choose(NUMPY_BACKEND, "cpu", np.dtype(np.float32))
    state = {"it": MID_TRAINING_STEP, "cache": np.float32(0.0)}  # as `setup_nadam`'s

    def step() -> None:
        s, state["cache"] = nadam_scalars(np.float32, state["it"], state["cache"])
        cpu.apply_dense(NUMPY_BACKEND, xs, gs, ms, vs, s)
        state["it"] += 1

    return step


def _setup_torch(case: Case, foreach: bool) -> Callable[[], None]:
    params = _torch_parameters(case)
    torch = _import("torch")
    opt = torch.optim.NAdam(params, lr=LR, betas=(BETA_1, BETA_2), eps=EPSILON, foreach=foreach)
    return opt.step


def setup_torch_forloop(case: Case) -> Callable[[], None]:
    return _setup_torch(case, foreach=False)


def setup_torch_foreach(case: Case) -> Callable[[], None]:
    return _setup_torch(case, foreach=True)


def setup_optax(case: Case) -> Callable[[], None]:
    optax = _import("optax")
    return _setup_optax_transformation(case, optax.nadam(LR, b1=BETA_1, b2=BETA_2, eps=EPSILON))


def setup_nadam_optax(case: Case) -> Callable[[], None]:
    """`nadam.optax.nadam`: Keras 2's step as an optax transformation (exact under jit)."""
    _import("optax")
    from nadam.optax import nadam as nadam_optax

    return _setup_optax_transformation(case, nadam_optax(LR, b1=BETA_1, b2=BETA_2, eps=EPSILON))


def _setup_optax_transformation(case: Case, tx: Any) -> Callable[[], None]:
    """A training step with optax transformation `tx`: update, apply_updates, jitted, with
    the parameters and the state donated."""
    jax = _import("jax")
    optax = _import("optax")
    xs, gs = _arrays(case)
    params = [jax.numpy.asarray(x) for x in xs]
    grads = [jax.numpy.asarray(g) for g in gs]
    del xs, gs
    box = {"params": params, "state": tx.init(params)}

    def update(params: Any, state: Any, grads: Any) -> Any:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    update = jax.jit(update, donate_argnums=(0, 1))

    def step() -> None:
        box["params"], box["state"] = update(box["params"], box["state"], grads)
        jax.block_until_ready(box["params"])

    return step


def setup_nadam_jax(case: Case) -> Callable[[], None]:
    """`nadam.Nadam` (the Keras face) on `nadam.Variable`s holding JAX arrays: the step's
    scalars on the host, the update jitted per group with its buffers donated (a variable's
    where nothing else holds its array)."""
    jax = _import("jax")
    import nadam

    xs, gs = _arrays(case)
    variables = [nadam.Variable(jax.numpy.asarray(x)) for x in xs]
    grads = [jax.numpy.asarray(g) for g in gs]
    del xs, gs
    opt = nadam.Nadam(LR, BETA_1, BETA_2, EPSILON)
    pairs = list(zip(grads, variables, strict=True))

    def step() -> None:
        opt.apply_gradients(pairs)
        jax.block_until_ready([v.value for v in variables])

    step.optimizer = opt  # type: ignore[attr-defined]
    _to_mid_training(opt, step)
    return step


def _setup_tf_keras(case: Case, xla: bool) -> Callable[[], None]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = _import("tensorflow")
    tf_keras = _import("tf_keras")
    xs, gs = _arrays(case)
    variables = [tf.Variable(x) for x in xs]
    grads = [tf.constant(g) for g in gs]
    del xs, gs
    opt = tf_keras.optimizers.legacy.Nadam(LR, BETA_1, BETA_2, EPSILON)

    @tf.function(jit_compile=xla)
    def step() -> None:
        opt.apply_gradients(zip(grads, variables, strict=True))

    return step


def setup_tf_keras(case: Case) -> Callable[[], None]:
    return _setup_tf_keras(case, xla=False)


def setup_tf_keras_xla(case: Case) -> Callable[[], None]:
    return _setup_tf_keras(case, xla=True)


def _setup_keras3(case: Case, backend: str, ours: bool) -> Callable[[], None]:
    """One step of Keras 3's Nadam, or of ours (`nadam.keras.Nadam`), on a Keras backend: JAX
    through `stateless_apply` under `jax.jit` (buffers donated), TensorFlow through `apply`
    in a `tf.function`, torch through `apply` (eager, as Keras runs it)."""
    os.environ["KERAS_BACKEND"] = backend
    keras = _import("keras")
    if keras.backend.backend() != backend:
        raise Skip(f"Keras 3 runs on {keras.backend.backend()}, not {backend}")
    xs, gs = _arrays(case)
    variables = [keras.Variable(x) for x in xs]
    if ours:
        from nadam.keras import Nadam

        opt = Nadam(LR, BETA_1, BETA_2, EPSILON)
    else:
        opt = keras.optimizers.Nadam(LR, BETA_1, BETA_2, EPSILON)
    opt.build(variables)
    grads = [keras.ops.convert_to_tensor(g) for g in gs]
    del xs, gs
    if backend == "jax":
        jax = _import("jax")
        box = {"params": [v.value for v in variables], "state": [v.value for v in opt.variables]}

        def update(params: Any, state: Any, grads: Any) -> Any:
            return opt.stateless_apply(state, grads, params)

        update = jax.jit(update, donate_argnums=(0, 1))

        def step() -> None:
            box["params"], box["state"] = update(box["params"], box["state"], grads)
            jax.block_until_ready(box["params"])

        return step
    if backend == "tensorflow":
        tf = _import("tensorflow")
        return tf.function(lambda: opt.apply(grads, variables))
    return lambda: opt.apply(grads, variables)


def setup_keras3_jax(case: Case) -> Callable[[], None]:
    return _setup_keras3(case, "jax", ours=False)


def setup_keras3_torch(case: Case) -> Callable[[], None]:
    return _setup_keras3(case, "torch", ours=False)


def setup_keras3_tf(case: Case) -> Callable[[], None]:
    return _setup_keras3(case, "tensorflow", ours=False)


def setup_nadam_keras3_jax(case: Case) -> Callable[[], None]:
    return _setup_keras3(case, "jax", ours=True)


def setup_nadam_keras3_torch(case: Case) -> Callable[[], None]:
    return _setup_keras3(case, "torch", ours=True)


def setup_nadam_keras3_tf(case: Case) -> Callable[[], None]:
    return _setup_keras3(case, "tensorflow", ours=True)


# The Keras 3 implementations, by the backend each worker must select before importing Keras.
KERAS3_BACKENDS = {
    "keras3-jax": "jax", "keras3-torch": "torch", "keras3-tf": "tensorflow",
    "nadam-keras3-jax": "jax", "nadam-keras3-torch": "torch", "nadam-keras3-tf": "tensorflow",
}


def setup_numpy(case: Case) -> Callable[[], None]:
    """The formula in NumPy, updating x, m and v in place (with the temporaries NumPy makes)."""
    xs, gs = _arrays(case)
    ms, vs = [np.zeros_like(x) for x in xs], [np.zeros_like(x) for x in xs]
    f32 = np.float32
    state = {"t": 0, "cache": 1.0}

    def step() -> None:
        state["t"] += 1
        t = state["t"]
        mu_t = BETA_1 * (1 - 0.5 * 0.96 ** (0.004 * t))
        mu_t1 = BETA_1 * (1 - 0.5 * 0.96 ** (0.004 * (t + 1)))
        prod = state["cache"] * mu_t
        state["cache"] = prod
        c_g, c_m = f32((1 - mu_t) / (1 - prod)), f32(mu_t1 / (1 - prod * mu_t1))
        c_v = f32(1 / (1 - BETA_2**t))
        for x, g, m, v in zip(xs, gs, ms, vs, strict=True):
            m *= f32(BETA_1)
            m += f32(1 - BETA_1) * g
            v *= f32(BETA_2)
            v += f32(1 - BETA_2) * (g * g)
            x -= f32(LR) * (c_g * g + c_m * m) / (np.sqrt(c_v * v) + f32(EPSILON))

    return step


@dataclass(frozen=True)
class Impl:
    key: str
    label: str
    setup: Callable[[Case], Callable[[], None]]
    peer: bool


IMPLS = {
    impl.key: impl
    for impl in [
        Impl("nadam", "**nadam** (`apply_gradients`, fused kernel)", setup_nadam, False),
        Impl("nadam-early", "nadam, steps 1-111 (momentum cache not yet 0)",
             setup_nadam_early, False),
        Impl("nadam-kernel", "nadam, fused kernel called directly", setup_nadam_kernel, False),
        Impl("nadam-torch", "`nadam.torch.Nadam` on CPU torch tensors", setup_nadam_torch,
             False),
        Impl("nadam-reference", "nadam, reference kernel", setup_nadam_reference, False),
        Impl("torch-forloop", "`torch.optim.NAdam` (for-loop)", setup_torch_forloop, True),
        Impl("torch-foreach", "`torch.optim.NAdam` (foreach)", setup_torch_foreach, True),
        Impl("nadam-jax", "`nadam.Nadam` on JAX Variables (XLA kernel, buffers donated)",
             setup_nadam_jax, False),
        Impl("optax", "`optax.nadam` (jit, donated)", setup_optax, True),
        Impl("nadam-optax", "`nadam.optax.nadam` (jit, donated)", setup_nadam_optax, False),
        Impl("tf-keras", "`tf_keras` legacy Nadam (tf.function)", setup_tf_keras, True),
        Impl("tf-keras-xla", "`tf_keras` legacy Nadam (tf.function, XLA)", setup_tf_keras_xla,
             True),
        Impl("keras3-jax", "Keras 3 Nadam (jax, jit, donated)", setup_keras3_jax, True),
        Impl("keras3-torch", "Keras 3 Nadam (torch, apply)", setup_keras3_torch, True),
        Impl("keras3-tf", "Keras 3 Nadam (tensorflow, apply in tf.function)", setup_keras3_tf,
             True),
        Impl("nadam-keras3-jax", "`nadam.keras.Nadam` (jax, jit, donated)",
             setup_nadam_keras3_jax, False),
        Impl("nadam-keras3-torch", "`nadam.keras.Nadam` (torch, apply)",
             setup_nadam_keras3_torch, False),
        Impl("nadam-keras3-tf", "`nadam.keras.Nadam` (tensorflow, apply in tf.function)",
             setup_nadam_keras3_tf, False),
        Impl("numpy", "plain NumPy, in place", setup_numpy, True),
    ]
}
QUICK_IMPLS = ("nadam", "nadam-kernel", "nadam-reference", "torch-foreach", "numpy")


# --- measuring inside a worker -------------------------------------------------------------------
def _memory_kib() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def _step_memory(step: Callable[[], None], baseline_kib: int, state_bytes: int) -> dict:
    """Memory of one step (Linux): `fresh`, the peak resident memory during the step minus the
    resident memory just before it (what the step itself allocates), and `beyond_state`, that
    peak minus the process before any array existed and minus the model's x, g, m and v (which
    also counts pools of memory a framework keeps between steps, and its compiled code)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM to the current RSS
        before = _memory_kib()["VmRSS"]
        step()
        peak = _memory_kib()["VmHWM"]
    except OSError:
        return {}
    return {"fresh_bytes": max(0, peak - before) * 1024,
            "beyond_state_bytes": peak * 1024 - baseline_kib * 1024 - state_bytes}


# Imported before the baseline memory is read, so that their code does not count as the step's.
FRAMEWORKS = {
    "nadam": ["nadam", "numba"], "nadam-kernel": ["nadam", "numba"],
    "nadam-reference": ["nadam", "numba"], "nadam-early": ["nadam", "numba"],
    "nadam-torch": ["nadam", "numba", "torch"], "torch-forloop": ["torch"],
    "torch-foreach": ["torch"], "optax": ["jax", "optax"], "tf-keras": ["tensorflow", "tf_keras"],
    "nadam-jax": ["nadam", "jax"], "nadam-optax": ["nadam", "jax", "optax"],
    "tf-keras-xla": ["tensorflow", "tf_keras"], "keras3-jax": ["jax", "keras"], "numpy": [],
    "keras3-torch": ["torch", "keras"], "keras3-tf": ["tensorflow", "keras"],
    "nadam-keras3-jax": ["nadam", "jax", "keras"],
    "nadam-keras3-torch": ["nadam", "numba", "torch", "keras"],
    "nadam-keras3-tf": ["nadam", "tensorflow", "keras"],
}


def time_steps(step: Callable[[], None], warmup: int, steps: int) -> list[float]:
    """The times of `steps` calls after `warmup` calls; `step.between()`, if the setup gave
    one, runs untimed before each timed call."""
    between = getattr(step, "between", None)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if between is not None:
            between()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def worker(impl_key: str, case: Case, memory: bool) -> dict[str, Any]:
    if impl_key in KERAS3_BACKENDS:
        os.environ["KERAS_BACKEND"] = KERAS3_BACKENDS[impl_key]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        for module in FRAMEWORKS[impl_key]:
            _import(module)
        baseline = _memory_kib()["VmRSS"]
        step = IMPLS[impl_key].setup(case)
    except Skip as why:
        return {"skipped": str(why)}
    times = time_steps(step, case.warmup, case.steps)
    result: dict[str, Any] = {"median_s": float(np.median(times)), "min_s": min(times),
                              "times_s": times}
    if impl_key == "nadam" and case.name in PAIRED_CASES:
        result["paired_fraction"] = paired_fraction(step, case)
    if memory:
        result.update(_step_memory(step, baseline, 16 * case.params))
    return result


def _streaming_span() -> Callable[..., None]:
    """A compiled loop with a Nadam step's memory traffic over x, g, m, v and no arithmetic to
    speak of: what the limit is measured with."""
    import numba

    @numba.njit(error_model="numpy", nogil=True)
    def span(x: Any, g: Any, m: Any, v: Any) -> None:
        for i in range(x.shape[0]):
            gi = g[i]
            m[i] = m[i] + gi
            v[i] = v[i] + gi
            x[i] = x[i] + gi

    return span


PAIRED_CASES = ("16M", "64M", "200 tensors, 16M")
"""The cases whose arrays are far larger than the caches: there a streaming pass between two
steps evicts nothing a step would have found in cache, so the two can alternate fairly."""


def paired_fraction(step: Callable[[], None], case: Case) -> float:
    """Our step's fraction of the limit, with the drift of the machine's bandwidth taken out.

    The shared machine's bandwidth moves by tens of percent within seconds, so a limit measured
    in one process and a step in the next can disagree either way. Here one streaming pass
    (two threads, each half of the arrays, as `stream_worker` but without an OpenMP pool whose
    spinning threads would slow the step's helpers) and one step alternate in this process;
    the result is the median of (streaming time / step time) over the pairs.
    """
    from concurrent.futures import ThreadPoolExecutor

    span = _streaming_span()
    rng = np.random.default_rng(2)
    arrays = [(rng.random(case.params, dtype=np.float32) - np.float32(0.5)) * np.float32(0.01)
              for _ in range(4)]
    half = case.params // 2
    helper = ThreadPoolExecutor(max_workers=1)

    def stream() -> None:
        other = helper.submit(span, *(a[half:] for a in arrays))
        span(*(a[:half] for a in arrays))
        other.result()

    stream()
    ratios = []
    for _ in range(max(10, case.steps)):
        start = time.perf_counter()
        stream()
        middle = time.perf_counter()
        step()
        ratios.append((middle - start) / (time.perf_counter() - middle))
    helper.shutdown()
    return float(np.median(ratios))


def stream_worker(case: Case) -> dict[str, Any]:
    """The limit: all cores streaming through x, g, m, v (read) and x, m, v (write)."""
    import numba

    chunk = 1 << 16
    span = _streaming_span()

    @numba.njit(parallel=True, error_model="numpy")
    def stream_parallel(x: Any, g: Any, m: Any, v: Any) -> None:
        n = x.shape[0]
        for c in numba.prange((n + chunk - 1) // chunk):
            lo = c * chunk
            hi = min(n, lo + chunk)
            span(x[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi])

    # The arrays hold the same kind of values as a real step's: on this machine streaming
    # all-zero arrays is 10-25 % faster than streaming any other data (measured; constant ones
    # stream as slowly as random values), so a limit measured on zeros is one no step reaches.
    n = case.params
    rng = np.random.default_rng(1)
    x = rng.random(n, dtype=np.float32) - np.float32(0.5)
    g, m, v = ((rng.random(n, dtype=np.float32) - np.float32(0.5)) * np.float32(0.01)
               for _ in range(3))
    zeros = [np.zeros(n, np.float32) for _ in range(4)]
    result: dict[str, Any] = {}
    for name, kernel, arrays in (("parallel", stream_parallel, (x, g, m, v)),
                                 ("serial", span, (x, g, m, v)),
                                 ("zeros", stream_parallel, zeros)):
        times = time_steps(lambda k=kernel, a=arrays: k(*a), max(3, case.warmup), case.steps)
        result[name] = float(np.median(times))
        result[f"{name}_best"] = min(times)
    best = min(("parallel", "serial"), key=result.get)
    result["median_s"], result["best_s"] = result[best], result[f"{best}_best"]
    result["gb_per_s"] = BYTES_PER_PARAM * n / result["median_s"] / 1e9
    result["zeros_gb_per_s"] = BYTES_PER_PARAM * n / result["zeros"] / 1e9
    result["threading_layer"] = numba.threading_layer()
    return result


FIRST_STEP_WORKER = (
    "import json, time, numpy; start = time.perf_counter(); import nadam; "
    "seconds = time.perf_counter() - start; from nadam.bench import first_step_worker; "
    "print(json.dumps(first_step_worker(seconds)))"
)
"""The first-step worker's program, run with `python -c`: `import nadam` is timed (after NumPy's)
in a process that has not imported nadam yet, unlike one started with `-m nadam.bench`."""


def first_step_worker(import_s: float) -> dict[str, Any]:
    """Take one step on a 1M float32 tensor and time it (fresh process, nadam imported in
    `import_s` seconds)."""
    import nadam

    x = nadam.Variable(np.zeros(1 << 20, np.float32))
    g = np.ones(1 << 20, np.float32)
    opt = nadam.Nadam()
    before = time.perf_counter()
    opt.apply_gradients([(g, x)])
    first = time.perf_counter()
    opt.apply_gradients([(g, x)])
    second = time.perf_counter()
    return {"import_s": import_s, "first_step_s": first - before,
            "second_step_s": second - first}


# --- the driver ------------------------------------------------------------------------------
def _worker_environment(extra: dict[str, str] | None) -> dict[str, str]:
    """This process's environment and `extra`, with the directory this process imported nadam
    from put first on PYTHONPATH when a worker would not find it otherwise (it was found through
    this process's working or script directory, which a worker's `python -P` leaves out)."""
    env = {**os.environ, **(extra or {})}
    import nadam

    home = os.path.dirname(os.path.dirname(os.path.abspath(nadam.__file__)))
    inherited = sys.path if sys.flags.safe_path else sys.path[1:]
    if home not in (os.path.abspath(entry) for entry in inherited if entry):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [home, env.get("PYTHONPATH")]))
    return env


def run_worker(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one measurement in a fresh process (`python -m nadam.bench --worker ...`, or
    FIRST_STEP_WORKER for `["first"]`)."""
    if args == ["first"]:
        command = [sys.executable, "-P", "-c", FIRST_STEP_WORKER]
    else:
        command = [sys.executable, "-P", "-m", "nadam.bench", "--worker", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            env=_worker_environment(env))
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-3:]
        return {"failed": " | ".join(tail) or f"exit status {result.returncode}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


PEERS_REPORTED = ("numpy", "numba", "torch", "jax", "optax", "tensorflow", "tf_keras", "keras")


def machine() -> str:
    """The processor, cores, memory, Python and the installed versions of the packages timed
    (read from their metadata: importing TensorFlow here would cost seconds and memory)."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    distributions = metadata.packages_distributions()
    versions = []
    for module in PEERS_REPORTED:
        try:
            versions.append(f"{module} {metadata.version(distributions[module][0])}")
        except (KeyError, IndexError, metadata.PackageNotFoundError):
            versions.append(f"{module} -")
    return (f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB; Python "
            f"{platform.python_version()}; " + ", ".join(versions))


def _fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def report(selected: dict[str, Case], impls: list[str], results: dict, limits: dict,
           skipped: dict[str, str]) -> list[str]:
    lines = [
        "| case | implementation | ms/step (median) | best step | params/s | fraction of limit "
        "| fastest peer's time / this |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, case in selected.items():
        limit = limits.get(name, {}).get("median_s")
        peers = [results[(name, k)]["median_s"] for k in impls
                 if IMPLS[k].peer and "median_s" in results.get((name, k), {})]
        fastest_peer = min(peers) if peers else None
        if limit:
            lines.append(f"| {name} | *limit: streaming 28 B/param at "
                         f"{limits[name]['gb_per_s']:.0f} GB/s (all-zero data: "
                         f"{limits[name]['zeros_gb_per_s']:.0f} GB/s)* | {_fmt_ms(limit)} | "
                         f"{_fmt_ms(limits[name]['best_s'])} | {case.params / limit:.2e} | 1 | |")
        for key in impls:
            result = results.get((name, key), {})
            if "median_s" not in result:
                continue
            t = result["median_s"]
            fraction = f"{limit / t:.2f}" if limit else "-"
            if "paired_fraction" in result:
                fraction += f" (paired: {result['paired_fraction']:.2f})"
            ratio = f"{fastest_peer / t:.2f}×" if fastest_peer else "-"
            lines.append(f"| {name} | {IMPLS[key].label} | {_fmt_ms(t)} | "
                         f"{_fmt_ms(result['min_s'])} | {case.params / t:.2e} | {fraction} | "
                         f"{ratio} |")
    for key, why in skipped.items():
        lines.append(f"\nSkipped {IMPLS[key].label}: {why}")
    return lines


def targets(results: dict, limits: dict) -> list[str]:
    def ms(case: str, key: str) -> float | None:
        return results.get((case, key), {}).get("median_s")

    lines = []
    for case, goal in (("16M", 0.9), ("64M", 0.9), ("200 tensors, 16M", 0.85)):
        ours, limit = ms(case, "nadam"), limits.get(case, {}).get("median_s")
        paired = results.get((case, "nadam"), {}).get("paired_fraction")
        if paired is not None:  # the measurement that does not depend on the drift
            verdict = "met" if paired >= goal else "MISSED"
            separate = f"; {limit / ours:.2f} against the limit's own process" if limit else ""
            lines.append(f"- {case}: {paired:.2f} of the limit, paired in one process "
                         f"(target ≥ {goal}): {verdict}{separate}")
        elif ours and limit:
            verdict = "met" if limit / ours >= goal else "MISSED"
            lines.append(f"- {case}: {limit / ours:.2f} of the limit (target ≥ {goal}): {verdict}")
    for case in ("16M", "64M", "200 tensors, 16M", "1M"):
        ours = ms(case, "nadam")
        peers = {k: ms(case, k) for k in IMPLS if IMPLS[k].peer and ms(case, k)}
        if not ours or not peers:
            continue
        best = min(peers, key=peers.get)
        torch_best = min((peers[k] for k in ("torch-forloop", "torch-foreach") if k in peers),
                         default=None)
        line = (f"- {case}: {peers[best] / ours:.2f}× the fastest peer ({IMPLS[best].label}; "
                f"target ≥ 1.5×: {'met' if peers[best] / ours >= 1.5 else 'MISSED'})")
        if torch_best:
            line += (f", {torch_best / ours:.1f}× torch.optim.NAdam (target ≥ 5×: "
                     f"{'met' if torch_best / ours >= 5 else 'MISSED'})")
        lines.append(line)
    for case in ("1M", "16M", "64M", "200 tensors, 16M", "20 tensors, 100k"):
        exact, inexact = ms(case, "nadam-optax"), ms(case, "optax")
        if exact and inexact:  # issue #10: exactness costs the reciprocal multiply XLA gives optax
            lines.append(f"- {case}: `nadam.optax.nadam` at {exact / inexact:.2f}× the step time "
                         f"of `optax.nadam` (target ≤ 1.10×: "
                         f"{'met' if exact / inexact <= 1.10 else 'MISSED'})")
    ours, torch_foreach = ms("20 tensors, 100k", "nadam"), ms("20 tensors, 100k", "torch-foreach")
    if ours and torch_foreach:
        lines.append(f"- 20 tensors, 100k: {_fmt_ms(ours)} ms vs torch foreach "
                     f"{_fmt_ms(torch_foreach)} ms (target: at most as slow): "
                     f"{'met' if ours <= torch_foreach else 'MISSED'}")
    return lines


def _combine(rounds: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """Median over rounds of every median; the best step over all rounds."""
    def merged(measurements: list[dict]) -> dict:
        ok = [m for m in measurements if "median_s" in m]
        if not ok:
            return measurements[0]
        out = dict(ok[0])
        out["median_s"] = float(np.median([m["median_s"] for m in ok]))
        for key in ("min_s", "best_s"):
            if key in out:
                out[key] = min(m[key] for m in ok)
        if "gb_per_s" in out:
            out["gb_per_s"] = ok[0]["gb_per_s"] * ok[0]["median_s"] / out["median_s"]
        if "zeros" in out:
            out["zeros"] = float(np.median([m["zeros"] for m in ok]))
            out["zeros_gb_per_s"] = ok[0]["zeros_gb_per_s"] * ok[0]["zeros"] / out["zeros"]
        if all("paired_fraction" in m for m in ok):
            out["paired_fraction"] = float(np.median([m["paired_fraction"] for m in ok]))
        for key in ("fresh_bytes", "beyond_state_bytes"):
            if all(key in m for m in ok):
                out[key] = max(m[key] for m in ok)
        out["rounds"] = [m["median_s"] for m in ok]
        out.pop("times_s", None)
        return out

    limits = {name: merged([r[0][name] for r in rounds]) for name in rounds[0][0]}
    results = {key: merged([r[1][key] for r in rounds]) for key in rounds[0][1]}
    return limits, results


def add_arguments(parser: argparse.ArgumentParser, quick_by_default: bool) -> None:
    """The benchmark's options, on `parser`: this module's own and `python -m nadam bench`'s
    (which runs the quick version unless told `--full`)."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="quick", action="store_true",
                      help="small cases and fewer steps, for a first look (under a minute)"
                      + (" (the default)" if quick_by_default else ""))
    mode.add_argument("--full", dest="quick", action="store_false",
                      help="every case and every peer (about eight minutes)"
                      + ("" if quick_by_default else " (the default)"))
    parser.set_defaults(quick=quick_by_default)
    names = list(cases(quick=False))
    parser.add_argument("--cases", nargs="+", choices=names, metavar="CASE",
                        help="the cases (default: all, or the quick ones), of "
                        + ", ".join(f"'{name}'" for name in names))
    parser.add_argument("--impls", nargs="+", choices=list(IMPLS), metavar="IMPL",
                        help="the implementations (default: all, or the quick ones), of "
                        + ", ".join(IMPLS))
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every measurement this many times, interleaved (default 1)")
    parser.add_argument("--no-first-step", action="store_true",
                        help="skip the first-step timing in fresh processes")
    parser.add_argument("--json", type=Path, help="also write all measurements here")


def _options(args: argparse.Namespace) -> list[str]:
    """`args` as command-line options again, for the report's "Command:" line."""
    words = ["--quick" if args.quick else "--full"]
    if args.cases:
        words += ["--cases", *args.cases]
    if args.impls:
        words += ["--impls", *args.impls]
    if args.rounds != 1:
        words += ["--rounds", str(args.rounds)]
    if args.no_first_step:
        words.append("--no-first-step")
    if args.json:
        words += ["--json", str(args.json)]
    return words


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The benchmark's command line (everything unless told `--quick`); `prog` is how it was
    started, for the report (default: `python` and the script's path)."""
    prog = prog or f"python {Path(sys.argv[0])}"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_arguments(parser, quick_by_default=False)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kind, *rest = args.worker
        all_cases = cases(quick=rest[-1] == "quick") if rest else {}
        if kind == "step":
            impl_key, case_name, memory = rest[0], rest[1], rest[2] == "memory"
            print(json.dumps(worker(impl_key, all_cases[case_name], memory)))
        else:
            print(json.dumps(stream_worker(all_cases[rest[0]])))
        return 0
    return run(args, prog)


def run(args: argparse.Namespace, prog: str) -> int:
    """Run the benchmark `args` (from a parser `add_arguments` filled) asks for and print the
    report; `prog` is the command that started it."""
    all_cases = cases(args.quick)
    names = args.cases or (list(QUICK_CASES) if args.quick else list(all_cases))
    selected = {n: all_cases[n] for n in names}
    impls = args.impls or (list(QUICK_IMPLS) if args.quick else list(IMPLS))
    mode = "quick" if args.quick else "full"

    print(f"Machine: {machine()}")
    print(f"Command: {prog} {shlex.join(_options(args))}")
    print(f"Load average before: {os.getloadavg()[0]:.2f}\n", flush=True)
    # Rounds interleave everything, so that a busy minute on a shared machine does not land on
    # one implementation only; each number is the median over rounds of per-process medians.
    rounds: list[tuple[dict, dict]] = []
    skipped: dict[str, str] = {}
    for round_number in range(args.rounds):
        limits, results = {}, {}
        for name in selected:
            limits[name] = run_worker(["stream", name, mode])
            print(f"[round {round_number + 1}, {name}] limit: {limits[name]}", file=sys.stderr,
                  flush=True)
            for key in impls:
                memory = "memory" if name == MEMORY_CASE else "time"
                result = run_worker(["step", key, name, memory, mode])
                results[(name, key)] = result
                if "skipped" in result:
                    skipped[key] = result["skipped"]
                summary = {k: v for k, v in result.items() if k != "times_s"}
                print(f"[round {round_number + 1}, {name}] {key}: {summary}", file=sys.stderr,
                      flush=True)
        rounds.append((limits, results))
    limits, results = _combine(rounds)

    print(f"## One Nadam step, float32 ({mode} run)\n")
    print("\n".join(report(selected, impls, results, limits, skipped)))
    if MEMORY_CASE in selected:
        state = 16 * selected[MEMORY_CASE].params / 2**20
        print(f"\n## Memory of one step at {MEMORY_CASE} parameters (x, g, m, v: "
              f"{state:.0f} MiB)\n")
        print("| implementation | allocated by the step (MiB) | peak resident beyond x, g, m, v "
              "(MiB) |\n|---|---:|---:|")
        for key in impls:
            result = results.get((MEMORY_CASE, key), {})
            if "fresh_bytes" in result:
                print(f"| {IMPLS[key].label} | {result['fresh_bytes'] / 2**20:.1f} | "
                      f"{result['beyond_state_bytes'] / 2**20:.0f} |")
    failed = {k: v["failed"] for k, v in results.items() if "failed" in v}
    for (name, key), why in failed.items():
        print(f"\nFailed: {IMPLS[key].label} on {name}: {why}")

    if not args.no_first_step and "nadam" in impls:
        print("\n## First step in a fresh process (1M float32 parameters)\n")
        print("| compiled-code cache | import nadam (s) | first step (s) | second step (ms) |")
        print("|---|---:|---:|---:|")
        with tempfile.TemporaryDirectory() as cache:
            for label in ("cold (empty)", "warm"):
                r = run_worker(["first"], {"NUMBA_CACHE_DIR": cache})
                if "failed" in r:
                    print(f"| {label} | failed: {r['failed']} | | |")
                    continue
                print(f"| {label} | {r['import_s']:.2f} | {r['first_step_s']:.2f} | "
                      f"{r['second_step_s'] * 1e3:.2f} |")

    print("\n## Targets\n")
    print("\n".join(targets(results, limits)) or "(no target applies to this selection)")
    print(f"\nLoad average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"limits": limits, "results": {
            f"{n} | {k}": v for (n, k), v in results.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m nadam.bench"))
