"""``python -m remoteckpt.bench.soak [--minutes N] [--seed S] [--only PHASES] [--out DIR]``

The reliability suite of tests/test_crash.py, tests/test_network_faults.py,
tests/test_corruption.py and tests/test_fuzz.py, at scale and hard-bounded in time (``make soak``):

  crash       jobs of 1, 2 or 4 worker processes saving with a Saver (local disk and an
              embedded SeaweedFS S3 server), each job with its own save id; one worker
              SIGKILLed at a named point or after a random delay; every checkpoint left restored
              and compared, latest_checkpoint checked, gc checked; a quarter of the jobs are then
              restarted from the latest checkpoint (as a training job would be) and must complete
  network     saves and restores through the fault-injecting proxy (503 SlowDown, cut
              requests and responses, dropped responses, latency), random rates and seeds:
              byte-exact or a remoteckpt error, never a hang, never an upload left behind
  race        2 or 3 jobs (1, 2 or 4 workers each, distinct save ids) saving one prefix at
              random moments: exactly one commits, whole; every worker of the others gets
              CheckpointExistsError / CheckpointBusyError; nothing but the winner's files left
  corruption  random bit flips, byte changes, truncations and swapped shards in a 2-shard
              checkpoint: each must raise CorruptCheckpointError when the tensor is read
              (detected / effective counted per kind of damage)
  fuzz        random mutations of valid indexes and state files through the decoders

How the time bound holds: the phases run one after another, each in a process of its own (and
its own process group), in windows that share the run's minutes by weight; time a phase
overran is taken from the later ones (each of which keeps RESERVED_SECONDS).  A phase starts no
unit of work after its deadline; the units in flight get ``--grace`` seconds (GRACE_SECONDS),
never past the run's end + grace; then the phase's process saves its counts and exits without
waiting for them (its threads are daemon threads), and its process group is killed (crash
workers, racing committers, the fault proxy and its requests with it).  A phase's process still
running EXIT_SECONDS after its cutoff has hung: its stacks are dumped and it is killed.  So a
run ends within ``minutes * 60 + grace + EXIT_SECONDS + TEARDOWN_SECONDS`` seconds of its start
(60 x minutes + 30 by default), whatever hangs.  Hangs are violations ("no hang"), reported
with their stacks and reproduction parameters: a unit of work still running after its own bound
(UNIT_BOUNDS), and a phase's process that had to be killed.  Units merely cut off at the cutoff
are counted (``cut_off_<phase>``, their parameters in the record's schedule), not violations.

Needs the repository's tests/ directory (the harness lives there).  Writes
``soak-<time>.json`` under --out (default bench-results/) and prints a summary; exits 1 if any
invariant was violated (silent corruption, a wrong byte, a hang, a foreign exception, a
leftover after gc).  ``--seed`` makes the sequence of scenarios reproducible.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import itertools
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

TESTS = Path(__file__).resolve().parents[2] / "tests"
PHASES = {"crash": 0.45, "network": 0.2, "race": 0.1, "corruption": 0.15, "fuzz": 0.10}
S3_PHASES = ("crash", "network", "race")

GRACE_SECONDS = 15.0
"""Default for --grace: how long units in flight at a phase's deadline may go on.  A crash job
started just before it needs a few seconds per save, commit_timeout (4 s) after a kill and its
restore/gc checks; a network operation its retries.  Whatever still runs then is cut off."""
EXIT_SECONDS = 5.0
"""A phase's process saves its counts and exits at its cutoff, abandoning its (daemon) threads:
milliseconds.  One still running this long after has hung, and is killed."""
STACKS_SECONDS = 0.5
"""Time a hung phase process gets to dump its stacks (faulthandler, on SIGUSR1) before SIGKILL."""
STOP_SECONDS = 5.0
"""The embedded S3 server gets this long to stop on SIGTERM, then it is SIGKILLed."""
TEARDOWN_SECONDS = 10.0
"""After the last phase: stopping the S3 server (STOP_SECONDS at most), removing the scratch
directory, writing the report.  (Before the first: the embedded server's start, bounded by its
startup timeout, comes out of the phases' windows.)"""
MIN_WINDOW_SECONDS = 1.0
"""A phase squeezed to nothing by earlier phases' overruns still gets this long to start work:
each phase runs, if only briefly."""
PHASE_START_SECONDS = 2.0
"""A phase process's start (interpreter, numpy, remoteckpt, the harness: about 1 s on a loaded
2-core machine)."""
RESERVED_SECONDS = PHASE_START_SECONDS + MIN_WINDOW_SECONDS
"""Kept free before the hard end for each phase still to come: an earlier phase's units in
flight are cut off sooner rather than leave a later phase no time at all."""
WATCH_SECONDS = 0.5
"""How often a phase's process checks its units against their bounds and saves its counts
(the file its parent reads, also when it had to kill it)."""
POLL_SECONDS = 0.2
"""How often the parent checks whether the phase's process has ended."""
UNIT_BOUNDS = {"crash": 150.0, "network": 120.0, "race": 120.0, "corruption": 30.0, "fuzz": 30.0}
"""Seconds one unit of work may run before it is a hang.  A crash job is a run of its workers
(the harness kills them at 60 s, or commit_timeout + 20 s after the kill), its checks, and
maybe a restarted run; a network operation is one save or one restore, each of whose requests
has 10 s to connect and 30 s without a byte, a few attempts; a race is its committers' 60 s
bound, 30 s for the winner's cleanup and a restore; one damaged checkpoint's reads and a batch
of 200 fuzz inputs take milliseconds (30 s: a loaded machine is no hang)."""
INJECTED_HANG_BOUND = 1.0
"""The bound of a unit that --hang-unit makes hang (the test of the hang report need not wait
UNIT_BOUNDS out)."""
HANG_AT_UNIT = 2
"""--hang-unit hangs the phase's second unit: the first does real work, so the counts show the
phase ran before it hung."""
DAMAGE_KINDS = {"bit": "bit flips", "byte": "byte changes", "truncate": "truncations", "swap": "swapped shards"}
AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
"""Passed on to the crash and race workers with --s3-endpoint (an embedded server sets its own)."""


def _import_harness() -> tuple[Any, Any]:
    if not (TESTS / "reliability_workers.py").exists():
        sys.exit(f"the soak runner needs the repository's tests/ directory ({TESTS} not found)")
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import faultproxy  # type: ignore[import-not-found]
    import reliability_workers  # type: ignore[import-not-found]
    return reliability_workers, faultproxy


# --- counters, units in flight --------------------------------------------------------------

@dataclass
class Unit:
    """A unit of work in flight: what reproduces it, its bound, since when, on which thread."""

    phase: str
    repro: dict[str, Any]
    bound: float
    started: float
    thread: int
    overdue: bool = False


class Tally:
    """Counters, notes, violations and the units in flight, shared by a phase's threads (and
    merged by the parent from each phase's snapshot)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.violations: list[dict[str, Any]] = []
        self.notes: Counter[str] = Counter()
        self._units: dict[int, Unit] = {}
        self._tokens = itertools.count()
        self._lock = threading.Lock()

    def add(self, **counts: int) -> None:
        with self._lock:
            self.counts.update(counts)

    def note(self, text: str) -> None:
        with self._lock:
            self.notes[text[:200]] += 1

    def violation(self, phase: str, what: str, repro: dict[str, Any]) -> None:
        with self._lock:
            self.violations.append({"phase": phase, "what": what[:2000], "repro": repro})

    def begin(self, phase: str, repro: dict[str, Any], bound: float) -> int:
        """Register a unit starting on this thread; the token for `end`."""
        with self._lock:
            token = next(self._tokens)
            self._units[token] = Unit(phase, repro, bound, time.monotonic(), threading.get_ident())
            return token

    def end(self, token: int) -> None:
        with self._lock:
            self._units.pop(token, None)

    def overdue(self, now: float) -> list[Unit]:
        """Units running past their bound not reported before (each is returned once)."""
        with self._lock:
            late = [u for u in self._units.values() if not u.overdue and now - u.started > u.bound]
            for u in late:
                u.overdue = True
            return late

    def snapshot(self) -> dict[str, Any]:
        """Everything, as JSON-able data (the units in flight with how long they have run)."""
        now = time.monotonic()
        with self._lock:
            return {"counts": dict(self.counts), "notes": dict(self.notes), "violations": list(self.violations),
                    "in_flight": [{"repro": u.repro, "seconds": round(now - u.started, 1), "bound": u.bound,
                                   "overdue": u.overdue} for u in self._units.values()]}

    def merge(self, snapshot: dict[str, Any]) -> None:
        """Add a phase process's counts, notes and violations."""
        with self._lock:
            self.counts.update(snapshot.get("counts", {}))
            self.notes.update(snapshot.get("notes", {}))
            self.violations.extend(snapshot.get("violations", []))


# --- one phase, in its own process ----------------------------------------------------------

@dataclass
class Phase:
    """A phase's schedule (monotonic times, comparable across processes on one machine), its
    random sequence and counters.  `unit` registers each unit of work, so that a hang is
    reported with what reproduces it and where its thread is."""

    name: str
    deadline: float                     # no unit starts after it
    cutoff: float                       # units still running are abandoned
    rng: random.Random
    tally: Tally = field(default_factory=Tally)
    hang_unit: bool = False             # test hook: the HANG_AT_UNIT-th unit never ends
    _started: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def open(self) -> bool:
        """Whether new work may start."""
        return time.monotonic() < self.deadline

    @contextlib.contextmanager
    def unit(self, repro: dict[str, Any], bound: float | None = None) -> Iterator[None]:
        """Run one unit of work (the with-block) registered with `repro` and `bound` (default
        UNIT_BOUNDS of the phase)."""
        hang = self.hang_unit and next(self._started) == HANG_AT_UNIT
        if hang:
            repro, bound = {**repro, "injected_hang": True}, INJECTED_HANG_BOUND
        token = self.tally.begin(self.name, repro, bound if bound is not None else UNIT_BOUNDS[self.name])
        try:
            if hang:
                _hang_forever()
            yield
        finally:
            self.tally.end(token)


def _hang_forever() -> NoReturn:
    """The test hooks' hang (its name shows in the reported stacks)."""
    while True:
        time.sleep(3600)


HARNESS_ERRORS = 3
"""Harness errors in a row after which a phase's thread stops (a broken setup would otherwise
report the same error thousands of times)."""


def run_units(ph: Phase, work: Callable[[], None], threads: int = 1, stagger: float = 0.0) -> None:
    """Run `work` (one unit per call) over and over on `threads` daemon threads, thread i
    starting `stagger` * i seconds late, until the phase's deadline; return when every thread is
    done, or at the cutoff, abandoning whatever still runs (a daemon thread does not keep the
    process alive).  An exception out of `work` is a violation (a harness error)."""
    def loop(i: int) -> None:
        time.sleep(min(stagger * i, max(0.0, ph.deadline - time.monotonic())))
        errors = 0
        while ph.open() and errors < HARNESS_ERRORS:
            try:
                work()
                errors = 0
            except Exception:  # noqa: BLE001 - reported, the phase goes on
                errors += 1
                ph.tally.violation(ph.name, "harness error: " + traceback.format_exc(), {})

    pool = [threading.Thread(target=loop, args=(i,), name=f"soak-{ph.name}-{i}", daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(max(0.0, ph.cutoff - time.monotonic()))


def _flag_overdue(tally: Tally) -> None:
    """Report the units past their bound as hangs, with their threads' stacks."""
    frames = sys._current_frames()
    for u in tally.overdue(time.monotonic()):
        frame = frames.get(u.thread)
        stack = ("".join(reversed(traceback.format_stack(frame))) if frame is not None
                 else "(its thread has ended)\n")
        tally.add(**{f"hangs_{u.phase}": 1})
        tally.violation(u.phase, f"HANG: a {u.phase} unit ran past its bound of {u.bound:g} s; its thread's stack "
                        "(most recent call first):\n" + stack[:1500], u.repro)


_snapshot_lock = threading.Lock()


def _save_snapshot(path: Path, ph: Phase, finished: bool) -> None:
    """Write the phase's state where the parent reads it (atomically: a temp file renamed)."""
    record = {"phase": ph.name, "deadline": ph.deadline, "cutoff": ph.cutoff, "finished": finished,
              **ph.tally.snapshot()}
    with _snapshot_lock:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record, default=str))
        os.replace(tmp, path)


def _watch(ph: Phase, path: Path, stop: threading.Event) -> None:
    while not stop.wait(WATCH_SECONDS):
        _flag_overdue(ph.tally)
        _save_snapshot(path, ph, finished=False)


def _phase_child(spec_path: str) -> NoReturn:
    """Entry point of a phase's process (``--phase-child SPEC``): run the phase within the
    spec's schedule, save the snapshot, exit without waiting for abandoned threads."""
    spec = json.loads(Path(spec_path).read_text())
    name = spec["phase"]
    os.environ.update(spec["env"])
    logging.getLogger("remoteckpt").setLevel(logging.ERROR)
    stacks = open(spec["stacks"], "w")  # noqa: SIM115 - open until the process ends
    faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
    deadline = min(time.monotonic() + spec["window"], spec["stop_by"])
    ph = Phase(name, deadline, min(deadline + spec["grace"], spec["stop_by"]), random.Random(f"{spec['seed']}-{name}"),
               hang_unit=spec["hang_unit"])
    snapshot = Path(spec["snapshot"])
    _save_snapshot(snapshot, ph, finished=False)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(ph, snapshot, stop), name="soak-watchdog", daemon=True)
    watcher.start()
    try:
        _run_phase(ph, spec)
    except Exception:  # noqa: BLE001 - reported, not fatal
        ph.tally.violation(name, "harness error: " + traceback.format_exc(), {})
    stop.set()
    watcher.join(2 * WATCH_SECONDS)
    _flag_overdue(ph.tally)
    _save_snapshot(snapshot, ph, finished=True)
    sys.stdout.flush()
    sys.stderr.flush()
    if spec["hang_exit"]:
        _block_exit()
    os._exit(0)


