"""PNG charts of a throughput result (`make bench` writes the JSON; this draws it).

    python -m benchmarks.plots bench-results/throughput-<time>.json [--out docs/img]

One chart per target (local disk, S3): save and restore throughput of each implementation,
the raw limit first, so the ratios in docs/benchmarks.md can be seen at a glance.  `pyplot` and
`save` serve every benchmark's charts (benchmarks/scale/report.py's too).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib's pyplot, drawing to files only (the Agg backend); ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path, dpi: int) -> Path:
    """Lay `fig` out, write it to `path` as a PNG (its directory made as needed), close it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def _rows(result: dict[str, Any], target: str) -> list[dict[str, Any]]:
    keep = [r for r in result["rows"] if r.get("target") == target and r.get("status") == "ok"
            and r.get("op") in ("save", "restore") and r.get("gib_per_s")]
    order = {"raw": 0, "remoteckpt": 1}
    return sorted(keep, key=lambda r: (r["op"], order.get(str(r["impl"]).split("-")[0], 2), r["label"]))


def draw(result: dict[str, Any], out: Path) -> list[Path]:
    plt = pyplot()
    written = []
    for target, title in (("local", "local disk"), ("s3", "S3 (SeaweedFS on loopback)")):
        rows = _rows(result, target)
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.4))
        labels = [f"{r['op']}: {r['label']}" for r in rows]
        values = [r["gib_per_s"] for r in rows]
        colors = ["#888888" if str(r["impl"]).startswith("raw") else
                  "#1f77b4" if str(r["impl"]).startswith("remoteckpt") else "#ff7f0e" for r in rows]
        ax.barh(range(len(rows)), values, color=colors)
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("GiB/s (best of runs; higher is better)")
        gib = result.get("config", {}).get("gib", "?")
        ax.set_title(f"{title}: {gib} GiB of float32, {result.get('when', '')}\n"
                     "grey: raw I/O limit   blue: remoteckpt   orange: TensorFlow / PyTorch DCP", fontsize=9)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.2f}", va="center", fontsize=7)
        written.append(save(fig, out / f"throughput-{target}.png", dpi=110))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plots", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", help="a throughput-*.json written by the benchmark")
    parser.add_argument("--out", default="docs/img")
    args = parser.parse_args(argv)
    for path in draw(json.loads(Path(args.result).read_text()), Path(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
