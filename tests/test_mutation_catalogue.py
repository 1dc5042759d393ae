"""The mutation catalogue (tests/mutation/catalogue.py) still applies to the code: every
snippet is found exactly once in its file, every mutant compiles, every test file it names
exists.  `make mutate` runs the mutants; this keeps the catalogue from drifting between runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_mutation_still_applies() -> None:
    done = subprocess.run([sys.executable, "tests/mutation/run.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
