"""The demo: a small MLP learns scikit-learn's bundled handwritten digits with `nadam.Nadam`.

It is written the way a Keras 2 user trains a model by hand: the weights are `nadam.Variable`s,
the loss is a zero-argument function of `var.value` written with `autograd.numpy`, and every
batch is one `optimizer.minimize(loss, var_list)`.

scikit-learn (for the data set) and tqdm (for the progress bars) come with the `demo` extra:
``pip install 'nadam[demo]'``.

Example:
    >>> from nadam.demo import train
    >>> result = train(epochs=2, seed=0)
    >>> len(result.losses)
    2
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import autograd.numpy as anp
import numpy as np

import nadam

DEFAULT_EPOCHS = 15
DEFAULT_SEED = 0
DEFAULT_BATCH_SIZE = 32
DEFAULT_LEARNING_RATE = 0.002
HIDDEN_UNITS = 64
NUM_CLASSES = 10
# The split is fixed, whatever the seed: the seed varies the model, never the exam it sits.
SPLIT_SEED = 0
TEST_FRACTION = 0.2

INSTALL_HINT = "pip install 'nadam[demo]'"


class MissingDemoDependency(ImportError):
    """Raised when scikit-learn or tqdm, which only the demo needs, is not installed."""


@dataclass(frozen=True)
class DemoResult:
    """What `train` reports.

    Attributes:
        losses: the mean cross-entropy over the whole training set after each epoch.
        test_accuracy: the fraction of held-out digits classified correctly at the end.
        test_size: how many held-out digits there are.
        seconds: wall time of the training loop (excludes loading the data).

    Example:
        >>> DemoResult(losses=(0.5, 0.2), test_accuracy=0.97, test_size=360, seconds=1.0)
        DemoResult(losses=(0.5, 0.2), test_accuracy=0.97, test_size=360, seconds=1.0)
    """

    losses: tuple[float, ...]
    test_accuracy: float
    test_size: int
    seconds: float


@dataclass(frozen=True)
class _Digits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDemoDependency(
            f"The demo needs the `{module.split('.')[0]}` package, which is not installed. "
            f"Install the demo extra: {INSTALL_HINT}"
        ) from error


def check_dependencies() -> None:
    """Raise `MissingDemoDependency` (naming the install command) unless the demo can run.

    Example:
        >>> check_dependencies()  # silent when scikit-learn and tqdm are installed
    """
    for module in ("sklearn.datasets", "sklearn.model_selection", "sklearn.preprocessing", "tqdm"):
        _require(module)


def load_data() -> _Digits:
    """The 1797 8x8 digits, split 80/20 (stratified, fixed), standardized on the train part."""
    datasets = _require("sklearn.datasets")
    model_selection = _require("sklearn.model_selection")
    preprocessing = _require("sklearn.preprocessing")

    x, y = datasets.load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    scaler = preprocessing.StandardScaler().fit(x_train)
    # float32 inputs keep every product float32, matching the float32 weights (Keras's floatx).
    return _Digits(
        x_train=scaler.transform(x_train).astype(np.float32),
        y_train=y_train.astype(np.int64),
        x_test=scaler.transform(x_test).astype(np.float32),
        y_test=y_test.astype(np.int64),
    )


# --- the model: two Dense layers, as keras.layers.Dense would initialise them ---------------
def _glorot_uniform(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)


def build_model(rng: np.random.Generator, inputs: int = 64) -> list[nadam.Variable]:
    """The trainable weights of a 64 -> 64 (tanh) -> 10 MLP: [kernel_1, bias_1, kernel_2, bias_2].

    Example:
        >>> [v.shape for v in build_model(np.random.default_rng(0))]
        [(64, 64), (64,), (64, 10), (10,)]
    """
    return [
        nadam.Variable(_glorot_uniform(rng, inputs, HIDDEN_UNITS), name="dense/kernel"),
        nadam.Variable(np.zeros(HIDDEN_UNITS, np.float32), name="dense/bias"),
        nadam.Variable(_glorot_uniform(rng, HIDDEN_UNITS, NUM_CLASSES), name="dense_1/kernel"),
        nadam.Variable(np.zeros(NUM_CLASSES, np.float32), name="dense_1/bias"),
    ]


def forward(weights: list[Any], x: np.ndarray) -> Any:
    """The forward pass on the weights' arrays [kernel_1, bias_1, kernel_2, bias_2]
    (autograd-differentiable; `nadam.compare` differentiates it for every optimizer)."""
    kernel_1, bias_1, kernel_2, bias_2 = weights
    hidden = anp.tanh(x @ kernel_1 + bias_1)
    return hidden @ kernel_2 + bias_2


def logits(params: list[nadam.Variable], x: np.ndarray) -> Any:
    """The forward pass. It reads `.value`, which is what `minimize` differentiates through."""
    return forward([p.value for p in params], x)


def cross_entropy(scores: Any, labels: np.ndarray) -> Any:
    """Mean softmax cross-entropy of integer `labels`, stable for large `scores`."""
    shifted = scores - anp.max(scores, axis=1, keepdims=True)
    log_probs = shifted - anp.log(anp.sum(anp.exp(shifted), axis=1, keepdims=True))
    return -anp.mean(log_probs[np.arange(len(labels)), labels])


def accuracy(params: list[nadam.Variable], x: np.ndarray, y: np.ndarray) -> float:
    """The fraction of rows of `x` whose highest logit is the label in `y`."""
    return float(np.mean(np.argmax(logits(params, x), axis=1) == y))


# --- training ---------------------------------------------------------------------------------
def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_positive_float(name: str, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float | np.floating | np.integer)
        or not np.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def batches(rng: np.random.Generator, size: int, batch_size: int) -> Iterator[np.ndarray]:
    """One epoch's batches: row indices of a random permutation of `size` rows, in order."""
    order = rng.permutation(size)
    for start in range(0, size, batch_size):
        yield order[start : start + batch_size]


