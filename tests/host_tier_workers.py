"""Workers of a job whose hosts each have a local tier of their own (`LocalTier(per_host=True)`):
processes standing for the workers of a job, the workers of a host sharing that host's tier
directory, saving through a `remoteckpt.Saver` to a remote directory (S3, or local disk).
Used by tests/test_tiers_hosts.py and benchmarks/soak (``--only tiers``).

The crash harness (`run`): a fresh remote directory and a fresh tier per host, a job of
`world` workers, `per_host` of them on each host (rank r on host r // per_host), saving steps
0 and 1, each worker waiting for its drain of each step; worker `victim` is SIGKILLed at a
named point of step 1's local commit or drain.  Then, checked with the remote directory and
every host's tier (`HostRun.problems`):

  - right after the kill: the remote prefix holds step 0 and at most a complete step 1 (each
    restores exactly), never a torn one; whether step 1 was committed locally or remotely is
    what the point implies; every survivor finished or failed with a remoteckpt error;
  - after `gc` on every host (both tiers): step 1's local commit is on every host's tier (a
    host whose worker died before it wrote the index gets it back) or on none (with
    ``gc_first=False`` the job restarts at once, and `gc` runs after the restart only);
  - a restarted job (a Saver on every rank: the drains left unfinished resumed, or dropped with
    ``resume=False``) saves step 2, and it drains on every worker; then every checkpoint left
    restores exactly, the remote copy of each is byte for byte every host's, and after `gc`
    neither tier holds a leftover;
  - throughout, each host's tier holds its own workers' data files and tables only.
"""

from __future__ import annotations

import json
import os
import re
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import remoteckpt
from remoteckpt.engine import loop
from remoteckpt.faults import ENV as CRASH_ENV
from remoteckpt.options import IOOptions
from remoteckpt.storage import open_store

ROWS = 64
NAME = "model.ckpt"


def tensors(step: int, rank: int, world: int) -> dict[str, Any]:
    """Worker `rank`'s tensors at `step`: a frozen tensor that no step changes (copied by the
    drains of incremental saves; first, so that a save passes "mid-upload" once it is written),
    its rows of a partitioned table, and its own state."""
    rows = np.arange(rank * ROWS, (rank + 1) * ROWS, dtype=np.float32)[:, None] * np.ones(8, np.float32) + step
    return {f"rank{rank}/frozen": np.arange(2**20, dtype=np.float32) + rank,
            "table": remoteckpt.Slice(rows, full_shape=(world * ROWS, 8), offset=(rank * ROWS, 0)),
            f"rank{rank}/state": np.full(1000, step * 10 + rank, np.int64)}