def _block_exit() -> NoReturn:
    """Test hook (--hang-exit): what the old soak's network phase could do, a non-daemon thread
    that never ends, then a normal exit, which waits for it forever."""
    threading.Thread(target=_hang_forever, name="soak-injected-hang", daemon=False).start()
    sys.exit(0)


def _run_phase(ph: Phase, spec: dict[str, Any]) -> None:
    if ph.name == "crash":
        crash_phase(ph, spec["s3"], spec["workdir"], spec["concurrency"])
    elif ph.name == "network":
        network_phase(ph, spec["s3"])
    elif ph.name == "race":
        race_phase(ph, spec["s3"], spec["workdir"])
    elif ph.name == "corruption":
        corruption_phase(ph, spec["workdir"])
    else:
        fuzz_phase(ph)


# --- crash --------------------------------------------------------------------------------------

CRASH_STAGGER = 0.3
"""Seconds between the first jobs' starts: the workers' first saves do not all start at once."""


def crash_phase(ph: Phase, s3: dict[str, Any], workdir: str, concurrency: int) -> None:
    rw, _ = _import_harness()
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


# --- network ------------------------------------------------------------------------------------

NETWORK_THREADS = 4
"""Operations through proxies at once (they mostly wait: latency, backoff, the server)."""


def network_phase(ph: Phase, s3: dict[str, Any]) -> None:
    rw, faultproxy = _import_harness()
    counter = itertools.count()
    draw_lock = threading.Lock()

    def draw() -> dict[str, Any]:
        with draw_lock:
            rng = ph.rng
            rates = {k: rng.choice([0, 0, 0.02, 0.05, 0.1, 0.15]) for k in
                     ("slowdown", "cut_request", "cut_response", "drop_response")}
            return {"n": next(counter), "seed": rng.randrange(2**31), **rates,
                    "latency_probability": rng.choice([0, 0, 0.2]), "big_mib": 4 * rng.choice([1, 2, 3]),
                    "max_attempts": rng.choice([3, 5, 8])}

    run_units(ph, lambda: network_job(ph, rw, faultproxy, draw(), s3), NETWORK_THREADS)


