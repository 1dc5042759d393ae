"""Crash-consistency harness: worker processes that save through `remoteckpt.Saver` and die
(SIGKILL) at a named point or at a random moment, and a verifier of what they leave behind.

Used by tests/test_crash.py (small, in `make test`) and benchmarks/soak (at scale).

Workers are real OS processes forked from a multiprocessing "forkserver" that has imported
numpy, remoteckpt and s3fs once (a fresh interpreter per worker would cost ~0.5 s of CPU
each); each worker sets its own environment (``REMOTECKPT_CRASH_AT`` for the chosen rank, the
S3 endpoint) before it runs.  Tensors are a deterministic function of (step, rank), so the
verifier knows exactly what every checkpoint must hold.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import remoteckpt
from remoteckpt.engine import loop
from remoteckpt.faults import ENV as CRASH_ENV
from remoteckpt.format.bundle import index_filename
from remoteckpt.options import IOOptions
from remoteckpt.protocol.layout import SAVE_ID_ENV
from remoteckpt.storage import open_store

ROWS, COLS = 16, 8
NAME = "model.ckpt"
BIG_STEP = 1
"""The step whose tensors are large enough for multipart uploads (> 5 MiB parts) on S3."""
PART_SIZE = 5 * 2**20
MAX_TO_KEEP = 1
"""Retention from the second save on: every step after the first deletes one checkpoint."""

SAVE_POINTS = ("staged", "mid-upload", "data-written", "table-written", "merged", "committing", "committed")
"""Crash points inside one save: reached once per save (the coordinator-only ones on rank 0)."""
COORDINATOR_ONLY = ("merged", "committing", "committed", "state-writing", "state-replacing", "retention", "deleting")
GRACE = 20.0
"""Seconds beyond commit_timeout that the survivors of a kill get to give up by themselves
(on a loaded 2-core machine, with 20+ worker processes and the S3 server sharing it, polls
and requests are slow; a worker still waiting after that is reported, with its stack)."""


LEASE_TIMEOUT = 2.0
"""The jobs' lease timeout: a dead job's claim is taken over (or collected by gc) after this
long, so that scenarios end in seconds; live saves renew it four times as often."""


def reachable(point: str, world: int, victim: int) -> bool:
    """Whether rank `victim` of `world` passes `point` (the coordinator's points are rank 0's;
    a single worker has no table to write)."""
    if point in COORDINATOR_ONLY and victim != 0:
        return False
    return not (point == "table-written" and world == 1)


def crash_spec(point: str) -> str:
    """``REMOTECKPT_CRASH_AT`` value that kills at `point` during step `BIG_STEP` (the save
    points and state-writing are reached once per step; retention and deleting first happen
    at the second step, with max_to_keep=1)."""
    nth = BIG_STEP + 1 if point in SAVE_POINTS or point.startswith("state-") else BIG_STEP
    return f"{point}:{nth}"


# --- what is saved --------------------------------------------------------------------------

def full_matrix(step: int) -> np.ndarray:
    return (np.arange(ROWS * COLS, dtype=np.float32).reshape(ROWS, COLS) + 1000 * step) / 3


def tensors_for(step: int, rank: int, world: int, big: bool) -> dict[str, Any]:
    """Worker `rank`'s share at `step`: rows of a matrix partitioned across workers, and
    tensors of its own (with `big`, two large ones first, so that "mid-upload" falls after
    a multipart part was sent)."""
    out: dict[str, Any] = {}
    if big:
        out[f"rank{rank}/big_a"] = np.arange(6 * 2**20 // 4, dtype=np.float32) * (step + 1) + rank
        out[f"rank{rank}/big_b"] = np.arange(4 * 2**20 // 4, dtype=np.int32) - step - rank
    rows = ROWS // world
    out["shared/rows"] = remoteckpt.Slice(full_matrix(step)[rank * rows:(rank + 1) * rows], (ROWS, COLS),
                                          (rank * rows, 0))
    out[f"rank{rank}/vec"] = np.full(64 + rank, step * 10 + rank, dtype=np.int64)
    out[f"rank{rank}/words"] = np.array([f"s{step}r{rank}".encode(), b""], dtype=object)
    return out


def expected_checkpoint(step: int, world: int, big_step: int | None) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint of `step`, as a reader must return it."""
    out: dict[str, np.ndarray] = {"shared/rows": full_matrix(step)}
    for rank in range(world):
        for name, value in tensors_for(step, rank, world, step == big_step).items():
            if name != "shared/rows":
                out[name] = np.asarray(value)
    return out


