"""The benchmark's Keras 3 rows run (`nadam.bench`, tiny size): Keras 3's Nadam and ours on
each backend, one worker process per backend, as the benchmark runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from keras3_helpers import BACKENDS

KEYS = {"jax": "jax", "torch": "torch", "tensorflow": "tf"}
CODE = """
import json, sys
from nadam.bench import Case, worker
case = Case("tiny", [(256,), (8, 3)], 1, 2)
print(json.dumps({key: worker(key, case, False) for key in sys.argv[1:]}))
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras3_rows_run(backend: str) -> None:
    keys = [f"keras3-{KEYS[backend]}", f"nadam-keras3-{KEYS[backend]}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    env.pop("KERAS_BACKEND", None)
    done = subprocess.run([sys.executable, "-c", CODE, *keys], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for key in keys:
        assert results[key]["median_s"] > 0, results[key]
        assert len(results[key]["times_s"]) == 2