def network_job(ph: Phase, rw: Any, faultproxy: Any, repro: dict[str, Any], s3: dict[str, Any]) -> None:
    """Save then restore one checkpoint through a proxy of `repro`'s seed and fault rates; each
    operation is a unit (bounded, reported if it hangs)."""
    import remoteckpt
    from remoteckpt.storage import on_store

    tally = ph.tally
    n, seed = repro.pop("n"), repro["seed"]
    rates = {k: repro[k] for k in ("slowdown", "cut_request", "cut_response", "drop_response")}
    data_rng = np.random.default_rng(seed)
    tensors = {"big": data_rng.standard_normal(repro["big_mib"] // 4 * 2**20, dtype=np.float32),
               "small": data_rng.integers(0, 100, 50), "words": np.array([b"a", bytes(8)], dtype=object)}
    prefix = f"{s3['base']}/net-{n}-{uuid.uuid4().hex[:6]}/ck"
    with faultproxy.FaultProxy(s3["endpoint"], seed=seed, latency=0.05,
                               latency_probability=repro["latency_probability"], **rates) as proxy:
        options = {"endpoint_url": proxy.endpoint_url, "part_size": rw.PART_SIZE,
                   "config_kwargs": {"retries": {"max_attempts": repro["max_attempts"], "mode": "standard"}}}
        for op in ("save", "load"):
            start = time.monotonic()
            try:
                with ph.unit({"op": op, **repro}):
                    if op == "save":
                        remoteckpt.save(tensors, prefix, storage_options=options)
                        tally.add(net_saves_ok=1)
                    else:
                        got = remoteckpt.load(prefix, storage_options=options)
                        exact = all(got[k].tobytes() == np.asarray(v).tobytes() if np.asarray(v).dtype.kind != "O"
                                    else list(got[k]) == list(v) for k, v in tensors.items())
                        tally.add(net_restores_ok=1, net_restores_byte_exact=int(exact), net_wrong_bytes=int(not exact))
                        if not exact:
                            tally.violation("network", "WRONG BYTES restored", repro)
            except remoteckpt.CheckpointError as exc:
                tally.add(**{f"net_{op}s_failed_clearly": 1})
                if "s3://" not in str(exc):
                    tally.violation("network", f"{op} error names no object: {exc}", repro)
                tally.note(f"{op}: {type(exc).__name__}")
            except Exception as exc:  # noqa: BLE001
                tally.add(net_foreign_exceptions=1)
                tally.violation("network", f"{op} raised {type(exc).__name__}: {exc}", repro)
            tally.add(net_operation_seconds=int(time.monotonic() - start))
        with ph.unit({"op": "list uploads", **repro}):
            left = on_store(prefix.rsplit("/", 1)[0], lambda store: store.pending_uploads())
        tally.add(net_operations=2, net_requests=proxy.counters["requests"],
                  net_faults_injected=proxy.faults_injected(), net_response_bytes=proxy.counters["response-bytes"],
                  **{f"net_fault_{k}": v for k, v in proxy.counters.items() if k not in ("requests", "response-bytes")},
                  net_uploads_left=len(left))
        if left:
            tally.violation("network", f"{len(left)} incomplete upload(s) left", repro)


# --- racing jobs --------------------------------------------------------------------------------

def race_phase(ph: Phase, s3: dict[str, Any], workdir: str) -> None:
    rw, _ = _import_harness()
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


# --- corruption ---------------------------------------------------------------------------------

def corruption_phase(ph: Phase, workdir: str) -> None:
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import test_corruption as tc  # type: ignore[import-not-found]

    state: dict[str, Any] = {}

    def one() -> None:
        if not state:
            with ph.unit({"step": "save the pristine checkpoints"}):
                state.update(_pristine(tc, workdir))
        which = ph.rng.choice(list(state["files"]))
        kind = ph.rng.choice(list(DAMAGE_KINDS) if which != "index" else ["bit", "byte", "truncate"])
        data = bytearray(state["pristine"][which])
        pos = ph.rng.randrange(len(data))
        if kind == "bit":
            data[pos] ^= 1 << ph.rng.randrange(8)
        elif kind == "byte":
            data[pos] ^= ph.rng.randrange(1, 256)
        elif kind == "truncate":
            data = data[:pos]
        else:
            data = bytearray(state["others"][which])
        repro = {"file": which, "kind": kind, "position": pos}
        with ph.unit(repro):
            damage_once(ph.tally, tc, state, which, kind, bytes(data), repro)

    run_units(ph, one)


def _pristine(tc: Any, workdir: str) -> dict[str, Any]:
    """A 2-shard checkpoint to damage, and another of the same layout to swap shards from."""
    from remoteckpt.protocol.layout import SAVE_ID_ENV

    directory = Path(tempfile.mkdtemp(prefix="soak-corrupt-", dir=workdir))
    for name, seed in (("ck", 1), ("other", 2)):
        os.environ[SAVE_ID_ENV] = f"soak-{name}"  # each 2-worker save its id (this phase's process only)
        tc.save_two_workers(str(directory / name), seed)
    files = {"index": directory / "ck.index", "data0": tc.data_path(directory, 0), "data1": tc.data_path(directory, 1)}
    return {"directory": directory, "want": tc.expected(1), "files": files,
            "pristine": {k: p.read_bytes() for k, p in files.items()},
            "others": {"data0": tc.data_path(directory, 0, "other").read_bytes(),
                       "data1": tc.data_path(directory, 1, "other").read_bytes()}}


def damage_once(tally: Tally, tc: Any, state: dict[str, Any], which: str, kind: str, damaged: bytes,
                repro: dict[str, Any]) -> None:
    """Write `damaged` over file `which`, read every tensor, count the outcome (in total and for
    `kind`), put the pristine bytes back."""
    import remoteckpt
    from remoteckpt.errors import CheckpointError, CorruptCheckpointError

    state["files"][which].write_bytes(damaged)
    detected = silent = exact = 0
    try:
        with remoteckpt.CheckpointReader(state["directory"] / "ck", options=tc.OPTIONS) as reader:
            for name in state["want"]:
                try:
                    got = reader.get_tensor(name)
                except CorruptCheckpointError as exc:
                    detected += 1
                    if repr(name) not in str(exc):
                        tally.violation("corruption", f"error does not name {name!r}: {exc}", repro)
                except CheckpointError:
                    detected += 1
                else:
                    if tc.same(got, state["want"][name]):
                        exact += 1
                    else:
                        silent += 1
                        tally.violation("corruption", f"SILENT: {name} differs", repro)
    except CorruptCheckpointError:
        detected += 1  # refused at open: the index itself
    except Exception as exc:  # noqa: BLE001
        tally.violation("corruption", f"foreign exception {type(exc).__name__}: {exc}", repro)
    no_effect = int(detected == 0 and silent == 0)
    tally.add(damages=1, **{f"damage_{kind}_{which}": 1}, damages_detected=int(detected > 0),
              damages_without_effect=no_effect, damage_silent=silent,
              tensor_reads_refused=detected, tensor_reads_exact=exact,
              **{f"damages_{kind}": 1, f"damages_{kind}_detected": int(detected > 0),
                 f"damages_{kind}_without_effect": no_effect, f"damages_{kind}_silent": int(silent > 0)})
    state["files"][which].write_bytes(state["pristine"][which])


def corruption_by_kind(counts: Counter[str]) -> dict[str, dict[str, int]]:
    """Damages, effective ones (all but those without effect), detected, without effect and
    silent, per kind of damage and in total."""
    def row(prefix: str, silent: int) -> dict[str, int]:
        damages, without = counts[prefix], counts[f"{prefix}_without_effect"]
        return {"damages": damages, "effective": damages - without, "detected": counts[f"{prefix}_detected"],
                "without_effect": without, "silent": silent}

    table = {kind: row(f"damages_{kind}", counts[f"damages_{kind}_silent"]) for kind in DAMAGE_KINDS}
    table["total"] = row("damages", sum(t["silent"] for t in table.values()))
    return table


# --- fuzz ---------------------------------------------------------------------------------------

FUZZ_BATCH = 200
"""Fuzz inputs per unit of work (one unit per input would cost more in bookkeeping than in decoding)."""


def fuzz_phase(ph: Phase) -> None:
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from remoteckpt.management.state import format_state

    import test_fuzz as tf  # type: ignore[import-not-found]

    seeds = list(tf.SEEDS)
    states = [format_state("ck-30", ["ck-10", "ck-20", "ck-30"], [1.0, 2.0, 3.0], 0.5),
              format_state("../x", ["/etc/passwd", "s3://other/x"])]
    batches = itertools.count()

    def one() -> None:
        with ph.unit({"batch": next(batches)}):
            fuzz_batch(ph.tally, ph.rng, seeds, states)

    run_units(ph, one)


def fuzz_batch(tally: Tally, rng: random.Random, seeds: list[bytes], states: list[bytes]) -> None:
    """FUZZ_BATCH mutated indexes and state files through their decoders."""
    from remoteckpt.errors import CheckpointError
    from remoteckpt.format.bundle import decode_index
    from remoteckpt.management.state import parse_state

    for _ in range(FUZZ_BATCH):
        target = rng.random() < 0.7
        data = bytearray(rng.choice(seeds if target else states))
        for _ in range(rng.randrange(1, 8)):
            op = rng.randrange(5)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(pos, len(data) - 1)] ^= rng.randrange(1, 256)
            elif op == 1:
                data[pos:pos] = rng.randbytes(rng.randrange(1, 16))
            elif op == 2:
                del data[pos:pos + rng.randrange(1, 16)]
            elif op == 3:
                other = rng.choice(seeds)
                data = data[:pos] + bytearray(other[rng.randrange(len(other) + 1):])
            else:
                data = data[:pos]
        blob = bytes(data)
        try:
            if target:
                decode_index(lambda o, n: blob[o:o + n], len(blob))
            else:
                state = parse_state(blob, "/data/run", "checkpoint")
                for name in state.all_model_checkpoint_paths:
                    if ".." in name.split("/") or name.startswith("/"):
                        tally.violation("fuzz", f"state path escapes: {name!r}", {"input": blob.hex()})
            tally.add(fuzz_accepted=1)
        except CheckpointError:
            tally.add(fuzz_refused=1)
        except Exception as exc:  # noqa: BLE001
            tally.violation("fuzz", f"{type(exc).__name__}: {exc}", {"input": blob.hex()})
        tally.add(fuzz_executions=1)