# --- the worker -----------------------------------------------------------------------------

def worker_main(directory: str, rank: int, world: int, steps: int, start_step: int, commit_timeout: float,
                crash_at: str | None, env: dict[str, str], storage_options: dict[str, Any] | None,
                result_path: str, big_step: int | None) -> None:
    """Save steps start_step..steps-1 with a Saver; append one JSON line per step to
    `result_path`, and one for the error that stopped it (then exit 1)."""
    os.environ.update(env)
    os.environ.pop(CRASH_ENV, None)
    if crash_at:
        os.environ[CRASH_ENV] = crash_at
    import faulthandler
    import logging
    logging.getLogger("remoteckpt").setLevel(logging.ERROR)
    # The parent asks a worker that outlived its bound where it is, before killing it.
    faulthandler.register(signal.SIGUSR1, file=open(result_path + ".stack", "w"), all_threads=True)
    saver = remoteckpt.Saver(max_to_keep=MAX_TO_KEEP, rank=rank, world_size=world, storage_options=storage_options,
                             options=IOOptions(commit_timeout=commit_timeout, poll_interval=0.02,
                                               lease_timeout=LEASE_TIMEOUT))
    with open(result_path, "a") as log:
        for step in range(start_step, steps):
            try:
                saver.save(tensors_for(step, rank, world, step == big_step), f"{directory}/{NAME}", global_step=step)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                log.write(json.dumps({"step": step, "error": type(exc).__name__, "message": str(exc)[:500],
                                      "remoteckpt": isinstance(exc, remoteckpt.CheckpointError),
                                      "traceback": traceback.format_exc()[-2000:]}) + "\n")
                _exit_with(log, 1)
            log.write(json.dumps({"step": step, "ok": True}) + "\n")
            log.flush()
        _exit_with(log, 0)


def _exit_with(log: Any, code: int) -> None:
    """Record the exit code, then exit: the forkserver loses a child's status now and then
    under load (CPython reports 255 then), and this line is how the parent still knows."""
    log.write(json.dumps({"exit": code}) + "\n")
    log.flush()
    os._exit(code)


LOST_STATUS = 255  # what multiprocessing's forkserver reports when it could not read the status


def _exit_code(reported: int | None, records: list[dict[str, Any]], killed: bool) -> int | None:
    """The worker's real exit code: the reported one, unless the forkserver lost it; then
    the worker's own last record, or SIGKILL if we killed it and it recorded no exit."""
    if reported != LOST_STATUS:
        return reported
    exits = [r["exit"] for r in records if "exit" in r]
    if exits:
        return exits[-1]
    return -signal.SIGKILL if killed else reported


_context: Any = None
_context_lock = threading.Lock()


def context() -> Any:
    """The forkserver context, its server preloaded with this module (and so numpy,
    remoteckpt, s3fs)."""
    global _context
    with _context_lock:
        if _context is None:
            os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload([__name__, "s3fs", "aiobotocore.session"])
            _context = ctx
        return _context


# --- one scenario ---------------------------------------------------------------------------