def train(
    epochs: int = DEFAULT_EPOCHS,
    seed: int = DEFAULT_SEED,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    verbose: bool = False,
) -> DemoResult:
    """Train the MLP on the digits with `nadam.Nadam` and return its losses and test accuracy.

    The seed fixes the initial weights and the batch order, so one seed gives one result.
    With `verbose`, a tqdm bar runs over each epoch's batches (on stderr, when it is a
    terminal) and one line per epoch is printed (on stdout).

    Raises:
        ValueError: an argument is out of range (the message names it).
        MissingDemoDependency: scikit-learn or tqdm is not installed.

    Example:
        >>> result = train(epochs=15, seed=0)
        >>> result.test_accuracy >= 0.95
        True
    """
    _check_positive_int("epochs", epochs)
    _check_positive_int("batch_size", batch_size)
    _check_positive_float("learning_rate", learning_rate)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    check_dependencies()
    tqdm = _require("tqdm").tqdm

    data = load_data()
    rng = np.random.default_rng(seed)
    params = build_model(rng, inputs=data.x_train.shape[1])
    optimizer = nadam.Nadam(learning_rate=learning_rate)

    losses: list[float] = []
    steps = -(-len(data.y_train) // batch_size)  # the last batch may be short
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        bar = tqdm(
            batches(rng, len(data.y_train), batch_size),
            total=steps,
            desc=f"epoch {epoch}/{epochs}",
            unit="batch",
            leave=False,
            # None lets tqdm switch itself off when stderr is not a terminal (logs, CI).
            disable=None if verbose else True,
        )
        for rows in bar:
            x, y = data.x_train[rows], data.y_train[rows]
            # As in Keras: the loss is a zero-argument callable; minimize differentiates it
            # and applies the gradients. Default arguments pin this batch into the closure.
            optimizer.minimize(
                lambda x=x, y=y: cross_entropy(logits(params, x), y), var_list=params
            )
        bar.close()
        losses.append(float(cross_entropy(logits(params, data.x_train), data.y_train)))
        if verbose:
            test_accuracy = accuracy(params, data.x_test, data.y_test)
            print(
                f"epoch {epoch:>{len(str(epochs))}}/{epochs}  loss {losses[-1]:.4f}  "
                f"test accuracy {test_accuracy:.2%}",
                flush=True,
            )
    seconds = time.perf_counter() - start

    return DemoResult(
        losses=tuple(losses),
        test_accuracy=accuracy(params, data.x_test, data.y_test),
        test_size=len(data.y_test),
        seconds=seconds,
    )
