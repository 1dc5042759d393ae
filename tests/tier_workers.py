"""Crash consistency across tiers: worker processes that save through a `remoteckpt.Saver` with
a local tier and die (SIGKILL) at a named point of a local commit or of a drain; a restarted
job that resumes the drains left unfinished; a verifier of both tiers.

Used by tests/test_tiers_crash.py and benchmarks/soak (``--tiers``).  The workers, their
tensors and the remote tier's verifier are tests/reliability_workers.py's (`rw`): the same
deterministic tensors per (step, rank), the same rules for what a remote directory may hold.

A scenario: a fresh remote directory and a fresh local tier shared by the job's N workers
(the processes of one host), steps 0..2 saved by each worker's Saver (max_to_keep=2 remotely,
keep=1 locally); rank 0 waits for each step's drain before the next step, so a drain point
of step 1 is reached at a known arrival.  The victim dies during step 1 (`crash_spec`).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import reliability_workers as rw

import remoteckpt
from remoteckpt.faults import ENV as CRASH_ENV
from remoteckpt.options import IOOptions
from remoteckpt.protocol.layout import SAVE_ID_ENV
from remoteckpt.tiers.layout import LocalTier, checkpoints

STEPS = 3
KEEP = 1
MAX_TO_KEEP = 2
COMMIT_TIMEOUT = 20.0
"""Workers > 0 wait for rank 0's invitation to step 2 while rank 0 drains step 1 (20 MiB
to S3 on a loaded machine): longer than the plain crash tests' 4 s."""

LOCAL_POINTS = ("staged", "mid-upload", "data-written", "table-written", "merged", "committing", "committed")
"""Points of step 1's local commit (the save protocol on the tier)."""
DRAIN_POINTS = ("draining", "mid-copy", "drain-committing", "drained", "state-writing")
"""Points of step 1's drain (rank 0): before it starts, after its first chunk is copied,
inside its remote commit, after the remote commit (marker not yet written), and before the
remote state file is written."""
COORDINATOR_ONLY = ("merged", "committing", "committed", *DRAIN_POINTS)


def reachable(point: str, world: int, victim: int) -> bool:
    if point in COORDINATOR_ONLY and victim != 0:
        return False
    return not (point == "table-written" and world == 1)


def crash_spec(point: str, world: int) -> str:
    """``REMOTECKPT_CRASH_AT`` for `point` during step 1.  Each step passes every point once,
    except "committing", which rank 0 passes twice a step: its local commit, then its drain's
    remote commit (steps 0 and 1: arrivals 1, 2, then 3, 4), and "mid-copy", passed once per
    data file (`world` a step)."""
    if point == "mid-copy":
        return f"mid-copy:{world + 1}"
    if point == "committing":
        return "committing:3"
    if point == "drain-committing":
        return "committing:4"
    return f"{point}:2"


def tier_main(directory: str, tier: str, rank: int, world: int, crash_at: str | None, env: dict[str, str],
              storage_options: dict[str, Any] | None, result_path: str) -> None:
    """Save steps 0..2 through a tiered Saver; a JSON line per step and for an error."""
    os.environ.update(env)
    os.environ.pop(CRASH_ENV, None)
    if crash_at:
        os.environ[CRASH_ENV] = crash_at
    import logging
    logging.getLogger("remoteckpt").setLevel(logging.ERROR)
    saver = remoteckpt.Saver(max_to_keep=MAX_TO_KEEP, rank=rank, world_size=world, storage_options=storage_options,
                             options=IOOptions(commit_timeout=COMMIT_TIMEOUT, poll_interval=0.02,
                                               lease_timeout=rw.LEASE_TIMEOUT),
                             local_tier=LocalTier(path=tier, keep=KEEP))
    with open(result_path, "a") as log:
        for step in range(STEPS):
            try:
                saver.save(rw.tensors_for(step, rank, world, step == rw.BIG_STEP), f"{directory}/{rw.NAME}",
                           global_step=step)
                if rank == 0:
                    saver.wait_durable()
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                log.write(json.dumps({"step": step, "error": type(exc).__name__, "message": str(exc)[:500],
                                      "remoteckpt": isinstance(exc, remoteckpt.CheckpointError),
                                      "traceback": traceback.format_exc()[-2000:]}) + "\n")
                rw._exit_with(log, 1)
            log.write(json.dumps({"step": step, "ok": True}) + "\n")
            log.flush()
        rw._exit_with(log, 0)


def restart_main(directory: str, tier: str, env: dict[str, str], storage_options: dict[str, Any] | None,
                 result_path: str) -> None:
    """A restarted job's rank 0: its Saver adopts the directory and resumes the drains the
    dead job left; it waits for them (no new save)."""
    os.environ.update(env)
    os.environ.pop(CRASH_ENV, None)
    record: dict[str, Any]
    try:
        saver = remoteckpt.Saver(max_to_keep=MAX_TO_KEEP, storage_options=storage_options,
                                 options=IOOptions(lease_timeout=rw.LEASE_TIMEOUT),
                                 local_tier=LocalTier(path=tier, keep=KEEP))
        saver.adopt(directory)
        record = {"durable": saver.wait_durable(120)}
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        record = {"error": type(exc).__name__, "message": str(exc)[:500], "traceback": traceback.format_exc()[-2000:]}
    with open(result_path, "w") as f:
        json.dump(record, f)
    os._exit(0)


