"""The phases of a job's whole life (docs/protocol.md, "A job's whole life"): each unit is a
real job of 2 to 4 worker processes (tests/lifecycle_workers.py) on local disk or S3, saving
one checkpoint with a save id, and then its next try with the same save id.  Ranks may pretend
to run on other hosts (``socket.gethostname``) and have wall clocks hours off, both ways
(``time.time``): the outcomes must not change.

  retry    a save that fails cleanly (one or two workers pass an unsavable tensor), retried
           with the same save id and good data: every rank of the failed attempt raises the same
           error (class and message); the retry commits at once (its coordinator waits for no
           lease), byte-exact, and leaves exactly the checkpoint's files
  restart  a job SIGKILLed mid-save (a named crash point of one rank, then the rest of the job
           killed as a launcher would; or all ranks at a random moment), restarted with the same
           save id, maybe from other hosts: it commits within one lease (plus slack,
           `restart_bound`) of the dead attempt's last renewal, and, where it had to watch the
           dead claim, not before that lease ran out; byte-exact; no gc, nothing else left; a
           job killed after its commit: CheckpointExistsError on every rank of the restart
  zombie   one worker paused (REMOTECKPT_STOP_AT at mid-upload, data-written or table-written;
           or SIGSTOP at a random moment), the rest of its job killed, the job restarted with the
           same save id: the restart commits; then the zombie is woken (SIGCONT): it ends with a
           remoteckpt error, the committed index and data files keep their versions (etags) and
           restore byte-exact; what it left is collected by gc
  long     a save longer than several leases (a slow worker, small lease timeouts) while another
           job (another save id, other hosts) keeps trying the prefix: the claim never changes
           hands, every rank of the other job gets CheckpointBusyError (CheckpointExistsError
           once the long save has committed), the long save commits, byte-exact

A claim watcher (`ClaimWatcher`) polls the prefix's claim and index from the phase's process,
each look with the monotonic times its requests were sent and answered, so that "after its last
renewal" and "before its lease ran out" are judged with bounds on both sides, not guessed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .bounds import LIFE_JOB_SECONDS, RESTART_SLACK_SECONDS
from .runtime import Phase, import_harness, run_units, test_module

LIFE_PHASES = ("retry", "restart", "zombie", "long")

NAME = "ck"
"""The checkpoint every unit saves (in a directory of its own)."""
COMMIT_TIMEOUT = 10.0
"""The jobs' commit_timeout: also how long a woken zombie coordinator waits for its (dead)
workers to acknowledge its verdict before it cleans up."""
RETRY_LEASE = 5.0
"""The lease of the retry phase's jobs: a retry that had to wait for a claim (one left by the
failed attempt, watched from another host) would take at least this long."""
LEASES = {"restart": (1.0, 2.0, 3.0), "zombie": (1.0, 2.0), "long": (1.0, 2.0)}
ZOMBIE_POINTS = ("mid-upload", "data-written", "table-written")
LONG_LEASES = (3, 6)
"""A long save's slow worker starts this many leases (and 1 s) late: the save outlives that
many lease timeouts."""
SKEW_HOURS = (1.0, 12.0)
WATCH_EVERY = 0.05
"""Seconds between the claim watcher's looks."""


# --- where a unit saves, its jobs ----------------------------------------------------------------

@dataclass(frozen=True)
class Where:
    directory: str
    options: dict[str, Any] | None      # storage options
    env: dict[str, str]                  # the S3 endpoint's, for the ranks

    @property
    def prefix(self) -> str:
        return f"{self.directory}/{NAME}"


