"""A phase in a process (and process group) of its own, both ends: the process's entry point
(``--phase-child SPEC``: run the phase within the spec's schedule, save its snapshot, exit
abandoning what still runs; leave a stack on a fatal signal; end its group if the run is gone)
and the parent's side (start it, wait for it, take its stacks and kill it if it hangs, kill its
group, merge its counts into the run's, report it if it died)."""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from .bounds import EXIT_SECONDS, POLL_SECONDS, STACKS_SECONDS, WATCH_SECONDS
from .crash import crash_phase, race_phase
from .damage import corruption_phase, fuzz_phase
from .lifecycle import LIFE_PHASES, life_phase
from .network import network_phase
from .runtime import (
    Phase,
    Tally,
    block_exit,
    exit_with_parent,
    flag_overdue,
    import_harness,
    save_snapshot,
    test_module,
    watch,
)
from .tiers import tiers_phase

PHASE_MODULES = {"corruption": ("test_corruption",), "fuzz": ("test_fuzz",),
                 "tiers": ("tier_workers", "host_tier_workers"), **dict.fromkeys(LIFE_PHASES, ("lifecycle_workers",))}
"""The test suite's modules each phase runs besides the crash harness and the fault proxy."""
FORKSERVER_PHASES = ("crash", "race", "tiers", *LIFE_PHASES)
"""The phases whose jobs are processes of the crash harness's forkserver."""


# --- the phase's process ------------------------------------------------------------------------

def phase_child(spec_path: str) -> NoReturn:
    """Entry point of a phase's process (``--phase-child SPEC``): run the phase within the
    spec's schedule, save the snapshot, exit without waiting for abandoned threads."""
    spec = json.loads(Path(spec_path).read_text())
    name = spec["phase"]
    os.environ.update(spec["env"])
    logging.getLogger("remoteckpt").setLevel(logging.ERROR)
    stacks = open(spec["stacks"], "w")  # noqa: SIM115 - open until the process ends
    faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
    fatal = open(spec["fatal"], "w")  # noqa: SIM115 - a fatal signal's stacks (the parent reports them)
    faulthandler.enable(file=fatal, all_threads=True)
    threading.Thread(target=exit_with_parent, args=(spec["parent"],), name="soak-parent-watch", daemon=True).start()
    _load_harness(name)
    deadline = min(time.monotonic() + spec["window"], spec["stop_by"])
    ph = Phase(name, deadline, min(deadline + spec["grace"], spec["stop_by"]), random.Random(f"{spec['seed']}-{name}"),
               hang_unit=spec["hang_unit"], die=spec["die"])
    snapshot = Path(spec["snapshot"])
    save_snapshot(snapshot, ph, finished=False)
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(ph, snapshot, stop), name="soak-watchdog", daemon=True)
    watcher.start()
    try:
        _run_phase(ph, spec)
    except Exception:  # noqa: BLE001 - reported, not fatal
        ph.tally.violation(name, "harness error: " + traceback.format_exc(), {})
    stop.set()
    watcher.join(2 * WATCH_SECONDS)
    flag_overdue(ph.tally)
    save_snapshot(snapshot, ph, finished=True)
    sys.stdout.flush()
    sys.stderr.flush()
    if spec["hang_exit"]:
        block_exit()
    os._exit(0)


def _load_harness(name: str) -> None:
    """Import what phase `name` runs, and start its forkserver, before its window opens: the
    window is for work (a short one would pass before the first unit could start)."""
    rw, _ = import_harness()
    for module in PHASE_MODULES.get(name, ()):
        test_module(module)
    if name in FORKSERVER_PHASES:
        import multiprocessing.forkserver

        rw.context()  # the preloaded modules
        multiprocessing.forkserver.ensure_running()


def _run_phase(ph: Phase, spec: dict[str, Any]) -> None:
    if ph.name == "crash":
        crash_phase(ph, spec["s3"], spec["workdir"], spec["concurrency"])
    elif ph.name == "network":
        network_phase(ph, spec["s3"])
    elif ph.name == "race":
        race_phase(ph, spec["s3"], spec["workdir"])
    elif ph.name in LIFE_PHASES:
        life_phase(ph, spec["s3"], spec["workdir"], spec["concurrency"])
    elif ph.name == "corruption":
        corruption_phase(ph, spec["workdir"])
    elif ph.name == "tiers":
        tiers_phase(ph, spec["s3"], spec["concurrency"])
    else:
        fuzz_phase(ph)