def expected(step: int, world: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {"table": np.arange(world * ROWS, dtype=np.float32)[:, None] * np.ones(8) + step}
    for rank in range(world):
        out[f"rank{rank}/state"] = np.full(1000, step * 10 + rank, np.int64)
        out[f"rank{rank}/frozen"] = np.arange(2**20, dtype=np.float32) + rank
    return out


def tier_of(base: str, rank: int, per_host: int = 1, *, resume: bool = True) -> remoteckpt.LocalTier:
    """The tier of rank `rank`'s host (`per_host` workers a host): BASE/host-H."""
    return remoteckpt.LocalTier(path=os.path.join(base, f"host-{rank // per_host}"), keep=2, per_host=True,
                                resume=resume)


def save_job(rank: int, world: int, env: dict[str, str], directory: str, tiers: str, steps: int) -> dict[str, Any]:
    """Save `steps` steps; each drain waited for.  What this worker's tier holds after."""
    os.environ.update(env)
    options = IOOptions(commit_timeout=60, poll_interval=0.02, lease_timeout=5)
    saver = remoteckpt.Saver(max_to_keep=2, rank=rank, world_size=world, save_id="hosts-job", options=options,
                             local_tier=tier_of(tiers, rank), incremental=True)
    for step in range(steps):
        saver.save(tensors(step, rank, world), f"{directory}/model.ckpt", global_step=step)
        saver.wait_durable(120)
    return {"files": sorted(os.listdir(tier_of(tiers, rank).path)), "durable": saver.durable_checkpoints}


def frozen(rank: int) -> dict[str, np.ndarray]:
    return {f"rank{rank}/frozen-{i}": np.arange(3 * 2**19, dtype=np.float32) + rank + i for i in range(2)}


def counted_job(rank: int, world: int, per_host: int, env: dict[str, str], directory: str, tiers: str,
                steps: int) -> dict[str, Any]:
    """Incremental saves of steps ``0 .. steps - 1`` at ``DIRECTORY/model.ckpt-S`` (plain
    `save` calls: no overwrite), each drain waited for; a changing tensor and two frozen ones
    of 6 MiB each (the drains of later steps send the first, in the part the changed bytes
    begin, and copy the second).  The access key is ``rank<R>``, by
    which a recording proxy tells the workers' requests apart."""
    os.environ.update(env)
    os.environ["AWS_ACCESS_KEY_ID"] = f"rank{rank}"
    options = IOOptions(commit_timeout=60, poll_interval=0.02, lease_timeout=5)
    tier = tier_of(tiers, rank, per_host)
    for step in range(steps):
        prefix = f"{directory}/model.ckpt-{step}"
        remoteckpt.save({**frozen(rank), f"rank{rank}/state": np.full(1000, step * 10 + rank, np.int64)}, prefix, rank=rank,
                        world_size=world, save_id=f"counted-{step}", options=options, local_tier=tier,
                        incremental=True)
        remoteckpt.wait_durable(prefix, timeout=120)
    return {"files": sorted(os.listdir(tier.path))}


def refused_job(rank: int, world: int, env: dict[str, str], prefix: str, tiers: str) -> dict[str, Any]:
    """Save step 0 at `prefix` (no overwrite); the error raised, the seconds it took, and what
    this worker's tier holds after."""
    os.environ.update(env)
    options = IOOptions(commit_timeout=60, poll_interval=0.02, lease_timeout=5)
    start, error = time.monotonic(), None
    try:
        remoteckpt.save(tensors(0, rank, world), prefix, rank=rank, world_size=world, save_id="refused",
                        options=options, local_tier=tier_of(tiers, rank))
    except remoteckpt.CheckpointError as exc:
        error = f"{type(exc).__name__}: {exc}"
    path = tier_of(tiers, rank).path
    return {"error": error, "seconds": time.monotonic() - start,
            "files": sorted(os.listdir(path)) if os.path.isdir(path) else []}


def restore_job(rank: int, world: int, env: dict[str, str], prefix: str, tiers: str) -> dict[str, Any]:
    """Restore the whole checkpoint through this worker's tier; the tensors, as lists."""
    os.environ.update(env)
    got = remoteckpt.load(prefix, local_tier=tier_of(tiers, rank))
    return {k: v.tolist() for k, v in got.items()}


def overwrite_job(rank: int, world: int, env: dict[str, str], prefix: str, tiers: str,
                  per_host: int = 1) -> dict[str, Any]:
    """Save step 0 at `prefix`, wait for it, then save step 1's tensors over it (overwrite)."""
    os.environ.update(env)
    options = IOOptions(commit_timeout=60, poll_interval=0.02, lease_timeout=5)
    for step, overwrite in ((0, False), (1, True)):
        remoteckpt.save(tensors(step, rank, world), prefix, rank=rank, world_size=world, save_id=f"over-{step}",
                        overwrite=overwrite, options=options, local_tier=tier_of(tiers, rank, per_host))
        remoteckpt.wait_durable(prefix, timeout=120)
    return {"files": sorted(os.listdir(tier_of(tiers, rank, per_host).path))}


def overwrite_race_job(barrier: Any, rank: int, world: int, env: dict[str, str], prefix: str, tiers: str,
                       result_path: str) -> None:
    """Workers of one host (its tier shared): save step 0 at `prefix`, then step 1's tensors
    over it.  Rank 1 replaces the host's copy slowly (a pause after it deletes the index: a
    worker descheduled), rank 0 starts its save 0.3 s late: by the time rank 1 goes on, rank
    0 has written its new data file on the tier.  What the tier holds, and any error."""
    import asyncio
    import json

    from remoteckpt.storage.local import LocalStore

    os.environ.update(env)
    options = IOOptions(commit_timeout=30, poll_interval=0.02, lease_timeout=5)
    tier = tier_of(tiers, rank, world)
    record: dict[str, Any] = {}
    try:
        remoteckpt.save(tensors(0, rank, world), prefix, rank=rank, world_size=world, save_id="race-0",
                        options=options, local_tier=tier)
        remoteckpt.wait_durable(prefix, timeout=60)
        if rank == 1:
            delete, paused = LocalStore.delete, []

            async def slow_delete(self: LocalStore, key: str, **kwargs: Any) -> bool:
                done = await delete(self, key, **kwargs)
                if key.endswith(".index") and not paused:
                    paused.append(key)
                    await asyncio.sleep(1.5)
                return done

            LocalStore.delete = slow_delete  # type: ignore[method-assign]
        barrier.wait()
        if rank == 0:
            time.sleep(0.3)
        remoteckpt.save(tensors(1, rank, world), prefix, rank=rank, world_size=world, save_id="race-1",
                        overwrite=True, options=options, local_tier=tier)
        record["local"] = sorted(os.listdir(tier.path))
        remoteckpt.wait_durable(prefix, timeout=60)
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        record["error"] = f"{type(exc).__name__}: {exc}"
    record["files"] = sorted(os.listdir(tier.path))
    with open(result_path, "w") as f:
        json.dump(record, f)


# --- the crash harness ------------------------------------------------------------------------

LOCAL_POINTS = ("staged", "mid-upload", "data-written", "table-written", "merged", "committing", "committed",
                "host-committed")
"""Points of step 1's local commit: the save protocol at remote ``.tiers/NAME`` (each worker's
part written to its own tier), then each worker's copy of the merged index on its tier
("host-committed").  With one worker the save is a shared tier's (the protocol on the tier
itself) and "host-committed" stands for the end of its local commit ("committed")."""
DRAIN_POINTS = ("draining", "mid-copy", "drain-committing", "drained", "state-writing")
"""Points of step 1's drain: before it starts, after its first chunk is copied, inside the
remote commit (coordinator), after the remote commit (its worker's marker not written yet),
and before the remote state file is written (coordinator)."""
POINTS = LOCAL_POINTS + DRAIN_POINTS
COORDINATOR_ONLY = ("merged", "committing", "committed", "drain-committing", "state-writing")
NOWHERE = ("staged", "mid-upload", "data-written", "merged", "committing")
"""Points before the local commit: step 1 is neither local nor remote after the kill (and
"table-written" on the coordinator: its own part written, no report collected yet)."""
REMOTE = ("drained", "state-writing")
"""Points after the drain's remote commit."""

STEPS = 2
COMMIT_TIMEOUT = 12.0
"""The crashed job's wait for a missing worker: every survivor's save or drain of step 1 fails
after it; long enough for step 0 to save whole with several jobs on a loaded 2-core machine."""
RESTART_TIMEOUT = 30.0
LEASE_TIMEOUT = 2.0
BOUND = 120.0
"""Seconds a job's processes may run (the crashed job's and the restart's) before they are
killed and reported."""

_FILE = re.compile(r"\.(?:data-|table-)(\d{5})")


def reachable(point: str, world: int, victim: int) -> bool:
    """Whether rank `victim` of `world` passes `point` (a single worker writes no table)."""
    if point in COORDINATOR_ONLY and victim != 0:
        return False
    return not (point == "table-written" and world == 1)


def crash_spec(point: str, world: int) -> str:
    """``REMOTECKPT_CRASH_AT`` for `point` during step 1.  Every worker passes the points of a
    part once a step; "table-written" and the coordinator's "merged", "committing" and
    "committed" twice a step (its local commit, then its drain: both run the save protocol),
    so the third arrival is step 1's local commit and the fourth "committing" its drain's.
    One worker (a shared tier's save): its drain passes "committing" only."""
    if point == "drain-committing":
        return "committing:4"
    if world == 1:
        if point == "host-committed":
            return "committed:2"
        return f"{point}:{3 if point == 'committing' else 2}"
    if point in ("table-written", "merged", "committing", "committed"):
        return f"{point}:3"
    return f"{point}:2"


def expected_outcome(point: str, world: int, victim: int) -> str:
    """Where step 1 is right after the kill: "nowhere", "local" (committed locally only) or
    "remote" (committed remotely)."""
    if point in REMOTE:
        return "remote"
    if point in NOWHERE or (point == "table-written" and victim == 0):
        return "nowhere"
    return "local"


def _options(commit_timeout: float) -> IOOptions:
    return IOOptions(commit_timeout=commit_timeout, poll_interval=0.02, lease_timeout=LEASE_TIMEOUT)


def _error(step: int, exc: BaseException) -> dict[str, Any]:
    return {"step": step, "error": type(exc).__name__, "message": str(exc)[:500],
            "remoteckpt": isinstance(exc, remoteckpt.CheckpointError), "traceback": traceback.format_exc()[-2000:]}


def crash_main(directory: str, tiers: str, rank: int, world: int, per_host: int, crash_at: str | None,
               env: dict[str, str], save_id: str, result_path: str) -> None:
    """Steps 0 and 1, each drain waited for; a JSON line per step (its error, if it failed)."""
    import reliability_workers as rw

    os.environ.update(env)
    os.environ.pop(CRASH_ENV, None)
    if crash_at:
        os.environ[CRASH_ENV] = crash_at
    import logging
    logging.getLogger("remoteckpt").setLevel(logging.CRITICAL)
    with open(result_path, "a") as log:
        try:
            saver = remoteckpt.Saver(max_to_keep=3, rank=rank, world_size=world, save_id=save_id,
                                     options=_options(COMMIT_TIMEOUT), local_tier=tier_of(tiers, rank, per_host))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            log.write(json.dumps(_error(-1, exc)) + "\n")
            rw._exit_with(log, 1)
        for step in range(STEPS):
            try:
                saver.save(tensors(step, rank, world), f"{directory}/{NAME}", global_step=step)
                saver.wait_durable(BOUND / 2)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                log.write(json.dumps(_error(step, exc)) + "\n")
                log.flush()
                continue
            log.write(json.dumps({"step": step, "ok": True}) + "\n")
            log.flush()
        rw._exit_with(log, 0)


def restart_main(directory: str, tiers: str, rank: int, world: int, per_host: int, resume: bool,
                 env: dict[str, str], save_id: str, result_path: str, record_resumed: bool = False) -> None:
    """A restarted job's worker: its Saver adopts the directory and its host's tier (the
    drains left unfinished resumed, or dropped), then saves step 2 and waits for its drains.
    `record_resumed`: the directory adopted first, and the error of the drains it resumed
    (a replaced host's lost part) recorded before step 2."""
    import reliability_workers as rw

    os.environ.update(env)
    os.environ.pop(CRASH_ENV, None)
    import logging
    logging.getLogger("remoteckpt").setLevel(logging.CRITICAL)
    with open(result_path, "a") as log:
        try:
            saver = remoteckpt.Saver(max_to_keep=3, rank=rank, world_size=world, save_id=save_id,
                                     options=_options(RESTART_TIMEOUT),
                                     local_tier=tier_of(tiers, rank, per_host, resume=resume))
            if record_resumed:
                saver.adopt(directory)
                try:
                    saver.wait_durable(BOUND / 2)
                except remoteckpt.CheckpointError as exc:
                    log.write(json.dumps({"resumed": f"{type(exc).__name__}: {exc}"}) + "\n")
            saver.save(tensors(STEPS, rank, world), f"{directory}/{NAME}", global_step=STEPS)
            log.write(json.dumps({"durable": saver.wait_durable(BOUND / 2)}) + "\n")
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            log.write(json.dumps(_error(STEPS, exc)) + "\n")
            rw._exit_with(log, 1)
        rw._exit_with(log, 0)


@dataclass
class HostRun:
    """One scenario: the crashed job, the checks of both tiers after it, after `gc` and after
    the restarted job.  `problems` lists every invariant broken (empty: all held)."""

    directory: str
    tiers: str
    world: int
    per_host: int
    point: str
    victim: int
    resume: bool = True
    gc_first: bool = True
    exit_codes: list[int | None] = field(default_factory=list)
    records: list[list[dict[str, Any]]] = field(default_factory=list)
    restart: list[list[dict[str, Any]]] = field(default_factory=list)
    outcome: str = ""                       # where step 1 was after the kill: nowhere, local, remote
    remote_before: list[int] = field(default_factory=list)   # steps committed remotely after the kill
    remote_after: list[int] = field(default_factory=list)    # after the restart
    restored_exact: int = 0                 # remote checkpoints restored exactly (after the kill and the restart)
    checkpoints: int = 0                    # remote checkpoints checked
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)   # seconds of each part of the scenario
    problems: list[str] = field(default_factory=list)

    @property
    def hosts(self) -> int:
        return -(-self.world // self.per_host)

    def describe(self) -> str:
        return (f"{self.directory}: {self.world} worker(s), {self.per_host} a host, rank {self.victim} killed at "
                f"{self.point} ({crash_spec(self.point, self.world)})" + ("" if self.resume else ", resume=False")
                + ("" if self.gc_first else ", restarted before gc"))

    @property
    def injected(self) -> bool:
        return self.exit_codes[self.victim] == -signal.SIGKILL


def run(directory: str, tiers: str, world: int, per_host: int, point: str, victim: int, env: dict[str, str],
        *, resume: bool = True, gc_first: bool = True) -> HostRun:
    """The scenario of the module docstring; `tiers` a fresh directory for the hosts' tiers.
    Without `gc_first`, the job restarts right after the kill (`gc` only after the restart: the
    restarted workers themselves take back the index of a local commit their host missed)."""
    import reliability_workers as rw

    start = time.monotonic()
    result = HostRun(directory, tiers, world, per_host, point, victim, resume, gc_first)

    laps = [start]

    def lap(name: str) -> None:
        laps.append(time.monotonic())
        result.phases[name] = round(laps[-1] - laps[-2], 1)

    tag = os.path.basename(directory)[-40:]
    ctx = rw.context()
    with tempfile.TemporaryDirectory(prefix="rk-hosts-") as scratch:
        paths = [os.path.join(scratch, f"crash{r}.jsonl") for r in range(world)]
        codes = _together(ctx, crash_main, [
            (directory, tiers, r, world, per_host, crash_spec(point, world) if r == victim else None, env,
             f"hosts-{tag}", paths[r]) for r in range(world)], paths)
        result.records = [_records(p) for p in paths]
        result.exit_codes = [rw._exit_code(c, recs, killed=c is None) for c, recs in zip(codes, result.records)]
        lap("job")
        _check_job(result)
        _check_after_kill(result)
        lap("checks")
        if gc_first:
            for host in range(result.hosts):
                remoteckpt.gc(directory, older_than=0, local_tier=tier_of(tiers, host * per_host, per_host))
            _check_after_gc(result)
            lap("gc")
        paths = [os.path.join(scratch, f"restart{r}.jsonl") for r in range(world)]
        _together(ctx, restart_main, [(directory, tiers, r, world, per_host, resume, env, f"hosts-{tag}-restart",
                                       paths[r]) for r in range(world)], paths)
        result.restart = [_records(p) for p in paths]
        lap("restart")
    _check_restart(result)
    lap("final checks")
    result.seconds = time.monotonic() - start
    return result


def _together(ctx: Any, target: Any, arg_lists: list[tuple[Any, ...]], paths: list[str]) -> list[int | None]:
    """`target(*args)` in a process each, all at once, joined within BOUND; their exit codes
    (None: still running at the bound, then killed)."""
    procs = [ctx.Process(target=target, args=args, daemon=True) for args in arg_lists]
    for p in procs:
        p.start()
    deadline = time.monotonic() + BOUND
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    codes: list[int | None] = []
    for p, path in zip(procs, paths):
        if p.exitcode is None:
            p.kill()
            p.join(10)
            codes.append(None)
            with open(path, "a") as f:
                f.write(json.dumps({"hang": f"still running after {BOUND:g} s"}) + "\n")
        else:
            codes.append(p.exitcode)
    return codes


def _records(path: str) -> list[dict[str, Any]]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def _remote_keys(directory: str) -> list[str]:
    async def go() -> list[str]:
        store = open_store(directory)
        try:
            return sorted(i.key for i in await store.list_info())
        finally:
            await store.close()

    return loop.run(go())


def _get(directory: str, key: str) -> bytes | None:
    async def go() -> bytes | None:
        store = open_store(directory)
        try:
            return await store.get(key)
        except remoteckpt.CheckpointNotFoundError:
            return None
        finally:
            await store.close()

    return loop.run(go())


def _steps(keys: list[str]) -> list[int]:
    """Steps of the remote directory's committed checkpoints (indexes at its top)."""
    return sorted(int(k[len(NAME) + 1 : -len(".index")]) for k in keys
                  if k.startswith(NAME + "-") and k.endswith(".index") and "/" not in k)


def _host_files(run: HostRun, host: int) -> list[str]:
    path = tier_of(run.tiers, host * run.per_host, run.per_host).path
    out = []
    for dirpath, _, files in os.walk(path):
        out += [os.path.relpath(os.path.join(dirpath, f), path) for f in files]
    return sorted(out)


def _check_foreign(run: HostRun, when: str) -> None:
    """Each host's tier holds its own workers' data files and tables only."""
    for host in range(run.hosts):
        own = range(host * run.per_host, min(run.world, (host + 1) * run.per_host))
        for f in _host_files(run, host):
            m = _FILE.search(f)
            if m and int(m.group(1)) not in own:
                run.problems.append(f"{when}: host {host}'s tier holds {f}, of a worker of another host")


def _check_remote(run: HostRun, steps: list[int], when: str) -> None:
    """Every committed remote checkpoint restores exactly the tensors of its step."""
    for step in steps:
        run.checkpoints += 1
        prefix = f"{run.directory}/{NAME}-{step}"
        try:
            got = remoteckpt.load(prefix)
        except Exception as exc:  # noqa: BLE001 - any error is a finding
            run.problems.append(f"{when}: {prefix} has an index but does not restore: {type(exc).__name__}: {exc}")
            continue
        want = expected(step, run.world)
        differing = sorted(set(got) ^ set(want)) or [n for n in want if not _same(got[n], want[n])]
        if differing:
            run.problems.append(f"{when}: SILENT CORRUPTION: {prefix} restores but differs in {differing[:5]}")
        else:
            run.restored_exact += 1


def _same(got: Any, want: np.ndarray) -> bool:
    got = np.asarray(got)
    return got.shape == want.shape and got.astype(want.dtype).tobytes() == want.tobytes()


def _check_job(run: HostRun) -> None:
    if not run.injected:
        run.problems.append(f"rank {run.victim} was not killed at {run.point} (exit codes {run.exit_codes})")
    for rank, recs in enumerate(run.records):
        for r in recs:
            if "hang" in r:
                run.problems.append(f"rank {rank} {r['hang']}")
            elif "error" in r and not r["remoteckpt"]:
                run.problems.append(f"rank {rank} failed with a non-remoteckpt error at step {r['step']}: "
                                    f"{r['error']}: {r['message']}")
            elif "error" in r and r["step"] < 1:
                run.problems.append(f"rank {rank}'s step {r['step']} failed before any kill: {r['message']}")
        if rank != run.victim and run.exit_codes[rank] != 0:
            run.problems.append(f"rank {rank} (a survivor) exited with {run.exit_codes[rank]}")


def _check_after_kill(run: HostRun) -> None:
    keys = _remote_keys(run.directory)
    run.remote_before = _steps(keys)
    if run.remote_before not in ([0], [0, 1]):
        run.problems.append(f"after the kill: the remote directory holds steps {run.remote_before}, not step 0 "
                            "and at most step 1")
    _check_remote(run, run.remote_before, "after the kill")
    state = remoteckpt.get_checkpoint_state(run.directory)
    listed = [] if state is None else list(state.all_model_checkpoint_paths)
    for name in listed:
        if f"{name.rsplit('/', 1)[-1]}.index" not in keys:
            run.problems.append(f"after the kill: the state file lists {name}, which has no index")
    meeting = f".tiers/{NAME}-1.index" in keys
    local = meeting or any(f"{NAME}-1.index" in _host_files(run, h) for h in range(run.hosts))
    run.outcome = "remote" if 1 in run.remote_before else "local" if local else "nowhere"
    want = expected_outcome(run.point, run.world, run.victim)
    if run.outcome != want:
        run.problems.append(f"after the kill: step 1 is {run.outcome}, where a kill at {run.point} leaves it {want}")
    _check_foreign(run, "after the kill")


def _check_after_gc(run: HostRun) -> None:
    """After `gc` on every host: step 1 committed locally is on every host's tier, with the
    index of the local commit and the host's own data files; else nothing of it is left."""
    merged = _get(run.directory, f".tiers/{NAME}-1.index") if run.world > 1 else None
    for host in range(run.hosts):
        tier = tier_of(run.tiers, host * run.per_host, run.per_host)
        files = [f for f in _host_files(run, host) if f.startswith(f"{NAME}-1.")]
        own = range(host * run.per_host, min(run.world, (host + 1) * run.per_host))
        if run.outcome == "nowhere":
            if files:
                run.problems.append(f"after gc: host {host}'s tier holds {files} of step 1, never committed locally")
            continue
        want = [f"{NAME}-1.index", *(f"{NAME}-1.data-{r:05d}-of-{run.world:05d}" for r in own)]
        missing = [f for f in want if f not in files]
        if missing:
            run.problems.append(f"after gc: host {host}'s tier lacks {missing} of step 1, committed locally "
                                f"(it holds {files})")
        index = os.path.join(tier.path, f"{NAME}-1.index")
        if merged is not None and os.path.exists(index) and open(index, "rb").read() != merged:
            run.problems.append(f"after gc: host {host}'s index of step 1 is not the local commit's")
    _check_foreign(run, "after gc")


def _check_restart(run: HostRun) -> None:
    for rank, recs in enumerate(run.restart):
        done = [r for r in recs if "durable" in r]
        bad = [r for r in recs if "error" in r or "hang" in r]
        if bad or not done:
            run.problems.append(f"the restarted job's rank {rank} failed: {bad or recs}")
        elif done[-1]["durable"][-1:] != [f"{run.directory}/{NAME}-{STEPS}"]:
            run.problems.append(f"the restarted job's rank {rank}: step {STEPS} not durable ({done[-1]['durable']})")
    keys = _remote_keys(run.directory)
    run.remote_after = _steps(keys)
    drained = run.outcome == "remote" or (run.outcome == "local" and run.resume)
    want = [0, 1, 2] if drained else [0, 2]
    if run.remote_after != want:
        run.problems.append(f"after the restart: the remote directory holds steps {run.remote_after}, not {want}")
    _check_remote(run, run.remote_after, "after the restart")
    # The drains removed their local commits' indexes: all but one dropped (it stays), or one
    # whose coordinator died after the drain's commit while a worker of its host marked the
    # host's copy durable (no restart drains it again: `gc` removes it, below).
    meeting = [k for k in keys if k.startswith(".tiers/") and k.endswith(".index")]
    stays = [f".tiers/{NAME}-1.index"] if run.outcome == "local" and not run.resume else []
    for key in sorted(set(meeting) - set(stays)):
        if run.outcome != "remote" or _get(run.directory, key) != _get(run.directory, key.removeprefix(".tiers/")):
            run.problems.append(f"after the restart: {key} is left in the remote directory")
    for key in sorted(set(stays) - set(meeting)):
        run.problems.append(f"after the restart: {key} of the checkpoint dropped is gone from the remote directory")
    # The tiers hold the newest two steps durable (keep=2), the remote copy byte for byte theirs.
    for host in range(run.hosts):
        own = range(host * run.per_host, min(run.world, (host + 1) * run.per_host))
        tier = tier_of(run.tiers, host * run.per_host, run.per_host)
        for step in (1, 2) if drained else (2,):
            for name in (f"{NAME}-{step}.index", *(f"{NAME}-{step}.data-{r:05d}-of-{run.world:05d}" for r in own)):
                path = os.path.join(tier.path, name)
                if not os.path.exists(path):
                    run.problems.append(f"after the restart: host {host}'s tier lacks {name}")
                elif open(path, "rb").read() != _get(run.directory, name):
                    run.problems.append(f"after the restart: {name} on host {host}'s tier differs from the remote one")
            if not os.path.exists(os.path.join(tier.path, f"{NAME}-{step}.durable")):
                run.problems.append(f"after the restart: host {host}'s tier does not mark step {step} durable")
    _check_foreign(run, "after the restart")
    for host in range(run.hosts):
        remoteckpt.gc(run.directory, older_than=0, local_tier=tier_of(run.tiers, host * run.per_host, run.per_host))
    _check_leftovers(run, stays)


def _check_leftovers(run: HostRun, stays: list[str]) -> None:
    """After `gc` of both tiers: the remote directory holds checkpoints, the state file and the
    local commits kept (`stays`); each tier its checkpoints (index, data files, tables,
    records, markers) and its state file."""
    for key in _remote_keys(run.directory):
        if key in stays or key == "checkpoint" or re.fullmatch(rf"{re.escape(NAME)}-\d+\.(index|data-\d{{5}}-of-\d{{5}})",
                                                               key):
            continue
        run.problems.append(f"after the restart and gc: remote leftover {key}")
    for host in range(run.hosts):
        path = tier_of(run.tiers, host * run.per_host, run.per_host).path
        for f in _host_files(run, host):
            base = re.sub(r"\.(index|tier|durable|lock|data-\d{5}-of-\d{5}|table-\d{5})$", "", f)
            if f != "checkpoint" and (base == f or not os.path.exists(os.path.join(path, base + ".index"))):
                run.problems.append(f"after the restart and gc: host {host}'s tier holds {f}, of no committed "
                                    "checkpoint")


def replaced_host(directory: str, tiers: str, env: dict[str, str]) -> dict[str, Any]:
    """Two hosts of one worker save steps 0 and 1; worker 1 is killed right after step 1's local
    commit (before its drain), and its host is replaced: its tier's directory is gone.  The job
    restarts on both hosts.  What each restarted worker recorded, and the remote steps."""
    import shutil

    import reliability_workers as rw

    ctx, world = rw.context(), 2
    with tempfile.TemporaryDirectory(prefix="rk-replaced-") as scratch:
        paths = [os.path.join(scratch, f"crash{r}.jsonl") for r in range(world)]
        codes = _together(ctx, crash_main, [
            (directory, tiers, r, world, 1, crash_spec("host-committed", world) if r == 1 else None, env,
             "replaced", paths[r]) for r in range(world)], paths)
        crashed = [_records(p) for p in paths]
        shutil.rmtree(tier_of(tiers, 1).path)
        paths = [os.path.join(scratch, f"restart{r}.jsonl") for r in range(world)]
        _together(ctx, restart_main, [(directory, tiers, r, world, 1, True, env, "replaced-restart", paths[r], True)
                                      for r in range(world)], paths)
        return {"codes": codes, "crashed": crashed, "restart": [_records(p) for p in paths],
                "steps": _steps(_remote_keys(directory)), "tier0": sorted(os.listdir(tier_of(tiers, 0).path))}