@dataclass
class Scenario:
    directory: str                      # fresh checkpoint directory (path or s3:// URL)
    world: int
    steps: int = 3
    victim: int | None = None           # rank that crashes (named point) or is killed (random)
    point: str | None = None            # named crash point (REMOTECKPT_CRASH_AT), or None
    kill_after: float | None = None     # random kill: seconds after start, or None
    commit_timeout: float = 4.0
    start_step: int = 0
    env: dict[str, str] = field(default_factory=dict)
    storage_options: dict[str, Any] | None = None
    big_step: int | None = BIG_STEP
    bound: float = 60.0                 # everything is killed after this many seconds
    save_id: str = field(default_factory=lambda: f"job-{random.getrandbits(40):010x}")
    """$REMOTECKPT_SAVE_ID of all the job's workers, one per job as a launcher's run id ("" for none:
    a multi-worker save then warns, UnnamedSaveWarning)."""

    def describe(self) -> str:
        how = (f"crash at {self.point}" if self.point else
               f"kill after {self.kill_after:.2f}s" if self.kill_after is not None else "no fault")
        return f"{self.directory} world={self.world} victim={self.victim} {how}"


@dataclass
class RunResult:
    scenario: Scenario
    exit_codes: list[int | None]
    records: list[list[dict[str, Any]]]
    injected: bool                      # the victim really died by SIGKILL at our hand
    killed_leftovers: list[int]         # ranks still running at the bound, then killed
    seconds: float
    stacks: dict[int, str] = field(default_factory=dict)  # where the leftovers were

    def errors(self) -> list[dict[str, Any]]:
        return [r for recs in self.records for r in recs if "error" in r]


def run_scenario(sc: Scenario) -> RunResult:
    """Run the workers of `sc`, inject its fault, bound everything in time; return what
    happened (the storage is left as the workers left it)."""
    ctx = context()
    started = time.monotonic()
    env = {**sc.env, SAVE_ID_ENV: sc.save_id} if sc.save_id else sc.env
    with tempfile.TemporaryDirectory(prefix="rk-results-") as results:
        paths = [os.path.join(results, f"rank{r}.jsonl") for r in range(sc.world)]
        procs = []
        for rank in range(sc.world):
            crash_at = crash_spec(sc.point) if (sc.point and rank == sc.victim) else None
            p = ctx.Process(target=worker_main, name=f"rk-worker-{rank}", daemon=True,
                            args=(sc.directory, rank, sc.world, sc.steps, sc.start_step, sc.commit_timeout, crash_at,
                                  env, sc.storage_options, paths[rank], sc.big_step))
            p.start()
            procs.append(p)
        injected = False
        if sc.kill_after is not None and sc.victim is not None:
            victim = procs[sc.victim]
            victim.join(sc.kill_after)
            if victim.exitcode is None:
                victim.kill()
                injected = True
        deadline = started + sc.bound
        grace_from: float | None = None
        while any(p.exitcode is None for p in procs) and time.monotonic() < deadline:
            # once a worker died (killed), the others get commit_timeout + a margin to give up
            if grace_from is None and any(p.exitcode is not None and p.exitcode < 0 for p in procs):
                grace_from = time.monotonic()
                deadline = min(deadline, grace_from + sc.commit_timeout + GRACE)
            for p in procs:
                if p.exitcode is None:
                    p.join(0.05)
        leftovers = [r for r, p in enumerate(procs) if p.exitcode is None]
        stacks = {}
        for r in leftovers:
            try:
                os.kill(procs[r].pid, signal.SIGUSR1)
                time.sleep(0.5)
                with open(paths[r] + ".stack") as f:
                    stacks[r] = f.read()[-4000:]
            except OSError:
                pass
            procs[r].kill()
        for p in procs:
            p.join(10)
        records = []
        for path in paths:
            try:
                with open(path) as f:
                    records.append([json.loads(line) for line in f if line.strip()])
            except FileNotFoundError:
                records.append([])
        codes = [_exit_code(p.exitcode, recs, killed=(injected and r == sc.victim) or r in leftovers)
                 for r, (p, recs) in enumerate(zip(procs, records))]
        if sc.point and sc.victim is not None:
            injected = codes[sc.victim] == -signal.SIGKILL
        return RunResult(sc, codes, records, injected, leftovers, time.monotonic() - started, stacks)