@dataclass
class TierRun:
    directory: str
    tier: str
    world: int
    point: str
    victim: int
    exit_codes: list[int | None] = field(default_factory=list)
    records: list[list[dict[str, Any]]] = field(default_factory=list)
    leftovers: list[int] = field(default_factory=list)
    restart: dict[str, Any] = field(default_factory=dict)
    locally_committed: list[str] = field(default_factory=list)   # after the crash, before the restart
    remote_before: list[str] = field(default_factory=list)       # remote indexes, after the crash
    before: rw.Verdict | None = None                             # remote directory, after the crash
    after: rw.Verdict | None = None                              # remote directory, after the restart and gc
    tier_problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.directory} world={self.world} victim={self.victim} crash at {self.point}"

    @property
    def injected(self) -> bool:
        return self.exit_codes[self.victim] == -signal.SIGKILL


def run(directory: str, tier: str, world: int, point: str, victim: int, env: dict[str, str],
        storage_options: dict[str, Any] | None, bound: float = 120.0) -> TierRun:
    """The job (killed at `point`), the checks of the remote tier it left, the restart, and
    the checks of both tiers after it and after `gc`."""
    ctx = rw.context()
    result = TierRun(directory, tier, world, point, victim)
    env = {**env, SAVE_ID_ENV: f"tiers-{os.path.basename(directory)}"}
    with tempfile.TemporaryDirectory(prefix="rk-tiers-") as results:
        paths = [os.path.join(results, f"rank{r}.jsonl") for r in range(world)]
        procs = []
        for rank in range(world):
            crash_at = crash_spec(point, world) if rank == victim else None
            p = ctx.Process(target=tier_main, daemon=True,
                            args=(directory, tier, rank, world, crash_at, env, storage_options, paths[rank]))
            p.start()
            procs.append(p)
        deadline = time.monotonic() + bound
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
        result.leftovers = [r for r, p in enumerate(procs) if p.exitcode is None]
        for r in result.leftovers:
            procs[r].kill()
            procs[r].join(10)
        for path in paths:
            try:
                with open(path) as f:
                    result.records.append([json.loads(line) for line in f if line.strip()])
            except FileNotFoundError:
                result.records.append([])
        result.exit_codes = [rw._exit_code(p.exitcode, recs, killed=r in result.leftovers)
                             for r, (p, recs) in enumerate(zip(procs, result.records))]
        result.locally_committed = [c.remote for c in checkpoints(LocalTier(path=tier)) if c.committed]
        result.before = rw.verify(directory, world, storage_options=storage_options, run_gc=False)
        infos, _ = rw._list(directory, storage_options)
        result.remote_before = [f"{directory}/{i.key[: -len('.index')]}" for i in infos if i.key.endswith(".index")]
        restart_path = os.path.join(results, "restart.json")
        p = ctx.Process(target=restart_main, daemon=True, args=(directory, tier, env, storage_options, restart_path))
        p.start()
        p.join(bound)
        if p.exitcode is None:
            p.kill()
            p.join(10)
        try:
            with open(restart_path) as f:
                result.restart = json.load(f)
        except FileNotFoundError:
            result.restart = {"error": "no record", "exitcode": p.exitcode}
    result.after = rw.verify(directory, world, storage_options=storage_options)
    result.tier_problems = check_tier(directory, tier, world, storage_options, result.locally_committed)
    return result


def check_tier(directory: str, tier: str, world: int, storage_options: dict[str, Any] | None,
               locally_committed: list[str]) -> list[str]:
    """After the restart: every checkpoint committed locally is durable (its marker) and
    complete remotely, every checkpoint of the tier restores exactly from the nearest tier, and
    `gc` of both tiers leaves the tier only checkpoints with their records."""
    problems = []
    layer = LocalTier(path=tier, keep=KEEP)
    on_tier = {c.remote: c for c in checkpoints(layer)}
    for remote in locally_committed:
        step = int(remote.rsplit("-", 1)[1])
        c = on_tier.get(remote)
        if c is not None and not c.durable:
            problems.append(f"{remote}: committed locally, not durable after the restart's resumed drain")
        verdict = rw.Verdict()
        if not rw.check_checkpoint(remote, rw.expected_checkpoint(step, world, rw.BIG_STEP), storage_options, verdict,
                                   "remote after restart") and _retained(directory, remote, storage_options):
            problems += verdict.problems
    for remote, c in on_tier.items():
        if not c.committed:
            continue
        step = int(remote.rsplit("-", 1)[1])
        verdict = rw.Verdict()
        try:
            got = remoteckpt.load(remote, storage_options=storage_options, local_tier=layer)
        except remoteckpt.CheckpointError as exc:
            problems.append(f"{remote} does not restore from its nearest tier: {exc}")
            continue
        want = rw.expected_checkpoint(step, world, rw.BIG_STEP)
        if set(got) != set(want) or not all(rw._same(got[n], want[n]) for n in want):
            problems.append(f"{remote} restores from its nearest tier, but differs")
        problems += verdict.problems
    remoteckpt.gc(directory, older_than=0, storage_options=storage_options, local_tier=layer)
    for dirpath, _, files in os.walk(tier):
        for file in files:
            path = os.path.join(dirpath, file)
            base = path
            for suffix in (".tier", ".durable", ".index"):
                base = base.removesuffix(suffix)
            base = base.split(".data-")[0]
            if ".tempstate" in file or ".tmp" in path or file.endswith(".claim"):
                problems.append(f"tier after gc: leftover {path}")
            elif file != "checkpoint" and not os.path.exists(base + ".index"):
                problems.append(f"tier after gc: {path} belongs to no committed checkpoint")
    return problems


def _retained(directory: str, remote: str, storage_options: dict[str, Any] | None) -> bool:
    """Whether remote retention still keeps `remote` (an older checkpoint may be retired)."""
    state = remoteckpt.get_checkpoint_state(directory, storage_options=storage_options)
    return state is None or remote.rsplit("/", 1)[1] in state.all_model_checkpoint_paths
