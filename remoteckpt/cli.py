"""The ``remoteckpt`` command (also ``python -m remoteckpt``).

    remoteckpt inspect PREFIX [--tensor NAME] [--all-tensors] [--json]
    remoteckpt ls DIR [--json]
    remoteckpt verify PREFIX [--json]
    remoteckpt cp SRC DST [--overwrite] [--json]
    remoteckpt gc DIR [--older-than SECONDS] [--dry-run] [--json]
    remoteckpt bench [URL] [--gib G] [--tensors N] [--repeat R] [--json]
    remoteckpt --version

Paths are local paths or URLs (``s3://bucket/key``; endpoint and credentials from the usual
``AWS_*`` environment).  Long operations draw a progress bar on a terminal and stay quiet
otherwise; ``--json`` prints one JSON document for scripts.

Exit codes: 0 success; 1 a checkpoint error (not found, corrupt, exists, storage failure) or
`verify` found a problem; 2 bad usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from typing import Any

import numpy as np

from . import __version__
from .errors import CheckpointError
from .management.gc import gc
from .progress import ProgressBar
from .reader import CheckpointReader
from .tools.bench import __doc__ as bench_doc
from .tools.bench import format_report, run_bench
from .tools.copy import copy_checkpoint
from .tools.inventory import describe_tensors, list_checkpoints, verify


def _emit_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=1, default=str)
    print()


def _values(array: np.ndarray) -> Any:
    if array.dtype == object:
        return [v.decode("utf-8", "backslashreplace") for v in array.reshape(-1)]
    return array.tolist()


def cmd_inspect(args: argparse.Namespace) -> int:
    with CheckpointReader(args.prefix) as reader:
        rows = describe_tensors(reader)
        if args.tensor:
            rows = [r for r in rows if r["name"] == args.tensor]
            if not rows:
                reader.get_tensor(args.tensor)  # raises TensorNotFoundError with the message
        show_values = args.all_tensors or bool(args.tensor)
        if show_values:
            for row in rows:
                row["value"] = _values(reader.get_tensor(row["name"]))
        if args.json:
            _emit_json({"prefix": args.prefix, "num_shards": reader.index.num_shards, "tensors": rows})
            return 0
        print(f"{args.prefix}: {len(rows)} tensors, {reader.index.num_shards} data shard(s)")
        for row in rows:
            extra = f"  slices {row['slices']}" if "slices" in row else ""
            print(f"tensor_name: {row['name']}  {row['dtype']}{row['shape']}  {row['bytes']} bytes  "
                  f"shard {','.join(map(str, row['shards']))}{extra}")
            if show_values:
                print(np.asarray(row["value"], dtype=object if row["dtype"] == "string" else None))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    found = list_checkpoints(args.directory)
    if args.json:
        _emit_json([dataclasses.asdict(c) for c in found])
        return 0
    if not found:
        print(f"no committed checkpoints in {args.directory}")
        return 0
    print(f"{'':2}{'step':>8}  {'size':>10}  {'modified (UTC)':<20} checkpoint")
    for c in found:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c.mtime)) if c.mtime else "-"
        step = "-" if c.step is None else str(c.step)
        print(f"{'*' if c.latest else ' ':2}{step:>8}  {c.bytes / 2**20:>8.1f}Mi  {when:<20} {c.prefix}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    bar = ProgressBar("verify")
    report = verify(args.prefix, progress=bar)
    bar.close()
    if args.json:
        _emit_json(dataclasses.asdict(report) | {"ok": report.ok})
    else:
        status = "OK" if report.ok else f"{len(report.problems)} PROBLEM(S)"
        print(f"{args.prefix}: {report.tensors} tensors, {report.bytes} bytes checked: {status}")
        for problem in report.problems:
            print(f"  - {problem}")
    return 0 if report.ok else 1


def cmd_cp(args: argparse.Namespace) -> int:
    bar = ProgressBar("cp")
    start = time.monotonic()
    report = copy_checkpoint(args.source, args.destination, overwrite=args.overwrite, progress=bar)
    bar.close()
    seconds = time.monotonic() - start
    if args.json:
        _emit_json(dataclasses.asdict(report) | {"seconds": seconds})
    else:
        print(f"copied {args.source} -> {args.destination}: {report.files} files, {report.bytes} bytes, "
              f"{report.tensors_verified} tensors verified, {seconds:.1f} s")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    report = gc(args.directory, older_than=args.older_than, dry_run=args.dry_run)
    if args.json:
        _emit_json(dataclasses.asdict(report) | {"dry_run": args.dry_run})
        return 0
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(report.removed)} object(s), {report.bytes_freed} bytes; "
          f"{'would abort' if args.dry_run else 'aborted'} {len(report.aborted_uploads)} pending upload(s)")
    for key in report.removed + report.aborted_uploads:
        print(f"  {key}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    log = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        report = run_bench(args.url, gib=args.gib, tensors=args.tensors, repeat=args.repeat, log=log)
    except ValueError as exc:
        print(f"remoteckpt bench: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        _emit_json(report.as_dict())
    else:
        print(format_report(report))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remoteckpt", description="TensorFlow checkpoints on disk and S3.",
                                     epilog="exit codes: 0 ok, 1 checkpoint error or failed verify, 2 usage")
    parser.add_argument("--version", action="version", version=f"remoteckpt {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log to stderr (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="list a checkpoint's tensors (like TF's inspect_checkpoint)")
    p.add_argument("prefix")
    p.add_argument("--tensor", help="print this tensor's value")
    p.add_argument("--all-tensors", action="store_true", help="print every tensor's value")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("ls", help="committed checkpoints in a directory (* = latest)")
    p.add_argument("directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ls)
    p = sub.add_parser("verify", help="read everything, check every checksum")
    p.add_argument("prefix")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("cp", help="copy a checkpoint between stores, verified, committed at the destination")
    p.add_argument("source")
    p.add_argument("destination")
    p.add_argument("--overwrite", action="store_true", help="replace a committed checkpoint at the destination")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cp)
    p = sub.add_parser("gc", help="remove leftovers of crashed saves (never a committed checkpoint)")
    p.add_argument("directory")
    p.add_argument("--older-than", type=float, default=3600.0, metavar="SECONDS",
                   help="only leftovers older than this (default 3600: younger ones may be a save in progress)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gc)
    p = sub.add_parser("bench", help="save and restore throughput at a storage location",
                       description=bench_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", nargs="?", help="s3://bucket/prefix, a local directory or any URL (default: a temporary directory)")
    p.add_argument("--gib", type=float, default=1.0, help="GiB of float32 tensors (default 1)")
    p.add_argument("--tensors", type=int, default=32, help="number of tensors (default 32)")
    p.add_argument("--repeat", type=int, default=2, help="saves and restores; the best counts (default 2)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.verbose:
        # Only remoteckpt's own logger: botocore's debug output would print request headers.
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        logging.getLogger("remoteckpt").setLevel(logging.DEBUG if args.verbose > 1 else logging.INFO)
    try:
        return int(args.func(args))
    except CheckpointError as exc:
        print(f"remoteckpt: error: {exc}", file=sys.stderr)
        return 1
