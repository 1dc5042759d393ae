"""The crash and race phases: jobs of 1, 2 or 4 worker processes run by the reliability harness
(tests/reliability_workers.py), on local disk and S3.  A crash job has one worker killed, is
verified (restores, latest_checkpoint, gc) and maybe restarted; a race is 2 or 3 jobs saving one
prefix, of which exactly one must commit, whole, and leave nothing else behind."""

from __future__ import annotations

import itertools
import os
import threading
import time
import traceback
from typing import Any

import numpy as np

from .runtime import Phase, Tally, import_harness, run_units

# --- crash --------------------------------------------------------------------------------------

CRASH_STAGGER = 0.3
"""Seconds between the first jobs' starts: the workers' first saves do not all start at once."""


def crash_phase(ph: Phase, s3: dict[str, Any], workdir: str, concurrency: int) -> None:
    rw, _ = import_harness()
    from remoteckpt.faults import POINTS

    counter = itertools.count()
    draw_lock = threading.Lock()

    def params() -> dict[str, Any]:
        with draw_lock:
            rng = ph.rng
            world = rng.choice([1, 2, 2, 4])
            p: dict[str, Any] = {"n": next(counter), "backend": rng.choice(["local", "s3"]), "world": world,
                                 "victim": rng.randrange(world), "resume": rng.random() < 0.25}
            if rng.random() < 0.6:
                p["point"] = rng.choice(POINTS)
            else:
                per_step = 0.25 if p["backend"] == "local" else 0.6
                p["kill_after"] = round(rng.uniform(0.05, per_step * 3 * (1 + world / 2)), 3)
            p["save_id"] = f"soak{p['n']}"
            return p

    def one() -> None:
        p = params()
        with ph.unit(p):
            crash_job(ph.tally, rw, p, s3, workdir)

    run_units(ph, one, concurrency, stagger=CRASH_STAGGER)


def crash_job(tally: Tally, rw: Any, params: dict[str, Any], s3: dict[str, Any], workdir: str) -> None:
    """One crash scenario (its own save id), verified; maybe restarted from its latest checkpoint."""
    if params["backend"] == "s3":
        base, env, options = s3["base"], s3["env"], {"part_size": rw.PART_SIZE}
    else:
        base, env, options = workdir, {}, None
    sc = rw.Scenario(rw.scenario_directory(base, f"soak{params['n']}"), world=params["world"],
                     victim=params["victim"], point=params.get("point"), kill_after=params.get("kill_after"),
                     env=env, storage_options=options, save_id=params["save_id"])
    try:
        result = rw.run_scenario(sc)
        verdict = rw.verify(sc.directory, sc.world, storage_options=options)
    except Exception:  # noqa: BLE001 - a harness failure is reported, not fatal
        tally.violation("crash", "harness error: " + traceback.format_exc(), params)
        return
    problems = verdict.problems + rw.check_run(result)
    tally.add(crash_scenarios=1, kills_injected=int(result.injected),
              named_point_kills=int(result.injected and sc.point is not None),
              random_kills=int(result.injected and sc.kill_after is not None),
              checkpoints_verified=verdict.checkpoints, restores_byte_exact=verdict.restored_exact,
              silent_corruptions=verdict.silent_corruptions, unrestorable_committed=verdict.unrestorable,
              gc_removed_objects=verdict.removed_by_gc, gc_aborted_uploads=verdict.aborted_uploads,
              leftover_workers_killed=len(result.killed_leftovers),
              spurious_save_failures=int(rw.spurious_failure(result)),
              **{f"crash_{params['backend']}": 1, f"crash_world{sc.world}": 1})
    for p in problems:
        tally.violation("crash", p, params)
    if params.get("resume") and verdict.latest is not None and not problems:
        start = int(verdict.latest.rsplit("-", 1)[1]) + 1
        resumed = rw.run_scenario(rw.Scenario(sc.directory, world=sc.world, start_step=start, env=env,
                                              storage_options=options, save_id=f"{params['save_id']}-restart"))
        errors = resumed.errors()
        tally.add(resumed_jobs=1, resumed_completed=int(resumed.exit_codes == [0] * sc.world))
        if errors:
            tally.note(f"restarted job failed: {errors[0]['error']} at step {errors[0]['step']}")
            if errors[0]["error"] == "CheckpointExistsError":
                tally.add(resume_blocked_by_unrecorded_checkpoint=1)


