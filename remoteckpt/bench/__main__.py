"""``python -m remoteckpt.bench [--quick] [--url URL] [--out DIR]``"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import crc32c

from .micro import run_micro


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="remoteckpt bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--out", default="bench-results", help="directory for the JSON results")
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1
    rows = run_micro(crc_mib=256 // scale, index_entries=100_000 // scale, strings=100_000 // scale)
    print(f"{'benchmark':<24}{'value':>12}  unit   detail")
    for row in rows:
        print(f"{row['name']:<24}{row['value']:>12.4g}  {row['unit']:<6} {row['detail']}")
    out = Path(args.out)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
