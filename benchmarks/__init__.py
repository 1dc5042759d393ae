"""remoteckpt's benchmarks and reliability soak (``make bench``, ``make soak``): not part of the
installed package, run from the repository root (``python -m benchmarks``).

    micro       the format layer alone: CRC32C, index encode/decode, string payloads
    throughput  save/restore of a tensor set against the raw I/O of the same bytes, TensorFlow's
                tf.train.Checkpoint and PyTorch DCP, on local disk and S3; save_async stall,
                multi-worker save, peak RSS (helpers: harness, baselines, report)

    soak        the reliability tests at scale, bounded in time (``python -m benchmarks.soak``)

Each prints a table and writes JSON under ``bench-results/``; `docs/benchmarks.md` reports a
run and how to reproduce it, `docs/reliability.md` a soak.  ``remoteckpt bench URL`` (the
installed command) measures remoteckpt alone on a given store.

Some share the test suite's helpers (its fault-injecting and request-counting proxy,
tests/faultproxy.py, its workers): they run from the repository root with tests/ on the import
path (``PYTHONPATH=tests``; the make targets put it there).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any


def test_module(name: str, how: str) -> Any:
    """The test suite's module `name` (tests/<name>.py); without tests/ on the import path, exit
    saying `how` to run the benchmark instead."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        sys.exit(f"this runs the test suite's {name}.py: run it from the repository root with tests/ on the "
                 f"import path ({how})")