# --- the parent: schedule, phase processes, report ----------------------------------------------

def phase_window(rest: list[str], weights: dict[str, float], now: float, end_of_work: float,
                 stop_by: float) -> float | None:
    """Seconds of work for `rest[0]`: its weight's share of the time left for `rest`, at least
    MIN_WINDOW_SECONDS; None when even that no longer fits before `stop_by`, its latest cutoff."""
    if now + MIN_WINDOW_SECONDS > stop_by:
        return None
    share = max(0.0, end_of_work - now) * weights[rest[0]] / sum(weights[p] for p in rest)
    return max(MIN_WINDOW_SECONDS, share)


@dataclass
class PhaseRun:
    """What the parent learned of one phase's process."""

    snapshot: dict[str, Any]
    seconds: float
    killed: bool
    stacks: str


def run_phase_process(spec: dict[str, Any], directory: Path) -> PhaseRun:
    """Start the phase of `spec` in a process (and process group) of its own; wait until it
    ends, or kill it EXIT_SECONDS after its cutoff (taking its stacks first); kill whatever
    it left running in its group."""
    name = spec["phase"]
    spec = {**spec, "snapshot": str(directory / f"{name}.json"), "stacks": str(directory / f"{name}.stacks")}
    spec_path = directory / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS.parent), os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "remoteckpt.bench.soak", "--phase-child", str(spec_path)],
                            env=env, start_new_session=True)
    try:
        killed = _await_phase(proc, Path(spec["snapshot"]), spec["stop_by"])
    finally:
        _kill_group(proc)
    snapshot = _read_json(Path(spec["snapshot"])) or {"counts": {}, "violations": [], "notes": {}, "in_flight": []}
    stacks = Path(spec["stacks"]).read_text(errors="replace") if killed and Path(spec["stacks"]).exists() else ""
    return PhaseRun(snapshot, time.monotonic() - started, killed, stacks)