# --- the parent's side -------------------------------------------------------------------------

@dataclass
class PhaseRun:
    """What the parent learned of one phase's process."""

    snapshot: dict[str, Any]
    seconds: float
    killed: bool                        # by the parent: it hung
    stacks: str                         # every thread's, taken before it was killed
    returncode: int | None              # -N: signal N
    fatal: str                          # faulthandler's output on a fatal signal (SIGSEGV, ...)


def run_phase_process(spec: dict[str, Any], directory: Path) -> PhaseRun:
    """Start the phase of `spec` in a process (and process group) of its own; wait until it
    ends, or kill it EXIT_SECONDS after its cutoff (taking its stacks first); kill whatever
    it left running in its group."""
    name = spec["phase"]
    spec = {**spec, "snapshot": str(directory / f"{name}.json"), "stacks": str(directory / f"{name}.stacks"),
            "fatal": str(directory / f"{name}.fatal"), "parent": os.getpid()}
    spec_path = directory / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.soak", "--phase-child", str(spec_path)],
                            start_new_session=True)
    try:
        killed = _await_phase(proc, Path(spec["snapshot"]), spec["stop_by"])
    finally:
        _kill_group(proc)
    snapshot = _read_json(Path(spec["snapshot"])) or {"counts": {}, "violations": [], "notes": {}, "in_flight": []}
    stacks = Path(spec["stacks"]).read_text(errors="replace") if killed and Path(spec["stacks"]).exists() else ""
    fatal = Path(spec["fatal"]).read_text(errors="replace") if Path(spec["fatal"]).exists() else ""
    return PhaseRun(snapshot, time.monotonic() - started, killed, stacks, proc.returncode, fatal)


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


def _death(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        with contextlib.suppress(ValueError):
            return f"signal {-returncode} ({signal.Signals(-returncode).name})"
        return f"signal {-returncode}"
    return f"exit code {returncode}"


def merge_phase(tally: Tally, name: str, run: PhaseRun) -> dict[str, Any]:
    """Add the phase's counts to `tally`, record a hang if it was killed, a death if it ended
    by itself without finishing (a signal, an exit code), else count the units cut off at its
    cutoff; the phase's line of the record's schedule."""
    snap = run.snapshot
    tally.merge(snap)
    in_flight = snap.get("in_flight", [])
    died = not run.killed and (run.returncode != 0 or not snap.get("finished"))
    cut_off = [] if run.killed or died else [u for u in in_flight if not u["overdue"]]
    if died:
        # its units in flight as of its last snapshot (saved every WATCH_SECONDS)
        tally.add(**{f"died_{name}": 1})
        tally.violation(name, f"phase process died: {_death(run.returncode)} "
                        f"({'after saving its counts' if snap.get('finished') else 'before its cutoff'}; "
                        f"{len(in_flight)} unit(s) in flight)"
                        + (f"; its stacks (faulthandler):\n{run.fatal[:1500]}" if run.fatal else ""),
                        {"in_flight": in_flight[:10], "stacks": run.fatal[:8000]})
    elif run.killed:
        where = ("its work had ended: it did not exit" if snap.get("finished")
                 else f"{len(in_flight)} unit(s) in flight")
        tally.add(**{f"hangs_{name}": 1, f"killed_{name}": 1})
        tally.violation(name, f"HANG: the {name} phase's process was still running {EXIT_SECONDS:g} s after its cutoff "
                        f"({where}); killed with its process group; its stacks (most recent call first):\n"
                        + run.stacks[:1500], {"in_flight": in_flight[:10], "stacks": run.stacks[:8000]})
    elif cut_off:
        tally.add(**{f"cut_off_{name}": len(cut_off)})
    return {"seconds": round(run.seconds, 1), "killed": run.killed, "finished": bool(snap.get("finished")),
            "returncode": run.returncode, "cut_off": len(cut_off),
            "cut_off_units": [{"repro": u["repro"], "seconds": u["seconds"], "bound": u["bound"]}
                              for u in cut_off][:20]}
