"""``python -m benchmarks.scale [--ranks 64,256,1024,4096] [--processes 4] [--throttle W,R] ...``

``make scale SCALE_ARGS="..."`` runs it.  The JSON record goes to ``--out`` (bench-results/),
the chart (with matplotlib) to ``--charts`` (default: beside the record).  See docs/scale.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import DEFAULT_RANKS, Config, run
from .report import charts, table


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=_ints, default=DEFAULT_RANKS,
                        help="fleet sizes, comma-separated (default 64,256,1024,4096)")
    parser.add_argument("--processes", type=int, default=Config.processes,
                        help="processes holding ranks 1..N-1 (rank 0 has its own; default 4)")
    parser.add_argument("--throttle", help="W,R: SlowDown above W writes and R reads a second (all keys one prefix)")
    parser.add_argument("--restore-concurrency", type=int, default=Config.restore_concurrency,
                        help="ranks of one process restoring at once (default 64)")
    parser.add_argument("--no-restore", action="store_true", help="save only")
    parser.add_argument("--no-shared-restore", action="store_true",
                        help="restore only with every rank opening the checkpoint (not again from one opening)")
    parser.add_argument("--saves", type=int, default=Config.saves,
                        help="checkpoints saved in a row, the last measured (default 1)")
    parser.add_argument("--nice", type=int, default=Config.nice,
                        help="niceness added to every process but the coordinator's (default 10)")
    parser.add_argument("--timeout", type=float, default=Config.timeout, help="seconds per phase (default 3600)")
    parser.add_argument("--out", default="bench-results", help="directory of the JSON record")
    parser.add_argument("--charts", help="directory of the PNG chart (default: --out)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the proxy's request logs beside the record")
    args = parser.parse_args(argv)
    throttle = None
    if args.throttle:
        w, r = (float(x) for x in args.throttle.split(","))
        throttle = (w, r)
    if not args.ranks or min(args.ranks) < 2 or args.processes < 1 or args.saves < 1:
        parser.error("--ranks must be at least 2 each, --processes and --saves at least 1")
    logging.basicConfig(level=logging.WARNING)
    cfg = Config(ranks=args.ranks, processes=args.processes, throttle=throttle,
                 restore_concurrency=args.restore_concurrency, timeout=args.timeout,
                 restore=not args.no_restore, shared_restore=not args.no_shared_restore, saves=args.saves,
                 nice=args.nice)
    path, record = run(cfg, args.out, keep_logs=args.keep_logs, argv=sys.argv[1:] if argv is None else argv)
    print()
    print(table(record))
    chart = charts(record, Path(args.charts or args.out), "scale-throttled" if throttle else "scale")
    print(f"\nresults: {path}" + (f"\nchart: {chart}" if chart else "\n(matplotlib is not installed: no chart)"))
    failed = [r["world"] for r in record["runs"]
              if r["save"]["ranks_ok"] != r["world"] or any(r.get(k) and r[k]["ranks_ok"] != r["world"]
                                                             for k in ("restore", "restore_shared"))]
    if failed:
        print(f"ranks failed in the fleet(s) of {failed}: see the record's errors", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
