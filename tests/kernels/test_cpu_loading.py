"""Loading the fused CPU kernel: numba imported by the first step, compiled code cached on disk
(or not, with one warning), one compiled signature per entry point and dtype, and the reference
after one warning when numba is missing. The fresh-process tests run in a new interpreter
because they are about what a new process does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
from kernel_helpers import (
    BIG,
    DTYPES,
    SRC,
    assert_fused_equals_reference,
    random_grads,
    random_sparse,
    random_variables,
)

from nadam.kernels import cpu


def test_each_entry_point_is_compiled_once_per_dtype():
    # Mismatched argument types would compile (and round) differently: every call must hit
    # one of the signatures compiled up front.
    dense, sparse = [(BIG,), (3,)], [(BIG // 2, 2), (9, 2)]
    for dtype in DTYPES:
        assert_fused_equals_reference(
            random_variables(dense, dtype), random_grads(dense, dtype), steps=1
        )
        assert_fused_equals_reference(
            random_variables(sparse, dtype),
            lambda rng, step, d=dtype: [random_sparse(rng, s, d, 5) for s in sparse],
            steps=1,
        )
    from nadam.kernels import _cpu_numba

    for dispatcher in _cpu_numba.signatures(np.dtype(np.float32)):
        assert len(dispatcher.signatures) == 2, (dispatcher, dispatcher.signatures)


def test_cache_fallback_compiles_uncached_with_one_warning(monkeypatch):
    from nadam.kernels import _cpu_numba

    monkeypatch.setattr(_cpu_numba, "CACHE_PROBLEMS", [])
    namespace: dict[str, Any] = {}
    exec("def twice(a):\n    return a * 2\n", namespace)  # no source file: nowhere to cache
    with pytest.warns(RuntimeWarning, match="cannot cache the compiled CPU kernel"):
        twice = _cpu_numba._jit()(namespace["twice"])
    assert twice(21) == 42
    assert len(_cpu_numba.CACHE_PROBLEMS) == 1


# --- fresh processes -----------------------------------------------------------------------------


def run_python(code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `code` in a new interpreter; it prints one JSON object as its last line."""
    full_env = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        env=full_env, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


STEP_AND_REPORT = """
    import json, sys, time, warnings
    warnings.simplefilter("always")
    import numpy as np
    start = time.perf_counter()
    import nadam
    imported = time.perf_counter()
    numba_after_import = "numba" in sys.modules
    x = nadam.Variable(np.arange(6, dtype=np.float32))
    opt = nadam.Nadam()
    with warnings.catch_warnings(record=True) as caught:
        for _ in range(3):
            opt.apply_gradients([(np.ones(6, np.float32), x)])
    stepped = time.perf_counter()
    with nadam.kernels.reference_only():
        y = nadam.Variable(np.arange(6, dtype=np.float32))
        ref = nadam.Nadam()
        for _ in range(3):
            ref.apply_gradients([(np.ones(6, np.float32), y)])
    from nadam.kernels import cpu
    stats = {}
    if "nadam.kernels._cpu_numba" in sys.modules:
        from nadam.kernels import _cpu_numba as k
        stats = {f.__name__: [sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values())]
                 for f in k.signatures(np.dtype("float32"))}
    print(json.dumps({
        "numba_after_import": numba_after_import,
        "numba_after_step": "numba" in sys.modules,
        "kernel": nadam.kernels.select(nadam.backends.NUMPY_BACKEND, "cpu",
                                       np.dtype("float32")).name,
        "warnings": [str(w.message) for w in caught],
        "same_as_reference": bool((x.numpy() == y.numpy()).all()),
        "import_s": imported - start,
        "first_steps_s": stepped - imported,
        "unavailable": cpu.unavailable_reason(),
        "cache_stats": stats,
    }))
"""


def test_import_is_numpy_only_and_the_first_numpy_step_loads_the_kernel(tmp_path):
    report = run_python(STEP_AND_REPORT, {"NUMBA_CACHE_DIR": str(tmp_path)})
    assert report["numba_after_import"] is False
    assert report["numba_after_step"] is True
    assert report["kernel"] == cpu.NAME
    assert report["same_as_reference"] and report["unavailable"] is None
    # Compiled from scratch, then written to the cache directory for the next process.
    assert all(hits == 0 and misses == 1 for hits, misses in report["cache_stats"].values())
    assert list(tmp_path.rglob("*_cpu_numba.dense_chunks*.nbi"))
    again = run_python(STEP_AND_REPORT, {"NUMBA_CACHE_DIR": str(tmp_path)})
    assert again["same_as_reference"] and again["warnings"] == []
    assert all(hits == 1 and misses == 0 for hits, misses in again["cache_stats"].values())


def test_read_only_install_caches_in_the_user_cache_directory(tmp_path):
    # numba writes next to the module when it can; an install it cannot write to falls back to
    # the user's cache directory, as this locator setting simulates (tests may run as root,
    # for whom no directory is read-only).
    env = {
        "NUMBA_CACHE_LOCATOR_CLASSES": "UserWideCacheLocator",
        "XDG_CACHE_HOME": str(tmp_path),
        "NUMBA_CACHE_DIR": "",
    }
    first = run_python(STEP_AND_REPORT, env)
    assert first["same_as_reference"] and first["warnings"] == []
    assert list((tmp_path / "numba").rglob("*.nbi"))
    second = run_python(STEP_AND_REPORT, env)
    assert all(hits == 1 for hits, _ in second["cache_stats"].values())


def test_without_numba_every_step_runs_the_reference_after_one_warning():
    code = "import sys; sys.modules['numba'] = None  # import numba fails\n" + textwrap.dedent(
        STEP_AND_REPORT
    )
    report = run_python(code)
    assert report["kernel"] == "reference"
    assert report["same_as_reference"]
    assert len(report["warnings"]) == 1, report["warnings"]
    assert "fused CPU kernel is unavailable" in report["warnings"][0]
    assert "numba" in report["unavailable"]
