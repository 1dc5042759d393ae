"""``python -m benchmarks [URL] [--quick] [--gib G] [--tensors N] [--repeat R] [--only micro|throughput] [--out DIR]``

``make bench BENCH_ARGS="..."`` runs it.  Without a URL: the format micro-benchmarks, then the
throughput benchmark on local disk (a temporary directory) and on an embedded SeaweedFS S3
server.  With ``s3://bucket/prefix`` (endpoint and credentials from the standard AWS
environment, e.g. AWS_ENDPOINT_URL) or a local directory: the throughput benchmark there only.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import crc32c

from .micro import run_micro
from .slices import run_slices


def micro_main(quick: bool, out_dir: str, argv: list[str] | None) -> Path:
    scale = 10 if quick else 1
    rows = run_micro(crc_mib=256 // scale, index_entries=100_000 // scale, strings=100_000 // scale)
    rows += run_slices(1_000_000 // scale)
    print(f"{'benchmark':<32}{'value':>12}  unit   detail")
    for row in rows:
        print(f"{row['name']:<32}{row['value']:>12.4g}  {row['unit']:<6} {row['detail']}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "crc32c_hardware": bool(crc32c.hardware_based)},
        "argv": sys.argv[1:] if argv is None else argv,
        "micro": rows,
    }
    path = out / f"micro-{int(time.time())}.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"\nresults: {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", nargs="?", help="s3://bucket/prefix or a local directory to measure "
                        "(default: a temporary directory and an embedded SeaweedFS)")
    parser.add_argument("--url", dest="url_opt", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small sizes (128 MiB), for a smoke run")
    parser.add_argument("--gib", type=float, help="GiB of float32 tensors (default 1, --quick 0.125)")
    parser.add_argument("--tensors", type=int, default=32, help="number of tensors (default 32)")
    parser.add_argument("--repeat", type=int, help="runs of each measurement; the best counts (default 2)")
    parser.add_argument("--workers", type=int, default=4, help="processes of the multi-worker save (default 4)")
    parser.add_argument("--only", choices=("micro", "throughput"),
                        help="run one part (default: both without a URL, throughput with one)")
    parser.add_argument("--timeout", type=float, help="seconds one suite may run (default scales with --gib)")
    parser.add_argument("--out", default="bench-results", help="directory for the JSON results")
    args = parser.parse_args(argv)
    url = args.url or args.url_opt
    only = args.only or ("throughput" if url else None)
    if only in (None, "micro"):
        micro_main(args.quick, args.out, argv)
        if only is None:
            print()
    if only in (None, "throughput"):
        from .harness import Config
        from .throughput import run

        gib = args.gib if args.gib is not None else (0.125 if args.quick else 1.0)
        repeat = args.repeat if args.repeat is not None else 2
        if gib <= 0 or args.tensors < 1 or repeat < 1 or args.workers < 1:
            parser.error("--gib, --tensors, --repeat and --workers must be positive")
        cfg = Config(gib=gib, tensors=args.tensors, repeat=repeat, workers=args.workers,
                     timeout=args.timeout or 300 + 600 * gib * repeat)
        try:
            run(url, cfg, args.out, argv)
        except ValueError as exc:
            parser.error(str(exc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
