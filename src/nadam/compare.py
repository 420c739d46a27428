"""`python -m nadam compare`: the Nadams people confuse, trained side by side on the demo's MLP.

Every optimizer starts from the same initial weights (`nadam.demo.build_model`) and sees the
same batches in the same order; at each step it gets the gradients of *its own* weights from one
shared loss (the demo's cross-entropy, differentiated by autograd in NumPy, float32), fed to its
framework as arrays. So the only difference between two trajectories is the optimizer:

- ``nadam``: `nadam.Nadam`, Keras 2's Nadam (this project);
- ``nadam-sd1``: `nadam.Nadam(schedule_decay=1.0)`, the momentum schedule Keras 3 uses;
- ``keras2``: `tf_keras.optimizers.legacy.Nadam`, the real Keras 2 optimizer;
- ``keras3``: `keras.optimizers.Nadam` (Keras 3, TensorFlow backend), run in a child process:
  Keras 3 fixes its backend at its first import (`KERAS_BACKEND`), which the calling process
  may have made already with another backend, and it never meets tf_keras in one interpreter
  (tf-keras 2.21 and Keras 3.15 do coexist in one process, checked; the child keeps it so);
- ``torch``: `torch.optim.NAdam` (the same schedule as Keras 2, its own rounding);
- ``optax``: `optax.nadam` (a constant beta_1: another algorithm).

All share the learning rate, beta_1, beta_2 and epsilon (1e-7, Keras's; torch's and optax's own
defaults differ, so they are passed explicitly). A peer whose package is not installed is skipped
with a line saying so. The distance of a trajectory from Keras 2's at a step is
``max |w - w_keras2| / max |w_keras2|`` over all weights (the real Keras 2 optimizer's
trajectory when tf_keras is installed, else ours, which equals it). The result is a PNG with the
loss curves and the distances, and a table on stdout.

Example:
    >>> result = compare(steps=3, peers=("nadam", "nadam-sd1"))
    >>> result.trajectories["nadam"].losses.shape
    (3,)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nadam import demo

DEFAULT_STEPS = 450  # ten epochs of the demo's 1437 training digits in batches of 32
DEFAULT_OUT = "nadam-compare.png"
CHECKPOINTS = (1, 10, 100)  # steps whose distance the table shows, besides the last
CHILD_TIMEOUT_S = 600
SMOOTHING = 15  # steps per point of the loss curves (one batch's loss is noisy)
COLORS = {"nadam": "tab:blue", "keras2": "tab:orange", "nadam-sd1": "black",
          "keras3": "tab:red", "torch": "tab:green", "optax": "tab:purple"}
STYLES = {"keras2": {"linestyle": "--", "linewidth": 2.4},
          "nadam-sd1": {"linestyle": ":", "linewidth": 2.0}}


@dataclass(frozen=True)
class Settings:
    """One comparison: how long, which batches, and the hyperparameters every peer shares."""

    steps: int = DEFAULT_STEPS
    seed: int = demo.DEFAULT_SEED
    batch_size: int = demo.DEFAULT_BATCH_SIZE
    learning_rate: float = demo.DEFAULT_LEARNING_RATE
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7


class Stepper(Protocol):
    """One optimizer training its own copy of the weights."""

    def step(self, grads: list[np.ndarray]) -> None: ...

    def weights(self) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class Peer:
    """A Nadam to compare: its label, the packages it needs, how to make its stepper."""

    name: str
    label: str
    requires: tuple[str, ...]
    make: Callable[[list[np.ndarray], Settings], Stepper] | None
    """None: the peer runs in a child process (`_child_trajectory`)."""


@dataclass(frozen=True)
class Trajectory:
    """One optimizer's run: the batch loss before each step and the weights after each step.

    `weights[0]` is the start, `weights[k]` the flat float32 weights after step k.
    """

    losses: np.ndarray
    weights: np.ndarray
    train_loss: float
    test_accuracy: float


@dataclass
class Comparison:
    """What `compare` returns: each peer's trajectory, its distance from Keras 2 per step
    (index k: after step k), the peers skipped (name -> reason) and the reference's name."""

    settings: Settings
    trajectories: dict[str, Trajectory]
    distances: dict[str, np.ndarray]
    skipped: dict[str, str] = field(default_factory=dict)
    reference: str = "keras2"

    def between(self, name: str, other: str) -> np.ndarray:
        """`distance` of peer `name`'s trajectory from peer `other`'s, per step.

        Example:
            >>> result = compare(steps=2, peers=("nadam", "nadam-sd1"))
            >>> bool(result.between("nadam-sd1", "nadam")[2] > 0)
            True
        """
        theirs = self.trajectories[other].weights.astype(np.float64)
        return distance(self.trajectories[name].weights, theirs)