# --- the verifier ---------------------------------------------------------------------------

@dataclass
class Verdict:
    checkpoints: int = 0                # indexes found
    restored_exact: int = 0             # of those, restored byte-exact
    silent_corruptions: int = 0         # read as committed, restored without error, but differ
    unrestorable: int = 0               # read as committed but failed to restore (an error)
    latest: str | None = None
    removed_by_gc: int = 0
    aborted_uploads: int = 0
    left_before_gc: list[str] = field(default_factory=list)  # temp keys and pending uploads gc had to clear
    problems: list[str] = field(default_factory=list)


def _list(directory: str, storage_options: dict[str, Any] | None) -> tuple[list[Any], list[Any]]:
    async def go() -> tuple[list[Any], list[Any]]:
        store = open_store(directory, storage_options)
        try:
            return await store.list_info(), await store.pending_uploads()
        finally:
            await store.close()

    return loop.run(go())


def _step_of(name: str) -> int | None:
    head, _, tail = name.rpartition("-")
    return int(tail) if head == NAME and tail.isdigit() else None


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "O":
        return [bytes(x) for x in a.reshape(-1)] == [bytes(x) for x in b.reshape(-1)]
    return a.tobytes() == b.tobytes()


def check_checkpoint(prefix: str, expected: dict[str, np.ndarray], storage_options: dict[str, Any] | None,
                     verdict: Verdict, where: str) -> bool:
    """Restore every tensor of `prefix` and compare with `expected`; count the outcome."""
    try:
        got = remoteckpt.load(prefix, storage_options=storage_options)
    except remoteckpt.CheckpointError as exc:
        verdict.unrestorable += 1
        verdict.problems.append(f"{where}: {prefix} has an index but does not restore: {type(exc).__name__}: {exc}")
        return False
    except Exception as exc:  # noqa: BLE001 - any other error is a bug too
        verdict.unrestorable += 1
        verdict.problems.append(f"{where}: {prefix} restore raised a non-remoteckpt {type(exc).__name__}: {exc}")
        return False
    if set(got) != set(expected) or not all(_same(got[n], expected[n]) for n in expected):
        verdict.silent_corruptions += 1
        differing = sorted(set(got) ^ set(expected)) or [n for n in expected if not _same(got[n], expected[n])]
        verdict.problems.append(f"{where}: SILENT CORRUPTION: {prefix} restores but differs in {differing[:5]}")
        return False
    return True


