"""How fast is one Nadam step, next to the memory-bandwidth limit and to the other Nadams?

The benchmark is `nadam.bench`, which ships with the package so that `python -m nadam bench`
(its quick version) runs from any install; this script runs it from the source repository,
every case and every peer unless told `--quick`. Its docstring says what is measured and how.

    python benchmarks/bench_step.py                 # everything (about eight minutes)
    python benchmarks/bench_step.py --rounds 3      # everything three times, interleaved
    python benchmarks/bench_step.py --quick         # small cases, fewer steps (under a minute)
    python benchmarks/bench_step.py --cases 16M --impls nadam torch-foreach
"""

from __future__ import annotations

import sys

from nadam.bench import main

if __name__ == "__main__":
    sys.exit(main())
