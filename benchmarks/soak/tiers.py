"""The tiers phase: jobs of 1, 2 or 4 worker processes saving through a local tier shared by
the job's workers, drained to S3 (tests/tier_workers.py); one worker SIGKILLed at a named point
of step 1's local commit or drain; both tiers checked right after the kill and after a
restarted job resumed the unfinished drains, then `gc` of both tiers checked."""

from __future__ import annotations

import itertools
import tempfile
import threading
import traceback
from typing import Any

from .runtime import Phase, Tally, import_harness, run_units, test_module

TIERS_STAGGER = 0.5
"""Seconds between the first jobs' starts (their workers' first saves compete for the CPU)."""


def tiers_phase(ph: Phase, s3: dict[str, Any], concurrency: int) -> None:
    rw, _ = import_harness()
    tw = test_module("tier_workers")
    counter = itertools.count()
    draw_lock = threading.Lock()
    points = tw.LOCAL_POINTS + tw.DRAIN_POINTS

    def params() -> dict[str, Any]:
        with draw_lock:
            rng = ph.rng
            while True:
                world = rng.choice([1, 2, 2, 4])
                point, victim = rng.choice(points), rng.randrange(world)
                if tw.reachable(point, world, victim):
                    return {"n": next(counter), "world": world, "point": point, "victim": victim}

    def one() -> None:
        p = params()
        with ph.unit(p):
            tiers_job(ph.tally, rw, tw, p, s3)

    run_units(ph, one, concurrency, stagger=TIERS_STAGGER)


def tiers_job(tally: Tally, rw: Any, tw: Any, p: dict[str, Any], s3: dict[str, Any]) -> None:
    """One scenario of tests/test_tiers_crash.py's, verified the same way."""
    with tempfile.TemporaryDirectory(prefix="rk-soak-tier-") as tier:
        try:
            run = tw.run(rw.scenario_directory(s3["base"], f"tiers{p['n']}"), tier, p["world"], p["point"],
                         p["victim"], s3["env"], {"part_size": rw.PART_SIZE})
        except Exception:  # noqa: BLE001 - a harness failure is reported, not fatal
            tally.violation("tiers", "harness error: " + traceback.format_exc(), p)
            return
    problems = list(run.tier_problems)
    for verdict in (run.before, run.after):
        problems += verdict.problems
    if "error" in run.restart:
        problems.append(f"the restarted job failed: {run.restart}")
    if run.leftovers:
        problems.append(f"ranks {run.leftovers} still ran at the bound")
    problems += [f"rank failed with a non-remoteckpt error: {r['error']}: {r['message']}"
                 for recs in run.records for r in recs if "error" in r and not r["remoteckpt"]]
    tally.add(tier_jobs=1, tier_kills_injected=int(run.injected), **{f"tier_world{p['world']}": 1},
              tier_locally_committed=len(run.locally_committed), tier_remote_checkpoints=run.after.checkpoints,
              tier_restores_byte_exact=run.after.restored_exact,
              tier_silent_corruptions=run.before.silent_corruptions + run.after.silent_corruptions)
    for problem in problems:
        tally.violation("tiers", problem, p)
