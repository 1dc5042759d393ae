"""The ``remoteckpt`` command (also ``python -m remoteckpt``).

    remoteckpt inspect PREFIX [--tensor NAME] [--all-tensors] [--json]
    remoteckpt bench [--quick]

Exit codes: 0 success, 1 a checkpoint error (not found, corrupt, ...), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from . import dtypes
from .errors import CheckpointError
from .reader import CheckpointReader


def _describe(reader: CheckpointReader) -> list[dict[str, Any]]:
    index = reader.index
    rows = []
    for name, shape in sorted(reader.get_variable_to_shape_map().items()):
        entry = index.entries[name.encode("utf-8", "surrogateescape")]
        row: dict[str, Any] = {"name": name, "dtype": dtypes.dtype_name(entry.dtype), "shape": shape}
        if entry.slices:
            boxes = index.slice_boxes(name.encode("utf-8", "surrogateescape"))
            row["slices"] = [box.spec() for box, _ in boxes]
            row["bytes"] = sum(index.entries[k].size for _, k in boxes if k in index.entries)
            row["shards"] = sorted({index.entries[k].shard_id for _, k in boxes if k in index.entries})
        else:
            row["bytes"] = entry.size
            row["shards"] = [entry.shard_id]
        rows.append(row)
    return rows


def cmd_inspect(args: argparse.Namespace) -> int:
    reader = CheckpointReader(args.prefix)
    rows = _describe(reader)
    if args.tensor:
        rows = [r for r in rows if r["name"] == args.tensor]
        if not rows:
            reader.get_tensor(args.tensor)  # raises TensorNotFoundError with the message
    show_values = args.all_tensors or args.tensor
    if show_values:
        for row in rows:
            value = reader.get_tensor(row["name"])
            row["value"] = value.tolist() if value.dtype != object else [
                v.decode("utf-8", "backslashreplace") for v in value.reshape(-1)]
    if args.json:
        header = reader.index.header
        json.dump({"prefix": args.prefix, "num_shards": header.num_shards, "tensors": rows},
                  sys.stdout, indent=1, default=str)
        print()
        return 0
    print(f"{args.prefix}: {len(rows)} tensors, {reader.index.num_shards} data shard(s)")
    for row in rows:
        extra = f"  slices {row['slices']}" if "slices" in row else ""
        print(f"tensor_name: {row['name']}  {row['dtype']}{row['shape']}  {row['bytes']} bytes  "
              f"shard {','.join(map(str, row['shards']))}{extra}")
        if show_values:
            print(np.asarray(row["value"], dtype=object if row["dtype"] == "string" else None))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="remoteckpt", description="TensorFlow checkpoints on disk and S3.")
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="list a checkpoint's tensors (like TF's inspect_checkpoint)")
    inspect.add_argument("prefix")
    inspect.add_argument("--tensor", help="print this tensor's value")
    inspect.add_argument("--all-tensors", action="store_true", help="print every tensor's value")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(func=cmd_inspect)
    bench = sub.add_parser("bench", help="run the benchmarks", add_help=False)
    bench.set_defaults(func=None)
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from .bench.__main__ import main as bench_main

        return bench_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return int(args.func(args))
    except CheckpointError as exc:
        print(f"remoteckpt: error: {exc}", file=sys.stderr)
        return 1