class Life:
    """What a lifecycle phase's units share: the phase, the test suite's harness, the process
    context of the jobs (the crash harness's forkserver: numpy, remoteckpt and s3fs imported
    once), where they save."""

    def __init__(self, ph: Phase, s3: dict[str, Any], workdir: str) -> None:
        self.ph, self.tally, self.s3, self.workdir = ph, ph.tally, s3, workdir
        self.rw, _ = import_harness()
        self.lw = test_module("lifecycle_workers")
        self.context = self.rw.context()
        self._lock = threading.Lock()
        self._numbers = itertools.count()

    def draw(self, make: Callable[[Life, Any, int], dict[str, Any]]) -> dict[str, Any]:
        """A unit's parameters: its number, backend, world size and job seed, the hosts and
        clock skews of its two jobs' ranks, and what `make` draws for its phase."""
        with self._lock:
            rng = self.ph.rng
            world = rng.choice([2, 2, 3, 4])
            p: dict[str, Any] = {"n": next(self._numbers), "backend": rng.choice(["local", "s3"]), "world": world,
                                 "seed": rng.randrange(1000)}
            skewed = rng.random() < 0.5
            for job in ("a", "b"):
                p[f"hosts_{job}"] = ([f"{job}{p['n']}-host{r}" for r in range(world)] if rng.random() < 0.5
                                     else [""] * world)
                p[f"skews_{job}"] = [round(rng.choice([-1, 1]) * rng.uniform(*SKEW_HOURS) * 3600)
                                     if skewed and rng.random() < 0.7 else 0 for _ in range(world)]
            p.update(make(self, rng, world))
            p["save_id"] = f"{self.ph.name}{p['n']}"
            return p

    def where(self, p: dict[str, Any]) -> Where:
        if p["backend"] == "s3":
            return Where(f"{self.s3['base']}/{self.ph.name}-{p['n']}", {"part_size": self.lw.PART_SIZE},
                         dict(self.s3["env"]))
        return Where(os.path.join(self.workdir, f"{self.ph.name}-{p['n']}"), None, {})

    def job(self, where: Where, p: dict[str, Any], side: str, seed: int, options: dict[str, Any], *,
            save_id: str | None = None, per_rank: dict[int, dict[str, Any]] | None = None) -> Any:
        """Job `side` ("a": the first, "b": the next) of unit `p`: its ranks with their hosts
        and clock skews, `per_rank` more of a rank's settings (its env is added to the S3's)."""
        ranks = []
        for r, (host, skew) in enumerate(zip(p[f"hosts_{side}"], p[f"skews_{side}"])):
            extra = dict((per_rank or {}).get(r, {}))
            env = {**where.env, **extra.pop("env", {})}
            ranks.append(self.lw.Rank(r, seed=seed, big=p.get("big", False), host=host, clock_skew=skew, env=env,
                                      **extra))
        return self.lw.Job(where.prefix, ranks, save_id=save_id or p["save_id"], storage_options=where.options,
                           options={"commit_timeout": COMMIT_TIMEOUT, **options}, context=self.context)

    # --- checks (each problem a violation with the unit's parameters) ---------------------------------

    def violation(self, p: dict[str, Any], what: str) -> None:
        self.tally.violation(self.ph.name, what, p)

    def ended_cleanly(self, p: dict[str, Any], records: list[dict[str, Any]], which: str) -> bool:
        """No rank of `records` hung (killed at its job's bound, with its stack) or raised
        anything but a remoteckpt error; ranks killed on purpose have no record and pass."""
        clean = True
        for rank, r in enumerate(records):
            if r.get("hung"):
                self.tally.add(**{f"hangs_{self.ph.name}_ranks": 1})
                self.violation(p, f"HANG: {which}'s rank {rank} was still running after {LIFE_JOB_SECONDS:g} s; "
                                  f"its stack:\n{r.get('stack', '(none)')}")
                clean = False
            elif "error" in r and r["error"] != "no record" and not r.get("remoteckpt"):
                self.violation(p, f"{which}'s rank {rank} raised a non-remoteckpt {r['error']}: {r['message']}\n"
                                  f"{r.get('traceback', '')}")
                clean = False
        return clean

    def committed(self, p: dict[str, Any], records: list[dict[str, Any]], which: str) -> bool:
        """Every rank of `records` returned (the save committed); else a violation."""
        if all(r.get("ok") for r in records):
            return True
        self.ended_cleanly(p, records, which)
        failed = [{k: r.get(k) for k in ("rank", "error", "message", "seconds")} for r in records if not r.get("ok")]
        self.violation(p, f"{which} did not commit: {failed}")
        return False

    def restores(self, p: dict[str, Any], where: Where, seed: int, when: str) -> bool:
        """The checkpoint restores job `seed`'s tensors byte-exact (the crash harness's check)."""
        verdict = self.rw.Verdict()
        want = self.lw.expected(seed, p["world"], big=p.get("big", False))
        if self.rw.check_checkpoint(where.prefix, want, where.options, verdict, f"{self.ph.name} {when}"):
            return True
        for problem in verdict.problems:
            self.violation(p, problem)
        return False

    def only_the_checkpoint(self, p: dict[str, Any], where: Where, when: str) -> bool:
        """The directory holds exactly the checkpoint's files: no claim, no staging, no upload,
        no temporary file (each kind counted)."""
        keys = self.lw.listing(where.directory, where.options)
        want = self.lw.checkpoint_files(NAME, p["world"])
        if keys == want:
            return True
        extra = sorted(set(keys) - set(want))
        for kind in sorted({leftover_kind(k) for k in extra}):
            self.tally.add(**{f"{self.ph.name}_leftover_{kind}": 1})
        self.violation(p, f"{when}, besides the checkpoint's files the directory holds {extra} and lacks "
                          f"{sorted(set(want) - set(keys))}")
        return False

    def index_exists(self, where: Where) -> bool:
        from remoteckpt.storage import on_store

        return on_store(where.directory, lambda store: store.exists(f"{NAME}.index"), where.options)

    def count(self, p: dict[str, Any]) -> None:
        name = self.ph.name
        self.tally.add(**{f"{name}_units": 1, f"{name}_{p['backend']}": 1, f"{name}_world{p['world']}": 1,
                          f"{name}_skewed": int(any(p["skews_a"]) or any(p["skews_b"])),
                          f"{name}_other_hosts": int(p["hosts_a"][0] != p["hosts_b"][0])})


