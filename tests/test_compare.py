"""`python -m nadam compare` (`nadam.compare`): the Nadams people confuse, side by side.

One short run of every peer (tf_keras and Keras 3 are in the test extra, so none is skipped
here) checks the claims the README makes from the picture: ours is Keras 2 bit for bit at every
step, ours with `schedule_decay=1.0` is Keras 3's Nadam up to rounding (relative distance
below 1e-6, where Keras 2 is 1e-5 away after a single step), torch's NAdam is Keras 2 up to
rounding and optax's is another algorithm.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from nadam import compare
from nadam.__main__ import main

STEPS = 6


@pytest.fixture(scope="module")
def everyone() -> compare.Comparison:
    return compare.compare(steps=STEPS, seed=3)


def test_every_peer_trains_from_the_same_start(everyone: compare.Comparison) -> None:
    assert not everyone.skipped
    assert set(everyone.trajectories) == set(compare.PEER_NAMES)
    starts = [t.weights[0] for t in everyone.trajectories.values()]
    assert all(np.array_equal(start, starts[0]) for start in starts)
    first_losses = {t.losses[0] for t in everyone.trajectories.values()}
    assert len(first_losses) == 1  # the same first batch, the same weights: one loss
    for t in everyone.trajectories.values():
        assert t.weights.shape == (STEPS + 1, 64 * 64 + 64 + 64 * 10 + 10)
        assert t.losses.shape == (STEPS,) and np.all(np.isfinite(t.losses))


def test_ours_is_keras_2_bit_for_bit_at_every_step(everyone: compare.Comparison) -> None:
    assert everyone.reference == "keras2"  # the real tf_keras optimizer is the reference
    ours, keras2 = everyone.trajectories["nadam"], everyone.trajectories["keras2"]
    np.testing.assert_array_equal(ours.weights, keras2.weights, strict=True)
    np.testing.assert_array_equal(everyone.distances["nadam"], np.zeros(STEPS + 1))
    assert ours.train_loss == keras2.train_loss


def test_schedule_decay_one_is_keras_3_up_to_rounding(everyone: compare.Comparison) -> None:
    to_keras3 = everyone.between("nadam-sd1", "keras3")
    to_keras2 = everyone.distances["nadam-sd1"]
    # Not bit for bit (Keras 3 rounds m + (g - m)(1 - beta_1), Keras 2 beta_1 m + (1 - beta_1) g)
    # but as close as rounding gets, where the schedules differ by far more from the start.
    assert 0 < to_keras3[STEPS] < 1e-6
    assert np.all(to_keras3[1:] < 1e-6)
    assert np.all(to_keras2[1:] > 1e-5)
    assert np.all(everyone.distances["keras3"][1:] > 1e-5)


def test_torch_is_keras_2_up_to_rounding_and_optax_is_not(everyone: compare.Comparison) -> None:
    assert np.all(everyone.distances["torch"][1:] < 1e-6)
    assert np.all(everyone.distances["optax"][1:] > 1e-4)


def test_the_table_and_the_picture(everyone: compare.Comparison, tmp_path) -> None:
    text = compare.table(everyone)
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("nadam.Nadam (Keras 2"))
    assert row.count("0 (same)") == 2  # dist@1 and dist@STEPS (10 and 100 are past the end)
    assert "dist@1" in lines[0] and f"dist@{STEPS}" in lines[0]
    assert any("schedule_decay=1.0) vs Keras 3" in line for line in lines)
    path = compare.plot(everyone, tmp_path / "compare.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and 10_000 < len(data) < 200_000


def test_command_line_skips_a_missing_peer_with_a_line(monkeypatch, tmp_path, capsys) -> None:
    # As if torch and Keras 3 were not installed: Python refuses to import a module that is
    # None in sys.modules.
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "keras", None)
    out = tmp_path / "out.png"
    status = main(["compare", "--steps", "2", "--peers", "nadam", "torch", "keras3",
                   "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0
    assert "skipped torch.optim.NAdam: torch is not installed" in printed
    assert "skipped keras.optimizers.Nadam (Keras 3): keras is not installed" in printed
    assert f"wrote {out}" in printed and out.read_bytes().startswith(b"\x89PNG")
    table_rows = [line for line in printed.splitlines() if line.startswith(("torch.", "keras."))]
    assert table_rows == []  # skipped peers have no row


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"learning_rate": float("nan")}, "learning_rate must be a positive finite number"),
        ({"peers": ("nadam", "adam")}, r"Unknown peers \['adam'\]"),
        ({"peers": ()}, "Unknown peers"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        compare.compare(**kwargs)


def test_command_line_rejects_bad_options(capsys) -> None:
    for argv in (["compare", "--steps", "0"], ["compare", "--peers", "adam"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "--peers" in capsys.readouterr().err
