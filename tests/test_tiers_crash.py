"""Crash consistency across tiers: real worker processes with a shared local tier, SIGKILLed at
every named point of a local commit and of a drain to the SeaweedFS S3 server, with 1, 2 and 4
workers; then a restarted job resumes the unfinished drains, and `gc` cleans both tiers.

Checked (tests/tier_workers.py, with tests/reliability_workers.py's remote verifier):
  - right after the kill, every remote index restores exactly the tensors of its step (the
    remote prefix holds the previous checkpoint or the complete new one, never a torn one),
    and the state file lists only complete checkpoints;
  - every worker finished, was the victim, or failed with a remoteckpt error (no hang);
  - after the restart, every checkpoint that was committed locally is durable and complete
    remotely, every checkpoint of the tier restores exactly from the nearest tier, and `gc`
    of both tiers leaves no staging, temp file, claim, data without index or stray record.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import reliability_workers as rw
import tier_workers as tw

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

CONCURRENT = 4

CASES = ([(point, 1, 0) for point in tw.LOCAL_POINTS + tw.DRAIN_POINTS if tw.reachable(point, 1, 0)]
         + [(point, 2, 0) for point in ("mid-upload", "merged", "committed", *tw.DRAIN_POINTS)]
         + [(point, 2, 1) for point in ("staged", "mid-upload", "data-written", "table-written")]
         + [(point, 4, 0) for point in ("committing", "mid-copy", "drain-committing", "drained")]
         + [("mid-upload", 4, 3)])
"""(point, world, victim): every point of a local commit and of a drain with one worker; with
two, the drain's points, the coordinator's local commit before and after its commit, and the
other worker at each of its points; with four, the coordinator's commit and drain and a
worker's upload.  benchmarks/soak (``--tiers``) runs every point with 1, 2 and 4 workers."""

AFTER_REMOTE_COMMIT = ("drained", "state-writing")
BEFORE_LOCAL_COMMIT = ("staged", "mid-upload", "data-written", "table-written", "merged", "committing")


@pytest.fixture(scope="module")
def runs(s3_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int, int], tw.TierRun]:
    base = f"s3://{s3_server.bucket}/tiers-crash-{random.getrandbits(32):08x}"
    env = s3_server.env()
    options = {"part_size": rw.PART_SIZE}

    def one(case: tuple[str, int, int]) -> tw.TierRun:
        point, world, victim = case
        tag = f"{point}-w{world}-r{victim}"
        tier = str(tmp_path_factory.mktemp(f"tier-{tag}"))
        return tw.run(rw.scenario_directory(base, tag), tier, world, point, victim, env, options)

    tmp_path_factory.getbasetemp()  # made once, before the threads ask for directories in it
    with ThreadPoolExecutor(CONCURRENT) as pool:
        return dict(zip(CASES, pool.map(one, CASES)))


@pytest.mark.parametrize(("point", "world", "victim"), CASES,
                         ids=[f"{p}-w{w}-{'coordinator' if v == 0 else 'worker'}" for p, w, v in CASES])
def test_kill_across_tiers(runs: dict[tuple[str, int, int], tw.TierRun], point: str, world: int, victim: int) -> None:
    run = runs[point, world, victim]
    errors = [(r["step"], r["error"], r["message"]) for recs in run.records for r in recs if "error" in r]
    what = (run.describe(), run.exit_codes, errors, run.restart)
    assert run.injected, what
    assert run.leftovers == [], what
    assert all(r["remoteckpt"] for recs in run.records for r in recs if "error" in r), what
    assert run.before is not None and run.after is not None
    for verdict in (run.before, run.after):
        assert verdict.silent_corruptions == 0 and verdict.problems == [], (what, verdict.problems)
        assert verdict.restored_exact == verdict.checkpoints, what
    assert "error" not in run.restart, what
    assert run.tier_problems == [], (what, run.tier_problems)
    step1 = f"{run.directory}/{rw.NAME}-1"
    if point in AFTER_REMOTE_COMMIT:
        assert step1 in run.remote_before, what  # committed remotely before the kill
    elif point in tw.DRAIN_POINTS:
        assert step1 not in run.remote_before and step1 in run.locally_committed, what
    elif point in ("staged", "mid-upload", "data-written") or (point in BEFORE_LOCAL_COMMIT and victim == 0):
        assert step1 not in run.locally_committed and step1 not in run.remote_before, what  # nowhere
    elif point == "committed":
        assert step1 in run.locally_committed and step1 not in run.remote_before, what
