"""What runs inside a phase's process: the Tally (counts, notes, violations, units in flight),
the Phase (its schedule and random sequence; each unit of work registered with what reproduces
it), run_units (units over and over on daemon threads until the deadline), the overdue check
that reports a unit past its bound as a hang with its stack, the snapshots the parent reads,
the test hooks that hang or die on purpose (--hang-unit, --hang-exit, --die-in), and the
check that ends a phase's process group when the process's parent (the run) is gone."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from .. import test_module as suite_module
from .bounds import HANG_AT_UNIT, INJECTED_HANG_BOUND, UNIT_BOUNDS, WATCH_SECONDS


def test_module(name: str) -> Any:
    """The test suite's module `name` (tests/ is on the import path: ``make soak`` puts it there)."""
    return suite_module(name, "make soak, or PYTHONPATH=tests python -m benchmarks.soak")


def import_harness() -> tuple[Any, Any]:
    """The test suite's reliability workers and fault-injecting proxy."""
    return test_module("reliability_workers"), test_module("faultproxy")


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

    def most(self, **values: int) -> None:
        """Keep the largest value given for each name: a maximum, not a sum.  (The run adds
        each phase's counts once, so a phase's own names keep their maxima.)"""
        with self._lock:
            for name, value in values.items():
                self.counts[name] = max(self.counts[name], value) if name in self.counts else value

    def least(self, **values: int) -> None:
        """Keep the smallest value given for each name (as `most`)."""
        with self._lock:
            for name, value in values.items():
                self.counts[name] = min(self.counts[name], value) if name in self.counts else value

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


# --- one phase -----------------------------------------------------------------------------------

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
    die: str | None = None              # test hook: the process dies in it ("segv" or "exit")
    _started: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def open(self) -> bool:
        """Whether new work may start."""
        return time.monotonic() < self.deadline

    @contextlib.contextmanager
    def unit(self, repro: dict[str, Any], bound: float | None = None) -> Iterator[None]:
        """Run one unit of work (the with-block) registered with `repro` and `bound` (default
        UNIT_BOUNDS of the phase)."""
        second = next(self._started) == HANG_AT_UNIT
        hang, die = self.hang_unit and second, self.die if second else None
        if hang:
            repro, bound = {**repro, "injected_hang": True}, INJECTED_HANG_BOUND
        if die:
            repro = {**repro, "injected_death": die}
        token = self.tally.begin(self.name, repro, bound if bound is not None else UNIT_BOUNDS[self.name])
        try:
            if hang:
                _hang_forever()
            if die:
                _die(die)
            yield
        finally:
            self.tally.end(token)


def _hang_forever() -> NoReturn:
    """The test hooks' hang (its name shows in the reported stacks)."""
    while True:
        time.sleep(3600)


def _die(how: str) -> NoReturn:
    """Test hook (--die-in PHASE:HOW): the phase's process dies in the middle of a unit, once the
    watchdog has saved that unit as in flight: SIGSEGV ("segv", as a crash in a C extension
    would) or exit code 3 without its snapshot ("exit")."""
    time.sleep(3 * WATCH_SECONDS)
    sys.stderr.flush()
    if how == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(1.0)  # the signal is delivered (faulthandler dumps, then the process dies)
    os._exit(3)


def block_exit() -> NoReturn:
    """Test hook (--hang-exit): what the old soak's network phase could do, a non-daemon thread
    that never ends, then a normal exit, which waits for it forever."""
    threading.Thread(target=_hang_forever, name="soak-injected-hang", daemon=False).start()
    sys.exit(0)


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


def flag_overdue(tally: Tally) -> None:
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


def save_snapshot(path: Path, ph: Phase, finished: bool) -> None:
    """Write the phase's state where the parent reads it (atomically: a temp file renamed)."""
    record = {"phase": ph.name, "deadline": ph.deadline, "cutoff": ph.cutoff, "finished": finished,
              **ph.tally.snapshot()}
    with _snapshot_lock:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record, default=str))
        os.replace(tmp, path)


def watch(ph: Phase, path: Path, stop: threading.Event) -> None:
    while not stop.wait(WATCH_SECONDS):
        flag_overdue(ph.tally)
        save_snapshot(path, ph, finished=False)


def exit_with_parent(parent: int) -> None:
    """Run on a daemon thread for the life of a phase's process (its own session and process
    group): once its parent, the run, is gone (killed, say, so that its cleanup did not run),
    SIGKILL the process's group (itself, crash workers, committers, the fault proxy) instead
    of running on as orphans.  A daemon thread runs on while a non-daemon one blocks exit."""
    while os.getppid() == parent:
        time.sleep(WATCH_SECONDS)
    os.killpg(0, signal.SIGKILL)