def _await_phase(proc: subprocess.Popen[bytes], snapshot: Path, stop_by: float) -> bool:
    """Wait for the phase's process; True if it had to be killed (it has hung)."""
    kill_at = stop_by + EXIT_SECONDS  # until the process has told its cutoff
    cutoff_known = False
    while not _exited(proc):
        if not cutoff_known:
            record = _read_json(snapshot)
            if record is not None:
                kill_at, cutoff_known = min(kill_at, record["cutoff"] + EXIT_SECONDS), True
        if time.monotonic() >= kill_at:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGUSR1)  # faulthandler: every thread's stack
            time.sleep(STACKS_SECONDS)
            return not _exited(proc)
        time.sleep(POLL_SECONDS)
    return False


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the process has ended, without reaping it: its pid, the id of its process group,
    stays reserved until `_kill_group` has signalled the group."""
    if not hasattr(os, "waitid"):
        return proc.poll() is not None
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped
        return True


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the phase's process group: the process if still there, and what it started
    (the forkserver, crash workers, committers); then reap the process."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(EXIT_SECONDS)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def merge_phase(tally: Tally, name: str, run: PhaseRun) -> dict[str, Any]:
    """Add the phase's counts to `tally`, record a hang if it was killed, count the units cut
    off at its cutoff; the phase's line of the record's schedule."""
    snap = run.snapshot
    tally.merge(snap)
    in_flight = snap.get("in_flight", [])
    cut_off = [u for u in in_flight if not u["overdue"]]
    if run.killed:
        where = ("its work had ended: it did not exit" if snap.get("finished")
                 else f"{len(in_flight)} unit(s) in flight")
        tally.add(**{f"hangs_{name}": 1, f"killed_{name}": 1})
        tally.violation(name, f"HANG: the {name} phase's process was still running {EXIT_SECONDS:g} s after its cutoff "
                        f"({where}); killed with its process group; its stacks (most recent call first):\n"
                        + run.stacks[:1500], {"in_flight": in_flight[:10], "stacks": run.stacks[:8000]})
    elif cut_off:
        tally.add(**{f"cut_off_{name}": len(cut_off)})
    return {"seconds": round(run.seconds, 1), "killed": run.killed, "finished": bool(snap.get("finished")),
            "cut_off": len(cut_off) if not run.killed else 0, "cut_off_units": [u["repro"] for u in cut_off][:20]}


@contextlib.contextmanager
def s3_endpoint(args: argparse.Namespace, needed: bool, total: float) -> Iterator[dict[str, Any] | None]:
    """The S3 endpoint of the run: --s3-endpoint, or an embedded SeaweedFS server (started only
    if a phase needs S3, its start bounded by the run's length)."""
    if not needed:
        yield None
        return
    if args.s3_endpoint:
        env = {"AWS_ENDPOINT_URL": args.s3_endpoint, **{k: os.environ[k] for k in AWS_VARIABLES if k in os.environ}}
        yield {"base": f"s3://{args.s3_bucket}/soak-{uuid.uuid4().hex[:8]}", "env": env, "endpoint": args.s3_endpoint}
        return
    from remoteckpt.devserver import SeaweedServer

    with SeaweedServer(startup_timeout=min(60.0, max(10.0, total / 3)), stop_timeout=STOP_SECONDS) as server:
        yield {"base": f"s3://{server.bucket}/soak-{uuid.uuid4().hex[:8]}", "env": server.env(),
               "endpoint": server.endpoint_url}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m remoteckpt.bench.soak", description=__doc__.split("\n\n")[1])
    parser.add_argument("--minutes", type=float, default=10.0, help="wall time for all phases (default 10)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the scenario sequence (default: random)")
    parser.add_argument("--only", default=",".join(PHASES), help="comma-separated phases, run in this order: "
                        + ", ".join(PHASES))
    parser.add_argument("--concurrency", type=int, default=6, help="crash scenarios at once (default 6)")
    parser.add_argument("--out", default="bench-results", help="directory for the JSON record")
    parser.add_argument("--grace", type=float, default=GRACE_SECONDS,
                        help=f"seconds work in flight at a phase's deadline may go on (default {GRACE_SECONDS:g}); "
                        f"the run ends within minutes*60 + grace + {EXIT_SECONDS + TEARDOWN_SECONDS:g} s")
    parser.add_argument("--s3-endpoint", default=None, help="an S3 endpoint to use (AWS_* credentials from the "
                        "environment) instead of starting SeaweedFS")
    parser.add_argument("--s3-bucket", default="remoteckpt-test", help="its bucket (default remoteckpt-test)")
    # test hooks and the phase processes' entry point
    parser.add_argument("--hang-unit", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--hang-exit", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--phase-child", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.phase_child:
        _phase_child(args.phase_child)
    t0 = time.monotonic()
    started = time.time()
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    phases = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {sorted(unknown)}")
    _import_harness()
    weights = {p: PHASES[p] for p in phases}
    total = args.minutes * 60
    end_of_work, hard_end = t0 + total, t0 + total + args.grace
    bound = total + args.grace + EXIT_SECONDS + TEARDOWN_SECONDS
    tally = Tally()
    timings: dict[str, float] = {}
    schedule: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="remoteckpt-soak-") as workdir, \
            s3_endpoint(args, any(p in S3_PHASES for p in phases), total) as s3:
        control = Path(workdir) / "phases"
        control.mkdir()
        for i, phase in enumerate(phases):
            stop_by = hard_end - RESERVED_SECONDS * (len(phases) - 1 - i)
            window = phase_window(phases[i:], weights, time.monotonic(), end_of_work, stop_by)
            if window is None:
                schedule[phase] = {"skipped": "no time left before the hard end"}
                tally.note(f"{phase}: skipped, no time left")
                print(f"[soak] {phase}: skipped, no time left", flush=True)
                continue
            print(f"[soak] {phase}: {window:.0f} s", flush=True)
            spec = {"phase": phase, "window": window, "stop_by": stop_by, "grace": args.grace, "seed": seed,
                    "concurrency": args.concurrency, "s3": s3, "workdir": workdir, "env": s3["env"] if s3 else {},
                    "hang_unit": args.hang_unit == phase, "hang_exit": args.hang_exit == phase}
            run = run_phase_process(spec, control)
            schedule[phase] = {"window": round(window, 1), **merge_phase(tally, phase, run)}
            timings[phase] = schedule[phase]["seconds"]
    c = tally.counts
    record = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "seed": seed,
              "minutes": args.minutes, "phases": timings, "schedule": schedule,
              "bound_seconds": bound, "wall_seconds": round(time.monotonic() - t0, 1),
              "counts": dict(sorted(c.items())), "corruption_by_kind": corruption_by_kind(c),
              "notes": dict(tally.notes.most_common(20)), "violations": tally.violations,
              "reproduce": (f"python -m remoteckpt.bench.soak --minutes {args.minutes:g} --seed {seed} "
                            f"--only {','.join(phases)} --grace {args.grace:g} --concurrency {args.concurrency}")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"soak-{int(started)}.json"
    path.write_text(json.dumps(record, indent=1, default=str))
    print(_summary(record))
    print(f"results: {path}")
    return 1 if tally.violations else 0


def _summary(record: dict[str, Any]) -> str:
    """The printed summary: a block per phase that was scheduled, then the violations."""
    c = Counter(record["counts"])
    lines = [f"soak: {record['minutes']:g} min, seed {record['seed']}, wall {record['wall_seconds']:g} s "
             f"(bound {record['bound_seconds']:g} s), phases {record['phases']}"]
    for phase, entry in record["schedule"].items():
        if "skipped" in entry:
            lines.append(f"  {phase + ':':11} skipped ({entry['skipped']})")
            continue
        block = _PHASE_SUMMARIES[phase](c, record)
        block[-1] += f"; hangs {c[f'hangs_{phase}']}, cut off at the deadline {c[f'cut_off_{phase}']}"
        lines.append(f"  {phase + ':':11} " + block[0])
        lines.extend(f"              {line}" for line in block[1:])
    lines.append(f"  violations: {len(record['violations'])}")
    for v in record["violations"][:20]:
        lines.append(f"    [{v['phase']}] {v['what'][:300]}  repro={json.dumps(v['repro'])[:300]}")
    return "\n".join(lines)


def _crash_summary(c: Counter[str], record: dict[str, Any]) -> list[str]:
    return [f"{c['crash_scenarios']} jobs ({c['crash_local']} local, {c['crash_s3']} S3; "
            f"{c['crash_world1']}/{c['crash_world2']}/{c['crash_world4']} with 1/2/4 workers), "
            f"{c['kills_injected']} kills injected ({c['named_point_kills']} at named points, "
            f"{c['random_kills']} random)",
            f"{c['checkpoints_verified']} checkpoints found, {c['restores_byte_exact']} restored byte-exact, "
            f"silent corruptions {c['silent_corruptions']}, unrestorable committed {c['unrestorable_committed']}; "
            f"gc removed {c['gc_removed_objects']} objects, aborted {c['gc_aborted_uploads']} uploads",
            f"restarted jobs {c['resumed_jobs']}: completed {c['resumed_completed']}, blocked by an unrecorded "
            f"checkpoint {c['resume_blocked_by_unrecorded_checkpoint']}; spurious save failures "
            f"{c['spurious_save_failures']}"]


def _network_summary(c: Counter[str], record: dict[str, Any]) -> list[str]:
    faults = ", ".join(f"{k[10:]} {v}" for k, v in sorted(c.items()) if k.startswith("net_fault_"))
    return [f"{c['net_operations']} operations, {c['net_requests']} requests, {c['net_faults_injected']} faults "
            f"injected ({faults})",
            f"saves ok {c['net_saves_ok']} / failed clearly {c['net_saves_failed_clearly']}; restores byte-exact "
            f"{c['net_restores_byte_exact']} / failed clearly {c['net_loads_failed_clearly']}; wrong bytes "
            f"{c['net_wrong_bytes']}, uploads left {c['net_uploads_left']}"]


def _race_summary(c: Counter[str], record: dict[str, Any]) -> list[str]:
    return [f"{c['races']} races ({c['race_local']} local, {c['race_s3']} S3; "
            f"{c['race_world1']}/{c['race_world2']}/{c['race_world4']} with 1/2/4 workers per job), "
            f"{c['race_workers']} workers; one winner, byte-exact: {c['race_winner_byte_exact']}; no winner "
            f"{c['race_no_winner']}, several winners {c['race_several_winners']}, leftovers {c['race_leftovers']}"]


def _corruption_summary(c: Counter[str], record: dict[str, Any]) -> list[str]:
    by_kind = record["corruption_by_kind"]
    kinds = ", ".join(f"{label} {by_kind[k]['detected']}/{by_kind[k]['effective']} ({by_kind[k]['without_effect']})"
                      for k, label in DAMAGE_KINDS.items())
    return [f"{c['damages']} damages, {c['damages_detected']} detected of {by_kind['total']['effective']} effective, "
            f"{c['damages_without_effect']} without effect (footer padding), silent {c['damage_silent']}; "
            f"tensor reads refused {c['tensor_reads_refused']}, exact {c['tensor_reads_exact']}",
            f"by kind, detected/effective (without effect): {kinds}"]


def _fuzz_summary(c: Counter[str], record: dict[str, Any]) -> list[str]:
    return [f"{c['fuzz_executions']} executions ({c['fuzz_refused']} refused, {c['fuzz_accepted']} accepted)"]


_PHASE_SUMMARIES: dict[str, Callable[[Counter[str], dict[str, Any]], list[str]]] = {
    "crash": _crash_summary, "network": _network_summary, "race": _race_summary,
    "corruption": _corruption_summary, "fuzz": _fuzz_summary}

if __name__ == "__main__":
    sys.exit(main())