# --- the shared problem ------------------------------------------------------------------
class Problem:
    """The demo's data, initial weights and batch order for one seed, and the shared loss."""

    def __init__(self, settings: Settings) -> None:
        import autograd

        self.data = demo.load_data()
        rng = np.random.default_rng(settings.seed)
        self.initial = [v.numpy() for v in demo.build_model(rng, self.data.x_train.shape[1])]
        self.rows: list[np.ndarray] = []
        while len(self.rows) < settings.steps:
            self.rows.extend(demo.batches(rng, len(self.data.y_train), settings.batch_size))
        del self.rows[settings.steps :]
        self._value_and_grad = autograd.value_and_grad(self._loss)

    @staticmethod
    def _loss(weights: list[Any], x: np.ndarray, y: np.ndarray) -> Any:
        return demo.cross_entropy(demo.forward(weights, x), y)

    def loss_and_grads(self, weights: list[np.ndarray], step: int) -> tuple[float, list]:
        """The loss of batch `step` at `weights` and its gradients (float32 arrays)."""
        rows = self.rows[step]
        value, grads = self._value_and_grad(
            list(weights), self.data.x_train[rows], self.data.y_train[rows]
        )
        return float(value), [np.asarray(g, dtype=np.float32) for g in grads]

    def train(self, stepper: Stepper) -> Trajectory:
        """Run `stepper` over every batch; record its losses and weights."""
        weights = [stepper.weights()]
        losses = []
        for step in range(len(self.rows)):
            loss, grads = self.loss_and_grads(weights[-1], step)
            stepper.step(grads)
            losses.append(loss)
            weights.append(stepper.weights())
        final = weights[-1]
        train_loss = float(self._loss(final, self.data.x_train, self.data.y_train))
        predicted = np.argmax(demo.forward(final, self.data.x_test), axis=1)
        return Trajectory(
            losses=np.array(losses),
            weights=np.stack([np.concatenate([w.ravel() for w in ws]) for ws in weights]),
            train_loss=train_loss,
            test_accuracy=float(np.mean(predicted == self.data.y_test)),
        )


# --- the peers -------------------------------------------------------------------------------
class _Ours:
    def __init__(self, initial: list[np.ndarray], s: Settings, schedule_decay: float) -> None:
        import nadam

        self._vars = [nadam.Variable(w) for w in initial]
        self._opt = nadam.Nadam(
            s.learning_rate, s.beta_1, s.beta_2, s.epsilon, schedule_decay=schedule_decay
        )

    def step(self, grads: list[np.ndarray]) -> None:
        self._opt.apply_gradients(zip(grads, self._vars, strict=True))

    def weights(self) -> list[np.ndarray]:
        return [v.numpy() for v in self._vars]


class _Keras2:
    def __init__(self, initial: list[np.ndarray], s: Settings) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf
        import tf_keras

        self._tf = tf
        self._vars = [tf.Variable(w) for w in initial]
        self._opt = tf_keras.optimizers.legacy.Nadam(
            s.learning_rate, s.beta_1, s.beta_2, s.epsilon
        )

    def step(self, grads: list[np.ndarray]) -> None:
        tensors = [self._tf.constant(g) for g in grads]
        self._opt.apply_gradients(zip(tensors, self._vars, strict=True))

    def weights(self) -> list[np.ndarray]:
        return [v.numpy() for v in self._vars]