def verify(directory: str, world: int, *, storage_options: dict[str, Any] | None = None,
           big_step: int | None = BIG_STEP, run_gc: bool = True) -> Verdict:
    """Check what a crashed job left in `directory` (see tests/test_crash.py for the rules)."""
    verdict = Verdict()
    infos, uploads = _list(directory, storage_options)
    verdict.left_before_gc = ([i.key for i in infos if _temporary(i.key)]
                              + [f"upload of {u.key}" for u in uploads])
    names = sorted(i.key[: -len(".index")] for i in infos if i.key.endswith(".index") and "/" not in i.key)
    committed: dict[str, int] = {}
    for name in names:
        step = _step_of(name)
        if step is None:
            verdict.problems.append(f"unexpected index {name}.index")
            continue
        verdict.checkpoints += 1
        prefix = f"{directory}/{name}"
        try:
            remoteckpt.CheckpointReader(prefix, storage_options=storage_options).close()
        except remoteckpt.CheckpointError as exc:
            verdict.problems.append(f"{prefix}.index exists but does not open: {type(exc).__name__}: {exc}")
            verdict.unrestorable += 1
            continue
        if check_checkpoint(prefix, expected_checkpoint(step, world, big_step), storage_options, verdict, "before gc"):
            verdict.restored_exact += 1
            committed[name] = step

    # latest_checkpoint: None before the first state file, else a complete checkpoint
    has_state = any(i.key == "checkpoint" for i in infos)
    try:
        latest = remoteckpt.latest_checkpoint(directory, storage_options=storage_options)
    except remoteckpt.CheckpointError as exc:
        verdict.problems.append(f"latest_checkpoint raised {type(exc).__name__}: {exc}")
        latest = None
    verdict.latest = latest
    if latest is None:
        if has_state:
            verdict.problems.append("a state file exists but latest_checkpoint is None (its latest has no index)")
    else:
        name = latest.rstrip("/").rsplit("/", 1)[-1]
        if name not in committed:
            verdict.problems.append(f"latest_checkpoint {latest} is not a complete checkpoint")
        state = remoteckpt.get_checkpoint_state(directory, storage_options=storage_options)
        for listed in state.all_model_checkpoint_paths if state else ():
            if listed not in committed:
                verdict.problems.append(f"the state file lists {listed}, which is not a complete checkpoint")

    if not run_gc:
        return verdict
    report = remoteckpt.gc(directory, older_than=0, storage_options=storage_options)
    verdict.removed_by_gc = len(report.removed)
    verdict.aborted_uploads = len(report.aborted_uploads)
    infos, uploads = _list(directory, storage_options)
    keys = [i.key for i in infos]
    indexed = {k[: -len(".index")] for k in keys if k.endswith(".index") and "/" not in k}
    for key in keys:
        if _temporary(key):
            verdict.problems.append(f"after gc: staging/temporary leftover {key}")
        elif ".data-" in key and key.split(".data-")[0] not in indexed:
            verdict.problems.append(f"after gc: data file without index {key}")
        elif not (key == "checkpoint" or key.endswith(".index") or ".data-" in key):
            verdict.problems.append(f"after gc: unexpected key {key}")
    for upload in uploads:
        verdict.problems.append(f"after gc: incomplete multipart upload of {upload.key}")
    for name, step in committed.items():
        if name not in indexed:
            verdict.problems.append(f"gc removed committed checkpoint {name}")
            continue
        check_checkpoint(f"{directory}/{name}", expected_checkpoint(step, world, big_step), storage_options, verdict,
                         "after gc")
    return verdict


def _temporary(key: str) -> bool:
    """A save's staging key (``*.tmp*/``) or an interrupted local write (``*.tempstate*``)."""
    return ".tmp" in key.split("/")[0] or ".tempstate" in key


def check_run(result: RunResult) -> list[str]:
    """Problems with how the workers ended: every worker either finished, was the victim,
    or failed with a remoteckpt error (never another exception, never a hang)."""
    sc = result.scenario
    problems = []
    for rank, (code, recs) in enumerate(zip(result.exit_codes, result.records)):
        if rank in result.killed_leftovers:
            problems.append(f"rank {rank} was still running after {sc.bound:g} s (or commit_timeout + grace); "
                            f"its stack:\n{result.stacks.get(rank, '(none)')}")
            continue
        if code == -signal.SIGKILL and rank == sc.victim:
            continue
        errors = [r for r in recs if "error" in r]
        if code == 0:
            if len([r for r in recs if r.get("ok")]) != sc.steps - sc.start_step:
                problems.append(f"rank {rank} exited 0 without saving every step: {recs}")
        elif errors:
            if not errors[-1]["remoteckpt"]:
                problems.append(f"rank {rank} failed with a non-remoteckpt error: {errors[-1]['error']}: "
                                f"{errors[-1]['message']}\n{errors[-1]['traceback']}")
        else:
            problems.append(f"rank {rank} exited with {code} and no record")
    return problems