# --- racing jobs --------------------------------------------------------------------------------

def race_phase(ph: Phase, s3: dict[str, Any], workdir: str) -> None:
    rw, _ = import_harness()
    counter = itertools.count(1)

    def one() -> None:
        rng = ph.rng
        n = next(counter)
        world, jobs, backend = rng.choice([1, 2, 2, 4]), rng.choice([2, 2, 3]), rng.choice(["local", "s3"])
        schedule = [(who, rank, round(rng.uniform(0, 0.5), 3)) for who in range(1, jobs + 1) for rank in range(world)]
        repro = {"n": n, "backend": backend, "world": world, "schedule": schedule}
        with ph.unit(repro):
            race_once(ph.tally, rw, repro, s3, workdir)

    run_units(ph, one)


def race_once(tally: Tally, rw: Any, repro: dict[str, Any], s3: dict[str, Any], workdir: str) -> None:
    """Jobs `repro["schedule"]` race for one prefix: one winner, whole, nothing else left."""
    import remoteckpt
    from remoteckpt.format.bundle import data_filename

    n, backend, world = repro["n"], repro["backend"], repro["world"]
    if backend == "s3":
        directory, env, options = f"{s3['base']}/race-{n}", s3["env"], {"part_size": rw.PART_SIZE}
    else:
        directory, env, options = os.path.join(workdir, f"race-{n}"), {}, None
    prefix = f"{directory}/ck"
    records = rw.run_committers(prefix, repro["schedule"], world, env, options)
    winners = {r["who"] for r in records if r.get("ok")}
    tally.add(races=1, race_workers=len(records), **{f"race_{backend}": 1, f"race_world{world}": 1})
    if len(winners) != 1:
        tally.add(race_no_winner=int(not winners), race_several_winners=int(len(winners) > 1))
        tally.violation("race", f"{len(winners)} jobs committed: {records}", repro)
        return
    (winner,) = winners
    for r in records:
        if r["who"] == winner and not r.get("ok"):
            tally.violation("race", f"a worker of the winning job failed: {r}", repro)
        elif r["who"] != winner and r.get("error") not in ("CheckpointExistsError", "CheckpointBusyError"):
            tally.violation("race", f"a loser failed unclearly: {r}", repro)
        elif r["who"] != winner:
            tally.add(**{f"race_loser_{r['error']}": 1})
    got = remoteckpt.load(prefix, storage_options=options)
    want = {k: np.asarray(v) for rank in range(world) for k, v in rw.committer_tensors(winner, rank).items()}
    exact = set(got) == set(want) and all(got[k].tobytes() == want[k].tobytes() for k in want)
    tally.add(race_winner_byte_exact=int(exact))
    if not exact:
        tally.violation("race", "the committed checkpoint is not the winner's tensors", repro)
    expected = sorted([data_filename("ck", r, world) for r in range(world)] + ["ck.index"])
    end = time.monotonic() + 30  # the coordinator deletes its outcome once acknowledged
    while True:
        infos, uploads = rw._list(directory, options)
        keys = sorted(i.key for i in infos)
        if (keys == expected and not uploads) or time.monotonic() > end:
            break
        time.sleep(0.2)
    if keys != expected or uploads:
        tally.add(race_leftovers=1)
        tally.violation("race", f"left behind: {sorted(set(keys) - set(expected))}, uploads {uploads}", repro)