class _Keras3:
    """Keras 3's Nadam; made only in the child process (`_child_trajectory`)."""

    def __init__(self, initial: list[np.ndarray], s: Settings) -> None:
        import keras

        self._keras = keras
        self._vars = [keras.Variable(w) for w in initial]
        self._opt = keras.optimizers.Nadam(s.learning_rate, s.beta_1, s.beta_2, s.epsilon)

    def step(self, grads: list[np.ndarray]) -> None:
        tensors = [self._keras.ops.convert_to_tensor(g) for g in grads]
        self._opt.apply(tensors, self._vars)

    def weights(self) -> list[np.ndarray]:
        return [np.array(v.numpy()) for v in self._vars]


class _Torch:
    def __init__(self, initial: list[np.ndarray], s: Settings) -> None:
        import torch

        self._torch = torch
        self._params = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in initial]
        self._opt = torch.optim.NAdam(
            self._params, lr=s.learning_rate, betas=(s.beta_1, s.beta_2), eps=s.epsilon,
            momentum_decay=0.004,
        )

    def step(self, grads: list[np.ndarray]) -> None:
        for param, grad in zip(self._params, grads, strict=True):
            param.grad = self._torch.from_numpy(grad.copy())
        self._opt.step()

    def weights(self) -> list[np.ndarray]:
        return [p.detach().numpy().copy() for p in self._params]


