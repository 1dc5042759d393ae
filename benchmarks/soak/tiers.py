"""The tiers phase, two kinds of job in turn, one worker SIGKILLed at a named point of step 1's
local commit or drain each:

  shared    jobs of 1, 2 or 4 worker processes saving through a local tier shared by the job's
            workers, drained to S3 (tests/tier_workers.py); both tiers checked right after
            the kill and after a restarted job resumed the unfinished drains, then `gc` of both
            tiers checked
  per-host  jobs whose hosts have a tier each (`LocalTier(per_host=True)`): 1 worker, 2 hosts
            of 1, 2 hosts of 2 or 4 hosts of 1 (tests/host_tier_workers.py); the remote prefix
            checked right after the kill, every host's tier after `gc` (half the jobs restart
            first, `gc` after), and both after a restarted job resumed (or, one job in five,
            dropped: ``resume=False``) the drains and saved the next step; each host's tier
            holding its own workers' files only

Each kind's checks are its test's (tests/test_tiers_crash.py, tests/test_tiers_hosts.py); every
problem is a violation of the phase, a per-host job's named so."""

from __future__ import annotations

import itertools
import tempfile
import threading
import traceback
from typing import Any

from .runtime import Phase, Tally, import_harness, run_units, test_module

TIERS_STAGGER = 0.5
"""Seconds between the first jobs' starts (their workers' first saves compete for the CPU)."""
HOST_LAYOUTS = ((1, 1), (2, 1), (4, 2), (4, 1))
"""(workers, workers a host) of the per-host jobs."""
DROP_EVERY = 5
"""One per-host restart in this many drops the unfinished drains (``resume=False``)."""


def tiers_phase(ph: Phase, s3: dict[str, Any], concurrency: int) -> None:
    rw, _ = import_harness()
    tw = test_module("tier_workers")
    hw = test_module("host_tier_workers")
    counter = itertools.count()
    draw_lock = threading.Lock()
    points = tw.LOCAL_POINTS + tw.DRAIN_POINTS

    def params() -> dict[str, Any]:
        """The next job's parameters: shared and per-host jobs in turn."""
        with draw_lock:
            rng, n = ph.rng, next(counter)
            while n % 2 == 0:  # until a reachable draw
                world = rng.choice([1, 2, 2, 4])
                point, victim = rng.choice(points), rng.randrange(world)
                if tw.reachable(point, world, victim):
                    return {"n": n, "kind": "shared", "world": world, "point": point, "victim": victim}
            while True:
                world, per_host = rng.choice(HOST_LAYOUTS)
                point, victim = rng.choice(hw.POINTS), rng.randrange(world)
                if hw.reachable(point, world, victim):
                    return {"n": n, "kind": "per-host", "world": world, "per_host": per_host, "point": point,
                            "victim": victim, "resume": rng.randrange(DROP_EVERY) != 0,
                            "gc_first": rng.randrange(2) == 0}

    def one() -> None:
        p = params()
        with ph.unit(p):
            if p["kind"] == "shared":
                tiers_job(ph.tally, rw, tw, p, s3)
            else:
                hosts_job(ph.tally, rw, hw, p, s3)

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


def hosts_job(tally: Tally, rw: Any, hw: Any, p: dict[str, Any], s3: dict[str, Any]) -> None:
    """One scenario of tests/test_tiers_hosts.py's, verified the same way."""
    with tempfile.TemporaryDirectory(prefix="rk-soak-hosts-") as tiers:
        try:
            run = hw.run(rw.scenario_directory(s3["base"], f"hosts{p['n']}"), tiers, p["world"], p["per_host"],
                         p["point"], p["victim"], s3["env"], resume=p["resume"], gc_first=p["gc_first"])
        except Exception:  # noqa: BLE001 - a harness failure is reported, not fatal
            tally.violation("tiers", "per-host: harness error: " + traceback.format_exc(), p)
            return
    layout = f"host_tier_w{p['world']}x{p['per_host']}"
    tally.add(host_tier_jobs=1, host_tier_kills_injected=int(run.injected), **{layout: 1},
              host_tier_locally_committed=int(run.outcome == "local"),
              host_tier_remote_committed=int(run.outcome == "remote"),
              host_tier_dropped=int(not p["resume"] and run.outcome == "local"),
              host_tier_remote_checkpoints=run.checkpoints, host_tier_restores_byte_exact=run.restored_exact,
              host_tier_silent_corruptions=sum("SILENT CORRUPTION" in problem for problem in run.problems))
    for problem in run.problems:
        tally.violation("tiers", f"per-host: {problem}", p)
