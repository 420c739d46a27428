"""The command line: ``python -m nadam demo | bench | compare`` (also the ``nadam`` script).

Each subcommand registers itself with `_add_<name>_parser`, which sets `handler` to the function
that runs it; `main` only parses and dispatches, so a new subcommand touches nothing else.

Example:
    $ python -m nadam demo --epochs 5 --seed 1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def _checked_number(
    convert: Callable[[str], Any], accept: Callable[[Any], bool], expected: str
) -> Callable[[str], Any]:
    """An argparse `type` that converts with `convert` and keeps values `accept` allows."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _checked_number(int, lambda value: value >= 1, "a positive integer")
_non_negative_int = _checked_number(int, lambda value: value >= 0, "a non-negative integer")
# `0 < value < inf` also rejects nan.
_positive_float = _checked_number(
    float, lambda value: 0 < value < float("inf"), "a positive finite number"
)


# --- demo -------------------------------------------------------------------------------------
def _add_demo_parser(subparsers: Any) -> None:
    # Defaults live in nadam.demo; importing it here is cheap (NumPy and autograd only).
    from nadam import demo

    parser = subparsers.add_parser(
        "demo",
        help="train a small MLP on scikit-learn's digits with Nadam on NumPy",
        description=(
            "Train a 64-64-10 MLP on scikit-learn's bundled 8x8 digits with nadam.Nadam "
            "(NumPy variables, autograd gradients) and report the test accuracy. "
            f"Needs the demo extra: {demo.INSTALL_HINT}"
        ),
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=demo.DEFAULT_EPOCHS,
        help="passes over the training set (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=_non_negative_int,
        default=demo.DEFAULT_SEED,
        help="seeds the initial weights and the batch order (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=demo.DEFAULT_BATCH_SIZE,
        help="examples per optimizer step (default: %(default)s)",
    )
    parser.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=demo.DEFAULT_LEARNING_RATE,
        help="Nadam's learning rate (default: %(default)s)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars or per-epoch lines; print only the final accuracy",
    )
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from nadam import demo

    try:
        result = demo.train(
            epochs=args.epochs,
            seed=args.seed,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            verbose=not args.quiet,
        )
    except demo.MissingDemoDependency as error:
        print(f"nadam demo: {error}", file=sys.stderr)
        return 1
    correct = round(result.test_accuracy * result.test_size)
    print(
        f"test accuracy: {result.test_accuracy:.2%} ({correct}/{result.test_size} digits) "
        f"after {len(result.losses)} epochs in {result.seconds:.1f} s"
    )
    return 0


# --- bench ------------------------------------------------------------------------------------
def _add_bench_parser(subparsers: Any) -> None:
    # The benchmark is nadam.bench, part of the package; importing it is cheap (NumPy only:
    # numba and the peers are imported by its worker processes).
    from nadam import bench

    parser = subparsers.add_parser(
        "bench",
        help="time one Nadam step against the memory-bandwidth limit and the other Nadams",
        description=(
            "Time one Nadam step (nadam.bench) against the memory-bandwidth limit and the other "
            "Nadams, each in a fresh process. By default the quick version: 1M parameters and "
            "a 20-tensor model; nadam, its fused kernel called directly, its reference kernel, "
            "plain NumPy and torch.optim.NAdam; under a minute. Peers that are not installed "
            "are skipped with a line saying so (they come with the bench and test extras)."
        ),
    )
    bench.add_arguments(parser, quick_by_default=True)
    parser.set_defaults(handler=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from nadam import bench

    return bench.run(args, prog="python -m nadam bench")


# --- compare ----------------------------------------------------------------------------------
def _add_compare_parser(subparsers: Any) -> None:
    # nadam.compare imports the peers (tf_keras, torch, optax, Keras 3) only when it runs.
    from nadam import compare

    parser = subparsers.add_parser(
        "compare",
        help="train the demo's MLP with the Nadams people confuse and plot how they differ",
        description=(
            "Train the demo's MLP from the same initial weights on the same batches with "
            "nadam.Nadam (Keras 2's Nadam), nadam.Nadam(schedule_decay=1.0), tf_keras's legacy "
            "Nadam (Keras 2), Keras 3's Nadam, torch.optim.NAdam and optax.nadam; print a "
            "table and write a PNG of the loss curves and of each one's distance from Keras 2. "
            "Peers that are not installed are skipped with a line saying so. Needs the demo "
            f"extra: {compare.demo.INSTALL_HINT}"
        ),
    )
    compare.add_arguments(parser, _positive_int, _non_negative_int, _positive_float)
    parser.set_defaults(handler=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from nadam import compare

    return compare.run(args)


# --- the parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The `nadam` argument parser, one subparser per subcommand.

    Example:
        >>> build_parser().parse_args(["demo", "--epochs", "3"]).epochs
        3
    """
    parser = argparse.ArgumentParser(
        prog="python -m nadam",
        description="Keras 2's Nadam optimizer for NumPy and PyTorch.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo_parser(subparsers)
    _add_bench_parser(subparsers)
    _add_compare_parser(subparsers)
    # Further subcommands go here: an `_add_<name>_parser(subparsers)` that calls
    # `parser.set_defaults(handler=...)` with a `(args) -> int` function.
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default: `sys.argv[1:]`); returns the exit status.

    Bad arguments exit through argparse (status 2) with a message naming the argument.

    Example:
        >>> main(["demo", "--quiet", "--epochs", "1"])  # doctest: +SKIP
        test accuracy: ...
        0
    """
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