class _Optax:
    def __init__(self, initial: list[np.ndarray], s: Settings) -> None:
        import jax
        import jax.numpy as jnp
        import optax

        self._jnp = jnp
        transform = optax.nadam(s.learning_rate, b1=s.beta_1, b2=s.beta_2, eps=s.epsilon)
        self._params = [jnp.asarray(w) for w in initial]
        self._state = transform.init(self._params)

        @jax.jit
        def update(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
            updates, state = transform.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        self._update = update

    def step(self, grads: list[np.ndarray]) -> None:
        grads = [self._jnp.asarray(g) for g in grads]
        self._params, self._state = self._update(self._params, self._state, grads)

    def weights(self) -> list[np.ndarray]:
        return [np.array(p) for p in self._params]


PEERS: tuple[Peer, ...] = (
    Peer("nadam", "nadam.Nadam (Keras 2's Nadam)", (),
         lambda w, s: _Ours(w, s, schedule_decay=0.004)),
    Peer("keras2", "tf_keras legacy Nadam (Keras 2)", ("tf_keras",), _Keras2),
    Peer("nadam-sd1", "nadam.Nadam(schedule_decay=1.0)", (),
         lambda w, s: _Ours(w, s, schedule_decay=1.0)),
    Peer("keras3", "keras.optimizers.Nadam (Keras 3)", ("keras", "tensorflow"), None),
    Peer("torch", "torch.optim.NAdam", ("torch",), _Torch),
    Peer("optax", "optax.nadam", ("optax", "jax"), _Optax),
)
PEER_NAMES = tuple(peer.name for peer in PEERS)


def _missing(peer: Peer) -> str | None:
    """The first package `peer` needs that is not installed, else None.

    In-process peers import theirs here; Keras 3 (a child's) is only looked up, since
    importing it here would meet tf_keras in one process. A package set to None in
    `sys.modules` counts as missing, as Python's import system treats it.
    """
    for module in peer.requires:
        if module in sys.modules and sys.modules[module] is None:
            return module
        if peer.make is None:
            if importlib.util.find_spec(module) is None:
                return module
            continue
        try:
            importlib.import_module(module)
        except ImportError:
            return module
    return None


# --- Keras 3 in a child process ----------------------------------------------------------------
_CHILD_CODE = "import sys; from nadam.compare import _child_main; sys.exit(_child_main())"


def _child_trajectory(settings: Settings) -> Trajectory:
    """Keras 3's trajectory, trained in a child process on its TensorFlow backend."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "keras3.npz"
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
        src = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        completed = subprocess.run(
            [sys.executable, "-c", _CHILD_CODE, json.dumps(vars(settings)), str(out)],
            env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"The Keras 3 run failed (exit {completed.returncode}):\n"
                f"{completed.stderr[-2000:]}"
            )
        with np.load(out) as saved:
            return Trajectory(
                losses=saved["losses"], weights=saved["weights"],
                train_loss=float(saved["train_loss"]),
                test_accuracy=float(saved["test_accuracy"]),
            )


def _child_main(argv: Sequence[str] | None = None) -> int:
    """The child process: train Keras 3's Nadam and save its trajectory to argv[1]."""
    argv = sys.argv[1:] if argv is None else argv
    settings = Settings(**json.loads(argv[0]))
    problem = Problem(settings)
    trajectory = problem.train(_Keras3([w.copy() for w in problem.initial], settings))
    np.savez(
        argv[1], losses=trajectory.losses, weights=trajectory.weights,
        train_loss=trajectory.train_loss, test_accuracy=trajectory.test_accuracy,
    )
    return 0


# --- the comparison ------------------------------------------------------------------------
def distance(weights: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per step, ``max |w - w_ref| / max |w_ref|`` over all weights (rows: steps).

    Example:
        >>> distance(np.array([[1.0, 2.0]]), np.array([[1.0, 4.0]]))
        array([0.5])
    """
    scale = np.max(np.abs(reference), axis=1)
    return np.max(np.abs(weights.astype(np.float64) - reference), axis=1) / scale


def compare(
    steps: int = DEFAULT_STEPS,
    seed: int = demo.DEFAULT_SEED,
    batch_size: int = demo.DEFAULT_BATCH_SIZE,
    learning_rate: float = demo.DEFAULT_LEARNING_RATE,
    peers: Sequence[str] = PEER_NAMES,
    report: Callable[[str], None] | None = None,
) -> Comparison:
    """Train each peer from the same start on the same batches; return the trajectories.

    `report` receives one line per skipped peer (and per peer as it starts).

    Raises:
        ValueError: an argument is out of range, or a peer name is unknown.
        demo.MissingDemoDependency: scikit-learn (the data set) is not installed.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not 0 < learning_rate < float("inf"):
        raise ValueError(f"learning_rate must be a positive finite number, got {learning_rate!r}")
    unknown = [name for name in peers if name not in PEER_NAMES]
    if unknown or not peers:
        raise ValueError(f"Unknown peers {unknown}; choose among {list(PEER_NAMES)}")
    say = report or (lambda line: None)
    settings = Settings(int(steps), int(seed), int(batch_size), float(learning_rate))
    problem = Problem(settings)
    trajectories: dict[str, Trajectory] = {}
    skipped: dict[str, str] = {}
    for peer in PEERS:
        if peer.name not in peers:
            continue
        missing = _missing(peer)
        if missing is not None:
            skipped[peer.name] = f"{missing} is not installed"
            say(f"skipped {peer.label}: {missing} is not installed")
            continue
        say(f"training with {peer.label} ...")
        if peer.make is None:
            trajectories[peer.name] = _child_trajectory(settings)
        else:
            stepper = peer.make([w.copy() for w in problem.initial], settings)
            trajectories[peer.name] = problem.train(stepper)
    reference = "keras2" if "keras2" in trajectories else "nadam"
    distances = {}
    if reference in trajectories:
        ref = trajectories[reference].weights.astype(np.float64)
        distances = {name: distance(t.weights, ref) for name, t in trajectories.items()}
    return Comparison(settings, trajectories, distances, skipped, reference)


# --- output ------------------------------------------------------------------------------------
def _label(name: str) -> str:
    return next(peer.label for peer in PEERS if peer.name == name)


def table(result: Comparison) -> str:
    """The terminal table: final loss, accuracy and distance from Keras 2 at a few steps."""
    steps = result.settings.steps
    shown = [k for k in CHECKPOINTS if k < steps] + [steps]
    header = ["optimizer", "train loss", "test acc."] + [f"dist@{k}" for k in shown]
    rows = []
    for name, t in result.trajectories.items():
        d = result.distances.get(name)
        cells = [f"{d[k]:.1e}" if d is not None else "-" for k in shown]
        cells = ["0 (same)" if c == "0.0e+00" else c for c in cells]
        rows.append([_label(name), f"{t.train_loss:.4f}", f"{t.test_accuracy:.2%}", *cells])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    notes = [f"dist@k: max |w - w_keras2| / max |w_keras2| over all weights after step k "
             f"(Keras 2: {_label(result.reference)})"]
    if {"nadam-sd1", "keras3"} <= result.trajectories.keys():
        # Same schedule and formula, different rounding: say how close that is.
        gap = result.between("nadam-sd1", "keras3")[steps]
        notes.append(f"nadam.Nadam(schedule_decay=1.0) vs Keras 3's Nadam after step {steps}: "
                     f"{gap:.1e} (Keras 3's schedule; its own rounding of the same formula)")
    return "\n".join([*lines, *notes])


def plot(result: Comparison, path: str | os.PathLike[str]) -> Path:
    """Write the two-panel PNG: loss curves, and the distance from Keras 2 (log scale)."""
    figure_module = demo._require("matplotlib.figure")
    figure = figure_module.Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    losses, distances = figure.subplots(1, 2)
    steps = np.arange(1, result.settings.steps + 1)
    window = min(SMOOTHING, result.settings.steps)
    for name, t in result.trajectories.items():
        # Keras 2 wide and dashed, ours-with-Keras-3's-schedule dashed: curves equal to
        # another one still show both.
        style = {"color": COLORS[name], "label": _label(name), **STYLES.get(name, {})}
        style.setdefault("linewidth", 1.0)
        smoothed = np.convolve(t.losses, np.ones(window) / window, mode="valid")
        losses.plot(steps[window - 1 :], smoothed, **style)
        d = result.distances.get(name)
        if d is None or name == result.reference:
            continue
        if not np.any(d[1:] > 0):
            style["label"] += ": 0 at every step (identical)"
        distances.plot(steps, np.where(d[1:] > 0, d[1:], np.nan), **style)
    losses.set(xlabel="step", ylabel=f"batch loss, running mean of {window}", yscale="log",
               title="Training loss, same start and batches")
    losses.legend(fontsize=8)
    distances.set(xlabel="step", ylabel="max |w - w_keras2| / max |w_keras2|", yscale="log",
                  title=f"Distance from Keras 2 ({_label(result.reference)})")
    if distances.get_legend_handles_labels()[0]:
        distances.legend(fontsize=8)
    out = Path(path)
    figure.savefig(out)
    return out


# --- the command line ----------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser, positive_int: Any, non_negative_int: Any,
                  positive_float: Any) -> None:
    """The `compare` subcommand's options (the argparse types come from `nadam.__main__`)."""
    parser.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS,
                        help="optimizer steps (batches) per run (default: %(default)s)")
    parser.add_argument("--seed", type=non_negative_int, default=demo.DEFAULT_SEED,
                        help="seeds the initial weights and the batch order (default: "
                             "%(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=demo.DEFAULT_BATCH_SIZE,
                        help="examples per step (default: %(default)s)")
    parser.add_argument("--learning-rate", type=positive_float,
                        default=demo.DEFAULT_LEARNING_RATE,
                        help="the learning rate every optimizer uses (default: %(default)s)")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="where to write the PNG (default: %(default)s)")
    parser.add_argument("--peers", nargs="+", choices=PEER_NAMES, default=list(PEER_NAMES),
                        metavar="PEER",
                        help=f"which optimizers to run (default: all of {', '.join(PEER_NAMES)})")


def run(args: argparse.Namespace) -> int:
    """Run `compare` from parsed arguments: the table on stdout, then the PNG."""
    try:
        demo._require("matplotlib.figure")
        result = compare(args.steps, args.seed, args.batch_size, args.learning_rate,
                         args.peers, report=lambda line: print(line, flush=True))
    except demo.MissingDemoDependency as error:
        print(f"nadam compare: {error}", file=sys.stderr)
        return 1
    print(table(result))
    path = plot(result, args.out)
    print(f"wrote {path}")
    return 0