def leftover_kind(key: str) -> str:
    """What a key left beside a checkpoint is: "staging" (notices, reports, acknowledgements),
    "claim", "temp" (a local writer's temporary file), "upload" (an incomplete multipart upload),
    or "data" (a data file of another world size)."""
    if key.startswith("upload of "):
        return "upload"
    if ".tempstate" in key:
        return "temp"
    if key.endswith(".claim"):
        return "claim"
    return "staging" if ".tmp" in key.split("/")[0] else "data"


def until(condition: Callable[[], bool], seconds: float) -> bool:
    """Wait up to `seconds` for `condition`; whether it holds."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def ms(seconds: float) -> int:
    return int(round(seconds * 1000))


# --- the claim watcher ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Look:
    """One look at the prefix: the claim's version and attempt (None: no claim) and whether
    the index exists, seen by requests sent at `sent` and answered by `answered`."""

    sent: float
    answered: float
    etag: str | None
    attempt: str | None
    index: bool


class ClaimWatcher:
    """Looks at `where`'s claim (a GET: its version and attempt) and index (a HEAD) every
    WATCH_EVERY seconds on a thread of its own, from entering the with-block to leaving it."""

    def __init__(self, where: Where) -> None:
        self.where = where
        self.looks: list[Look] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-claim-watch", daemon=True)

    def __enter__(self) -> ClaimWatcher:
        self._thread.start()
        until(lambda: bool(self.looks) or not self._thread.is_alive(), 10.0)  # the first look comes before any job
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10.0)

    def _run(self) -> None:
        from remoteckpt.engine import loop
        from remoteckpt.errors import CheckpointError
        from remoteckpt.storage import open_store

        async def opened() -> Any:
            return open_store(self.where.directory, self.where.options)

        try:
            store = loop.run(opened())
        except BaseException as exc:  # noqa: BLE001 - reported by the unit
            self.error = exc
            return
        try:
            while True:
                last = self._stop.is_set()  # one more look after the with-block's work
                sent = time.monotonic()
                with contextlib.suppress(CheckpointError):  # a failed look is just not a look
                    etag, attempt, index = loop.run(self._look(store))
                    self.looks.append(Look(sent, time.monotonic(), etag, attempt, index))
                if last:
                    break
                self._stop.wait(WATCH_EVERY)
        except BaseException as exc:  # noqa: BLE001 - reported by the unit
            self.error = exc
        finally:
            with contextlib.suppress(Exception):
                loop.run(store.close())

    @staticmethod
    async def _look(store: Any) -> tuple[str | None, str | None, bool]:
        from remoteckpt.errors import CheckpointNotFoundError
        from remoteckpt.protocol.records import MAX_RECORD_BYTES, ClaimRecord

        try:
            held = await store.get_object(f"{NAME}.claim", max_size=MAX_RECORD_BYTES)
        except CheckpointNotFoundError:
            etag = attempt = None
        else:
            record = ClaimRecord.decode(held.data)
            etag, attempt = held.etag, (record.attempt if record is not None else "(not a claim)")
        return etag, attempt, await store.head(f"{NAME}.index") is not None

    # --- what the looks say; each event as (the look before it, the look that saw it) -------------

    def attempts(self, before: float) -> set[str]:
        """The attempts whose claims were seen in looks answered before `before`."""
        return {look.attempt for look in self.looks if look.answered < before and look.attempt is not None}

    def changes(self, which: Callable[[Look], bool]) -> list[tuple[Look, Look]]:
        """The claim's changes of version to a look satisfying `which`: each happened after the
        earlier look was sent and before the later was answered."""
        return [(a, b) for a, b in zip(self.looks, self.looks[1:]) if b.etag != a.etag and which(b)]

    def commit(self) -> tuple[Look, Look] | None:
        return next(((a, b) for a, b in zip(self.looks, self.looks[1:]) if b.index and not a.index), None)


def judge_takeover(life: Life, p: dict[str, Any], watcher: ClaimWatcher, restarted_at: float, killed_at: float,
                   lease: float, watched: bool) -> None:
    """The restart's commit came within `restart_bound` of the dead attempt's last renewal
    (of the kill, if it never claimed); and, if the restart had to watch the dead claim
    (`watched`), it took the claim over no sooner than one lease after that renewal."""
    name, tally = life.ph.name, life.tally
    if watcher.error is not None:
        life.violation(p, f"harness error: the claim watcher failed: {watcher.error!r}")
        return
    dead = watcher.attempts(restarted_at)
    renewals = watcher.changes(lambda look: look.attempt in dead) if dead else []
    low, high = (renewals[-1][0].sent, renewals[-1][1].answered) if renewals else (killed_at, killed_at)
    commit = watcher.commit()
    if commit is None:
        life.violation(p, "the claim watcher never saw the restart's index appear")
        return
    late = commit[0].sent - high  # the commit came at least this long after the last renewal
    tally.most(**{f"{name}_max_ms_past_lease": ms(commit[1].answered - low - lease)})
    if late > restart_bound(lease):
        tally.add(**{f"{name}_late_commits": 1})
        life.violation(p, f"the restart committed {late:.2f} s after the dead attempt's last renewal, later than one "
                          f"lease ({lease:g} s) and its slack ({restart_bound(lease) - lease:.2f} s)")
    takeovers = watcher.changes(lambda look: look.attempt is not None and look.attempt not in dead)
    if not (watched and dead and renewals and takeovers):
        return
    early = takeovers[0][1].answered - low  # the takeover came at most this long after the last renewal
    tally.add(**{f"{name}_watched_takeovers": 1})
    tally.least(**{f"{name}_min_pct_lease_to_takeover": int(100 * early / lease)})
    if early < lease:
        tally.add(**{f"{name}_early_takeovers": 1})
        life.violation(p, f"the dead attempt's claim was taken over {early:.2f} s after its last renewal, before its "
                          f"lease of {lease:g} s ran out")


def restart_bound(lease: float) -> float:
    """Seconds after the dead attempt's last renewal by which a restart must have committed:
    one lease, the quarter lease the last renewal may precede the kill, the eighth a watcher
    may look late, and RESTART_SLACK_SECONDS (the restart's processes, its save)."""
    return lease * (1 + 1 / 4 + 1 / 8) + RESTART_SLACK_SECONDS


# --- retry ------------------------------------------------------------------------------------------

def retry_unit(life: Life, p: dict[str, Any]) -> None:
    where, tally = life.where(p), life.tally
    options = {"lease_timeout": RETRY_LEASE}
    failed = life.job(where, p, "a", p["seed"], options, per_rank={r: {"bad": True} for r in p["bad"]}).run(
        LIFE_JOB_SECONDS)
    life.count(p)
    verdicts = {(r.get("error"), r.get("message")) for r in failed}
    if len(verdicts) == 1 and all(r.get("remoteckpt") for r in failed):
        tally.add(retry_one_error=1)
        tally.note(f"retry: every rank of the failed attempt raised {failed[0]['error']}")
    elif life.ended_cleanly(p, failed, "the failed attempt"):
        life.violation(p, "the ranks of the failed attempt did not all raise one error (class and message): "
                          + str([{k: r.get(k) for k in ("rank", "ok", "error", "message")} for r in failed]))
    retried = life.job(where, p, "b", p["seed"] + 1, options).run(LIFE_JOB_SECONDS)
    if not life.committed(p, retried, "the retry"):
        return
    took = retried[0]["seconds"]
    tally.most(retry_max_ms_coordinator=ms(took))
    if took >= RETRY_LEASE:
        life.violation(p, f"the retry's coordinator took {took:.2f} s, a lease ({RETRY_LEASE:g} s) or more: it "
                          "did not commit at once")
    tally.add(retry_committed=1, retry_at_once=int(took < RETRY_LEASE),
              retry_byte_exact=int(life.restores(p, where, p["seed"] + 1, "after the retry")),
              retry_clean=int(life.only_the_checkpoint(p, where, "after the retry")))


def draw_retry(life: Life, rng: Any, world: int) -> dict[str, Any]:
    return {"bad": sorted(rng.sample(range(world), rng.choice([1, 1, 2])))}


# --- restart after SIGKILL ---------------------------------------------------------------------------

def restart_unit(life: Life, p: dict[str, Any]) -> None:
    from remoteckpt.faults import ENV as CRASH_ENV

    where, tally, lease = life.where(p), life.tally, p["lease"]
    options = {"lease_timeout": lease}
    victim = p.get("victim", 0)
    crash = {victim: {"env": {CRASH_ENV: p["point"]}}} if "point" in p else None
    with ClaimWatcher(where) as watcher:
        dead = life.job(where, p, "a", p["seed"], options, per_rank=crash).start()
        try:
            if "point" in p:  # the victim dies at its point; then the launcher kills the rest of the job
                until(lambda: dead.procs[victim].exitcode is not None or not dead.running(), LIFE_JOB_SECONDS)
            else:
                until(lambda: not dead.running(), p["kill_after"])
            victim_first = dead.procs[victim].exitcode is not None and dead.running()
        finally:
            dead.kill()
        killed_at = time.monotonic()
        dead_records = dead.wait(5.0)
        died = "point" in p and victim_first and dead_records[victim].get("error") == "no record"
        committed_before = life.index_exists(where)
        restarted_at = time.monotonic()
        restarted = life.job(where, p, "b", p["seed"] + 1, options).run(LIFE_JOB_SECONDS)
    life.count(p)
    tally.add(restart_named=int("point" in p), restart_random=int("point" not in p),
              restart_died_at_point=int("point" in p and died))
    life.ended_cleanly(p, dead_records, "the killed job")
    if committed_before:
        found_committed(life, p, where, restarted, "the restart")
        return
    if not life.committed(p, restarted, "the restart"):
        return
    watched = p["hosts_b"][0] != p["hosts_a"][0]  # another host: the dead claim is watched for a lease
    judge_takeover(life, p, watcher, restarted_at, killed_at, lease, watched)
    tally.add(restart_committed=1, restart_byte_exact=int(life.restores(p, where, p["seed"] + 1, "after the restart")),
              restart_clean=int(life.only_the_checkpoint(p, where, "after the restart")))


def found_committed(life: Life, p: dict[str, Any], where: Where, records: list[dict[str, Any]], which: str) -> None:
    """The killed job had committed before it died: every rank of the next job must raise
    CheckpointExistsError (the step is saved already), and the checkpoint is the first job's,
    byte-exact."""
    name = life.ph.name
    life.tally.add(**{f"{name}_found_committed": 1})
    errors = [r.get("error") for r in records]
    if errors != ["CheckpointExistsError"] * len(records) and life.ended_cleanly(p, records, which):
        life.tally.add(**{f"{name}_found_committed_disagree": 1})
        life.violation(p, f"the prefix was committed before the kill, and the ranks of {which} did not all raise "
                          "CheckpointExistsError: " + str([{k: r.get(k) for k in ("rank", "ok", "error", "message")}
                                                          for r in records]))
    exact = life.restores(p, where, p["seed"], "(committed before the kill)")
    life.tally.add(**{f"{name}_found_committed_byte_exact": int(exact)})


def draw_restart(life: Life, rng: Any, world: int) -> dict[str, Any]:
    p: dict[str, Any] = {"lease": rng.choice(LEASES["restart"]), "victim": rng.randrange(world)}
    if rng.random() < 0.6:
        p["point"] = rng.choice([pt for pt in life.rw.SAVE_POINTS if life.rw.reachable(pt, world, p["victim"])])
    else:
        p["kill_after"] = round(rng.uniform(0.05, 2.5), 3)
    p["big"] = p.get("point") == "mid-upload" or rng.random() < 0.3  # a multipart upload under way on S3
    return p


# --- zombies -------------------------------------------------------------------------------------

def zombie_unit(life: Life, p: dict[str, Any]) -> None:
    from remoteckpt.faults import STOP_ENV

    where, tally, lease, victim = life.where(p), life.tally, p["lease"], p["victim"]
    options = {"lease_timeout": lease}
    pause = {victim: {"env": {STOP_ENV: p["point"]}}} if "point" in p else None
    with ClaimWatcher(where) as watcher:
        # A launcher's restart count is part of the default save id: the restarted job (whose
        # old instance has a live, paused process) saves under a new one (docs/protocol.md).
        first = life.job(where, p, "a", p["seed"], options, per_rank=pause, save_id=f"{p['save_id']}.r0").start()
        try:
            zombie = first.procs[victim]
            if "point" not in p:
                until(lambda: not first.running(), p["stop_after"])
                with contextlib.suppress(ProcessLookupError):
                    os.kill(zombie.pid, signal.SIGSTOP)
            paused = life.lw.wait_stopped(zombie.pid, LIFE_JOB_SECONDS)
            first.kill(sparing=(victim,) if paused else ())  # the job dies; its paused worker lives on
            life.count(p)
            tally.add(zombie_named=int("point" in p), zombie_random=int("point" not in p))
            if not paused:
                never_paused(life, p, first.wait(5.0))
                return
            killed_at = time.monotonic()
            committed_before = life.index_exists(where)
            seed = p["seed"] if committed_before else p["seed"] + 1
            restarted_at = time.monotonic()
            restarted = life.job(where, p, "b", p["seed"] + 1, options,
                                 save_id=f"{p['save_id']}.r1").run(LIFE_JOB_SECONDS)
            before = life.lw.committed_versions(where.directory, where.options, NAME)
            exact_before = ((committed_before or all(r.get("ok") for r in restarted))
                            and life.restores(p, where, seed, "after the restart, the zombie still paused"))
            with contextlib.suppress(ProcessLookupError):
                os.kill(zombie.pid, signal.SIGCONT)
            records = first.wait(LIFE_JOB_SECONDS)
        finally:
            first.kill()
    tally.add(zombie_paused=1, zombie_coordinator=int(victim == 0))
    woke = records[victim]
    if committed_before:
        found_committed(life, p, where, restarted, "the restart")
    elif life.committed(p, restarted, "the restart"):
        # a paused coordinator's claim is alive on this host: watched like another host's
        watched = victim == 0 or p["hosts_b"][0] != p["hosts_a"][0]
        judge_takeover(life, p, watcher, restarted_at, killed_at, lease, watched)
        tally.add(zombie_restart_committed=1)
    else:
        return
    if woke.get("ok"):
        if not committed_before:
            life.violation(p, f"the zombie (rank {victim}) returned success for an attempt that never committed")
    elif life.ended_cleanly(p, [woke], "the zombie") and "error" in woke:
        tally.add(zombie_remoteckpt_errors=1)
        tally.note(f"zombie: woken {'coordinator' if victim == 0 else 'worker'} raised {woke['error']}")
    after = life.lw.committed_versions(where.directory, where.options, NAME)
    if sorted(before) != life.lw.checkpoint_files(NAME, p["world"]) or after != before:
        tally.add(zombie_committed_bytes_changed=1)
        life.violation(p, f"the committed files changed while the zombie ran: before {before}, after {after}")
    exact = exact_before and life.restores(p, where, seed, "after the zombie woke")
    tally.add(zombie_byte_exact=int(exact), zombie_leftovers_collected=int(collect_leftovers(life, p, where)))


def never_paused(life: Life, p: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """The victim ended before it could be paused: at a random moment after its save, no
    zombie (counted); at a named point every rank passes, a violation."""
    life.tally.add(zombie_not_paused=1)
    life.ended_cleanly(p, records, "the job")
    if "point" in p:
        life.violation(p, f"rank {p['victim']} never paused at {p['point']}: {records[p['victim']]}")


def collect_leftovers(life: Life, p: dict[str, Any], where: Where) -> bool:
    """What the zombie left beside the checkpoint (its staging, notices) is gc's: afterwards
    the directory holds exactly the checkpoint, which still restores."""
    import remoteckpt

    left = [k for k in life.lw.listing(where.directory, where.options)
            if k not in life.lw.checkpoint_files(NAME, p["world"])]
    life.tally.add(zombie_leftover_objects=len(left))
    remoteckpt.gc(where.directory, older_than=0, storage_options=where.options)
    return life.only_the_checkpoint(p, where, "after gc")


def draw_zombie(life: Life, rng: Any, world: int) -> dict[str, Any]:
    p: dict[str, Any] = {"lease": rng.choice(LEASES["zombie"]), "victim": rng.randrange(world)}
    if rng.random() < 0.6:
        p["point"] = rng.choice(ZOMBIE_POINTS)
        p["big"] = p["point"] == "mid-upload" or rng.random() < 0.3  # a multipart upload under way on S3
    else:
        p["stop_after"] = round(rng.uniform(0.05, 2.5), 3)
        p["big"] = rng.random() < 0.3
    return p


# --- long saves ----------------------------------------------------------------------------------

def long_unit(life: Life, p: dict[str, Any]) -> None:
    where, tally, lease = life.where(p), life.tally, p["lease"]
    delay = p["leases"] * lease + 1.0
    slow = life.job(where, p, "a", p["seed"], {"lease_timeout": lease, "commit_timeout": delay + COMMIT_TIMEOUT},
                    per_rank={p["slow_rank"]: {"delay": delay}})
    other = {"hosts_b": p["hosts_b"][:p["other_world"]], "skews_b": p["skews_b"][:p["other_world"]]}
    outcomes: list[list[dict[str, Any]]] = []
    with ClaimWatcher(where) as watcher:
        slow.start()
        try:
            until(lambda: any(look.attempt for look in watcher.looks), LIFE_JOB_SECONDS)
            while slow.running() and time.monotonic() - watcher.looks[0].sent < LIFE_JOB_SECONDS:
                outcomes.append(life.job(where, other, "b", p["seed"] + 1, {"lease_timeout": lease},
                                         save_id=f"{p['save_id']}-other").run(LIFE_JOB_SECONDS))
                time.sleep(lease / 2)
            records = slow.wait(LIFE_JOB_SECONDS)
        finally:
            slow.kill()
    life.count(p)
    tally.add(long_other_jobs=len(outcomes))
    for job in outcomes:
        for r in job:
            if r.get("error") in ("CheckpointBusyError", "CheckpointExistsError"):
                tally.add(**{f"long_other_{r['error']}": 1})
            elif r.get("ok"):
                life.violation(p, f"the other job committed over the long save: {job}")
            elif life.ended_cleanly(p, [r], "the other job"):
                life.violation(p, f"the other job failed otherwise than busy or exists: {r}")
    long_attempt = next((look.attempt for look in watcher.looks if look.attempt), None)
    taken = [look for look in watcher.looks if look.attempt not in (None, long_attempt) and not look.index]
    if taken:
        tally.add(long_taken_over=1)
        life.violation(p, f"the long save's claim went to attempt {taken[0].attempt} before its commit")
    if not life.committed(p, records, "the long save"):
        return
    took = records[0]["seconds"]
    tally.most(long_max_leases_x10=int(10 * took / lease))
    tally.least(long_min_leases_x10=int(10 * took / lease))
    tally.add(long_committed=1, long_byte_exact=int(life.restores(p, where, p["seed"], "after the long save")),
              long_clean=int(life.only_the_checkpoint(p, where, "after the long save")),
              long_busy_seen=int(any(r.get("error") == "CheckpointBusyError" for job in outcomes for r in job)))


def draw_long(life: Life, rng: Any, world: int) -> dict[str, Any]:
    return {"lease": rng.choice(LEASES["long"]), "leases": rng.randint(*LONG_LEASES),
            "slow_rank": rng.randrange(1, world), "other_world": rng.randint(1, world)}


# --- the phases --------------------------------------------------------------------------------------

UNITS: dict[str, Callable[[Life, dict[str, Any]], None]] = {
    "retry": retry_unit, "restart": restart_unit, "zombie": zombie_unit, "long": long_unit}


def life_phase(ph: Phase, s3: dict[str, Any], workdir: str, concurrency: int) -> None:
    """Phase `ph.name` (one of LIFE_PHASES): its units on max(1, concurrency // 3) threads."""
    life = Life(ph, s3, workdir)
    unit = UNITS[ph.name]
    draw = {"retry": draw_retry, "restart": draw_restart, "zombie": draw_zombie, "long": draw_long}[ph.name]

    def one() -> None:
        p = life.draw(draw)
        with ph.unit(p):
            unit(life, p)

    run_units(ph, one, max(1, concurrency // 3))


# --- replaying a unit --------------------------------------------------------------------------------


def replay(phase: str, params: dict[str, Any], times: int) -> int:
    """``python -m benchmarks.soak --replay PHASE 'PARAMETERS' [--times N]``: run the lifecycle
    unit a violation names (its parameters, as the soak printed them) `times` times, on local
    disk or an embedded S3 server; print what was counted and found; 1 if anything was.  Kill
    points and pauses are named, timings vary: some take a few tries."""
    import json
    import random
    import tempfile

    now = time.monotonic()
    ph = Phase(phase, now + 86400, now + 86400, random.Random(0))
    with tempfile.TemporaryDirectory(prefix="soak-replay-") as workdir, contextlib.ExitStack() as stack:
        s3: dict[str, Any] = {}
        if params.get("backend") == "s3":
            from remoteckpt.testing import SeaweedServer

            server = stack.enter_context(SeaweedServer())
            os.environ.update(server.env())
            s3 = {"base": f"s3://{server.bucket}/replay", "env": server.env()}
        life = Life(ph, s3, workdir)
        for n in range(times):
            UNITS[phase](life, {**params, "n": n})
    print(json.dumps(dict(sorted(ph.tally.counts.items())), indent=1))
    for v in ph.tally.violations:
        print(f"VIOLATION: {v['what']}\n")
    return 1 if ph.tally.violations else 0
