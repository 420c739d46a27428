"""The demo (`nadam.demo.train`) and its command line (`python -m nadam demo`)."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from nadam import demo
from nadam.__main__ import main

ACCURACY_LINE = re.compile(
    r"^test accuracy: (\d+\.\d\d)% \((\d+)/(\d+) digits\) after (\d+) epochs in [\d.]+ s$",
    re.MULTILINE,
)
EPOCH_LINE = re.compile(
    r"^epoch +(\d+)/(\d+)  loss (\d+\.\d{4})  test accuracy (\d+\.\d\d)%$", re.MULTILINE
)


@pytest.fixture(scope="module")
def default_run() -> demo.DemoResult:
    return demo.train()


# --- the training itself ------------------------------------------------------------------
def test_default_demo_reaches_95_percent_test_accuracy(default_run: demo.DemoResult) -> None:
    assert default_run.test_size == 360  # 20 % of the 1797 digits
    assert default_run.test_accuracy >= 0.95
    # An accuracy is a count of digits over the test size, not an arbitrary float.
    correct = default_run.test_accuracy * default_run.test_size
    assert correct == pytest.approx(round(correct), abs=1e-9)


def test_default_demo_loss_falls_epoch_over_epoch(default_run: demo.DemoResult) -> None:
    losses = default_run.losses
    assert len(losses) == demo.DEFAULT_EPOCHS
    assert all(math.isfinite(loss) for loss in losses)
    # After one epoch the model is already far better than chance (ln 10 = 2.30).
    assert losses[0] < 1.0
    assert losses[-1] < losses[0] / 10
    assert all(later < earlier for earlier, later in zip(losses, losses[1:], strict=False))


def test_same_seed_gives_identical_results() -> None:
    first = demo.train(epochs=3, seed=7)
    second = demo.train(epochs=3, seed=7)
    assert first.losses == second.losses
    assert first.test_accuracy == second.test_accuracy


def test_another_seed_gives_another_trajectory() -> None:
    assert demo.train(epochs=2, seed=1).losses != demo.train(epochs=2, seed=2).losses


def test_model_is_float32_keras_style_dense_layers() -> None:
    import numpy as np

    params = demo.build_model(np.random.default_rng(0))
    assert [(p.name, p.shape, p.dtype) for p in params] == [
        ("dense/kernel", (64, 64), np.float32),
        ("dense/bias", (64,), np.float32),
        ("dense_1/kernel", (64, 10), np.float32),
        ("dense_1/bias", (10,), np.float32),
    ]
    limit = math.sqrt(6.0 / (64 + 64))  # Glorot uniform
    assert 0.9 * limit < np.abs(params[0].numpy()).max() <= limit
    assert not params[1].numpy().any() and not params[3].numpy().any()


def test_cross_entropy_matches_the_definition() -> None:
    import numpy as np

    scores = np.array([[1000.0, 0.0, -1.0], [0.5, 0.25, 2.0]], np.float32)
    labels = np.array([0, 1])
    log_softmax_row_2 = 0.25 - math.log(math.exp(0.5) + math.exp(0.25) + math.exp(2.0))
    # Row 1 is predicted with certainty (loss 0) despite the huge score: no overflow.
    expected = -(0.0 + log_softmax_row_2) / 2
    assert float(demo.cross_entropy(scores, labels)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"batch_size": -1}, "batch_size"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"learning_rate": "0.1"}, "learning_rate"),
        ({"seed": -3}, "seed"),
    ],
)
def test_train_rejects_bad_arguments_by_name(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        demo.train(**kwargs)


@pytest.mark.parametrize("missing", ["sklearn", "tqdm"])
def test_missing_demo_dependency_names_the_install_command(
    missing: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A None entry in sys.modules makes `import` of that name raise ImportError; submodules
    # already imported must go too, or they would still be found.
    for name in [missing, *(key for key in sys.modules if key.startswith(missing + "."))]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(demo.MissingDemoDependency, match=re.escape("pip install 'nadam[demo]'")):
        demo.train(epochs=1)

    assert main(["demo", "--quiet", "--epochs", "1"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"nadam demo: The demo needs the `{missing}` package, which is not installed. "
        "Install the demo extra: pip install 'nadam[demo]'\n"
    )


# --- the command line -----------------------------------------------------------------------
def test_cli_quiet_prints_only_the_accuracy_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--quiet", "--epochs", "2", "--seed", "3"]) == 0
    out, err = capsys.readouterr()
    expected = demo.train(epochs=2, seed=3)
    match = ACCURACY_LINE.fullmatch(out.rstrip("\n"))
    assert match is not None, out
    percent, correct, total, epochs = match.groups()
    assert float(percent) == pytest.approx(100 * expected.test_accuracy, abs=0.005)
    assert int(correct) == round(expected.test_accuracy * 360)
    assert (int(total), int(epochs)) == (360, 2)
    assert err == ""


def test_cli_prints_the_loss_of_every_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["demo", "--epochs", "3", "--seed", "4", "--batch-size", "64", "--learning-rate", "3e-3"]
    assert main(args) == 0
    out, _ = capsys.readouterr()
    expected = demo.train(epochs=3, seed=4, batch_size=64, learning_rate=3e-3)
    epochs = EPOCH_LINE.findall(out)
    assert [(int(e), int(n)) for e, n, _, _ in epochs] == [(1, 3), (2, 3), (3, 3)]
    assert [float(loss) for _, _, loss, _ in epochs] == [
        pytest.approx(loss, abs=5e-5) for loss in expected.losses
    ]
    # The last epoch's test accuracy is the final one.
    assert float(epochs[-1][3]) == pytest.approx(100 * expected.test_accuracy, abs=0.005)
    assert len(ACCURACY_LINE.findall(out)) == 1


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["demo", "--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
        (["demo", "--epochs", "ten"], "argument --epochs: expected a positive integer"),
        (["demo", "--batch-size", "-4"], "argument --batch-size: expected a positive integer"),
        (["demo", "--seed", "-1"], "argument --seed: expected a non-negative integer"),
        (["demo", "--learning-rate", "0"], "argument --learning-rate: expected a positive"),
        (["demo", "--learning-rate", "nan"], "argument --learning-rate: expected a positive"),
        (["demo", "--learning-rate", "inf"], "argument --learning-rate: expected a positive"),
        (["demo", "--optimizer", "adam"], "unrecognized arguments: --optimizer adam"),
        (["train"], "argument COMMAND: invalid choice: 'train'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_cli_bad_arguments_exit_through_argparse(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "usage: python -m nadam" in err
    assert complaint in err


def test_python_dash_m_runs_the_demo() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "nadam", "demo", "--quiet", "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert ACCURACY_LINE.fullmatch(completed.stdout.rstrip("\n")) is not None
