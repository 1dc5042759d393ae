"""The run as a whole (``main``): the command line, the phases and their weights, each phase's
window of the run's minutes, the S3 endpoint, each phase in turn in its own process, the JSON
record and the printed summary."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from . import __doc__ as PACKAGE_DOC  # the package's docstring: what the soak does
from .bounds import EXIT_SECONDS, GRACE_SECONDS, MIN_WINDOW_SECONDS, RESERVED_SECONDS, STOP_SECONDS, TEARDOWN_SECONDS
from .damage import corruption_by_kind
from .lifecycle import LIFE_PHASES, replay
from .phase_process import merge_phase, phase_child, run_phase_process
from .runtime import Tally, import_harness
from .summary import summary

PHASES = {"crash": 0.30, "network": 0.20, "race": 0.08, "retry": 0.06, "restart": 0.07, "zombie": 0.08, "long": 0.07,
          "corruption": 0.08, "fuzz": 0.06}
EXTRA_PHASES = {"tiers": 0.08}
"""Phases run only when named in --only (``--only tiers``, or with the others): their weight
then counts like the default phases'."""
S3_PHASES = ("crash", "network", "race", "tiers", *LIFE_PHASES)

AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
"""Passed on to the crash and race workers with --s3-endpoint (an embedded server sets its own)."""


def phase_window(rest: list[str], weights: dict[str, float], now: float, end_of_work: float,
                 stop_by: float) -> float | None:
    """Seconds of work for `rest[0]`: its weight's share of the time left for `rest`, at least
    MIN_WINDOW_SECONDS; None when even that no longer fits before `stop_by`, its latest cutoff."""
    if now + MIN_WINDOW_SECONDS > stop_by:
        return None
    share = max(0.0, end_of_work - now) * weights[rest[0]] / sum(weights[p] for p in rest)
    return max(MIN_WINDOW_SECONDS, share)


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
    from remoteckpt.testing import SeaweedServer

    with SeaweedServer(startup_timeout=min(60.0, max(10.0, total / 3)), stop_timeout=STOP_SECONDS) as server:
        yield {"base": f"s3://{server.bucket}/soak-{uuid.uuid4().hex[:8]}", "env": server.env(),
               "endpoint": server.endpoint_url}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=PACKAGE_DOC.split("\n\n")[1])
    parser.add_argument("--minutes", type=float, default=10.0, help="wall time for all phases (default 10)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the scenario sequence (default: random)")
    parser.add_argument("--only", default=",".join(PHASES), help="comma-separated phases, run in this order: "
                        + ", ".join(PHASES) + " (default: all of these), " + ", ".join(EXTRA_PHASES))
    parser.add_argument("--concurrency", type=int, default=6, help="crash scenarios at once (default 6)")
    parser.add_argument("--out", default="bench-results", help="directory for the JSON record")
    parser.add_argument("--grace", type=float, default=GRACE_SECONDS,
                        help=f"seconds work in flight at a phase's deadline may go on (default {GRACE_SECONDS:g}); "
                        f"the run ends within minutes*60 + grace + {EXIT_SECONDS + TEARDOWN_SECONDS:g} s")
    parser.add_argument("--s3-endpoint", default=None, help="an S3 endpoint to use (AWS_* credentials from the "
                        "environment) instead of starting SeaweedFS")
    parser.add_argument("--s3-bucket", default="remoteckpt-test", help="its bucket (default remoteckpt-test)")
    parser.add_argument("--replay", nargs=2, metavar=("PHASE", "PARAMETERS"), default=None,
                        help=f"run one unit of a lifecycle phase ({', '.join(LIFE_PHASES)}) again, with the JSON "
                        "parameters a violation was reported with, and exit")
    parser.add_argument("--times", type=int, default=1, help="with --replay: how many times (default 1)")
    # test hooks and the phase processes' entry point
    parser.add_argument("--hang-unit", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--hang-exit", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--die-in", default=None, help=argparse.SUPPRESS)  # PHASE:segv or PHASE:exit
    parser.add_argument("--phase-child", default=None, help=argparse.SUPPRESS)
    return parser


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    """SIGTERM, SIGHUP: leave by SystemExit, so that the cleanup runs (the phase's process group
    killed, the S3 server stopped, the scratch directory removed); a second signal is ignored
    meanwhile."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.phase_child:
        phase_child(args.phase_child)
    if args.replay:
        if args.replay[0] not in LIFE_PHASES:
            parser.error(f"--replay: one of {', '.join(LIFE_PHASES)}")
        import_harness()
        return replay(args.replay[0], json.loads(args.replay[1]), args.times)
    phases = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES) - set(EXTRA_PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {sorted(unknown)}")
    if len(set(phases)) != len(phases):  # each phase's files are named by the phase
        parser.error(f"a phase given twice in --only {args.only}")
    die_phase, _, die_how = (args.die_in or "").partition(":")
    if args.die_in and die_how not in ("segv", "exit"):
        parser.error("--die-in PHASE:segv or PHASE:exit")
    if threading.current_thread() is not threading.main_thread():
        return _run(args, phases, die_phase, die_how)
    previous = {sig: signal.signal(sig, _exit_on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _run(args, phases, die_phase, die_how)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(args: argparse.Namespace, phases: list[str], die_phase: str, die_how: str) -> int:
    t0 = time.monotonic()
    started = time.time()
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    import_harness()
    weights = {p: {**PHASES, **EXTRA_PHASES}[p] for p in phases}
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
                    "hang_unit": args.hang_unit == phase, "hang_exit": args.hang_exit == phase,
                    "die": die_how if die_phase == phase else None}
            run = run_phase_process(spec, control)
            schedule[phase] = {"window": round(window, 1), **merge_phase(tally, phase, run)}
            timings[phase] = schedule[phase]["seconds"]
    c = tally.counts
    record = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "seed": seed,
              "minutes": args.minutes, "phases": timings, "schedule": schedule,
              "bound_seconds": bound, "wall_seconds": round(time.monotonic() - t0, 1),
              "counts": dict(sorted(c.items())), "corruption_by_kind": corruption_by_kind(c),
              "notes": dict(tally.notes.most_common(20)), "violations": tally.violations,
              "reproduce": (f"python -m benchmarks.soak --minutes {args.minutes:g} --seed {seed} "
                            f"--only {','.join(phases)} --grace {args.grace:g} --concurrency {args.concurrency}")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"soak-{int(started)}.json"
    path.write_text(json.dumps(record, indent=1, default=str))
    print(summary(record))
    print(f"results: {path}")
    return 1 if tally.violations else 0