def spurious_failure(result: RunResult) -> bool:
    """Whether a save failed where nothing was injected: before the named crash point's step,
    in a job whose victim never reaches its point, in a job whose victim could reach it but
    did not (a save of the crash step timed out under load before the point), or in a job a
    random kill missed."""
    sc = result.scenario
    if sc.point is not None:
        hit = reachable(sc.point, sc.world, sc.victim or 0)
        return any(e["step"] < BIG_STEP or not hit or not result.injected for e in result.errors())
    if sc.kill_after is not None and not result.injected:
        return bool(result.errors())
    return False


def scenario_directory(base: str, tag: str) -> str:
    return f"{base.rstrip('/')}/{tag}-{random.getrandbits(40):010x}"


def prefix_of(directory: str, step: int) -> str:
    return f"{directory}/{NAME}-{step}"


def index_key(step: int) -> str:
    return index_filename(f"{NAME}-{step}")


# --- racing committers ------------------------------------------------------------------------

def committer_tensors(who: int, rank: int = 0) -> dict[str, Any]:
    """What racing job `who` saves (rank `rank` of it): 6 MiB, a multipart upload on S3."""
    return {f"rank{rank}/w": np.full(6 * 2**20 // 4, who * 10 + rank, dtype=np.float32),
            f"rank{rank}/who": np.int64(who)}


def committer_main(prefix: str, who: int, rank: int, world: int, start_at: float, env: dict[str, str],
                   storage_options: dict[str, Any] | None, result_path: str) -> None:
    """One worker of racing job `who` (its own save id), starting at wall time `start_at`."""
    os.environ.update(env)
    os.environ.pop(CRASH_ENV, None)
    import logging
    logging.getLogger("remoteckpt").setLevel(logging.ERROR)
    time.sleep(max(0.0, start_at - time.time()))
    record: dict[str, Any]
    try:
        remoteckpt.save(committer_tensors(who, rank), prefix, rank=rank, world_size=world, save_id=f"job{who}",
                        storage_options=storage_options,
                        options=IOOptions(commit_timeout=10, poll_interval=0.02, lease_timeout=LEASE_TIMEOUT))
        record = {"who": who, "rank": rank, "ok": True}
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        record = {"who": who, "rank": rank, "error": type(exc).__name__, "message": str(exc)[:500],
                  "remoteckpt": isinstance(exc, remoteckpt.CheckpointError)}
    with open(result_path, "w") as f:
        json.dump(record, f)
    os._exit(0)


def run_committers(prefix: str, jobs: list[tuple[int, int, float]], world: int, env: dict[str, str],
                   storage_options: dict[str, Any] | None, bound: float = 60.0) -> list[dict[str, Any]]:
    """Start one process per (job, rank, delay in seconds) at once; their records."""
    ctx = context()
    start = time.time() + 1.0  # after every process is up
    with tempfile.TemporaryDirectory(prefix="rk-race-") as results:
        procs = []
        for i, (who, rank, delay) in enumerate(jobs):
            path = os.path.join(results, f"{i}.json")
            p = ctx.Process(target=committer_main, daemon=True,
                            args=(prefix, who, rank, world, start + delay, env, storage_options, path))
            p.start()
            procs.append((p, path))
        records = []
        deadline = time.monotonic() + bound
        for p, path in procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.exitcode is None:
                p.kill()
                p.join(5)
            try:
                with open(path) as f:
                    records.append(json.load(f))
            except FileNotFoundError:
                records.append({"error": "no record", "exitcode": p.exitcode, "remoteckpt": False})
        return records


def overwrite_main(prefix: str, crash_at: str, env: dict[str, str]) -> None:
    """Overwrite `prefix` with step 7's tensors, dying at `crash_at`."""
    os.environ.update(env)
    os.environ[CRASH_ENV] = crash_at
    remoteckpt.save(tensors_for(7, 0, 1, True), prefix, overwrite=True)
    os._exit(0)
