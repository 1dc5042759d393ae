"""The fleet's summary table and charts, from its JSON record.

    python -m benchmarks.scale.report bench-results/scale-<time>.json [--charts docs/img]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..plots import pyplot, save
from . import TARGETS, limit_pages

Row = tuple[str, str, Callable[[dict[str, Any]], Any]]

ROWS: list[Row] = [
    ("worker requests per save, max (mean)", "",
     lambda r: f"{r['save']['worker_requests']['total']['max']} ({r['save']['worker_requests']['total']['mean']:g})"),
    ("  beyond its data parts, max (mean)", "worker requests beyond its data parts",
     lambda r: f"{r['save']['worker_requests']['beyond_data']['max']} "
               f"({r['save']['worker_requests']['beyond_data']['mean']:g})"),
    ("  of which GET, max (mean)", "",
     lambda r: f"{r['save']['worker_requests']['by_kind']['GET']['max']} "
               f"({r['save']['worker_requests']['by_kind']['GET']['mean']:g})"),
    ("coordinator requests", "", lambda r: r["save"]["coordinator_requests"]["total"]),
    ("coordinator LIST pages", "coordinator LIST pages",
     lambda r: f"{r['save']['coordinator_list_pages']} (<= {limit_pages(r['world'])})"),
    ("busiest key, requests/s (save)", "busiest key, requests/s (save)",
     lambda r: f"{r['save']['busiest_keys'][0]['peak_per_s']} {r['save']['busiest_keys'][0]['key']}"),
    ("commit latency, s", "commit latency, s", lambda r: r["save"]["commit_latency_seconds"]),
    ("save, s", "", lambda r: r["save"]["seconds"]),
    ("coordinator CPU, s", "", lambda r: r["save"]["coordinator_cpu_seconds"]),
    ("proxy CPU (save), s", "", lambda r: r["save"]["proxy_cpu_seconds"]),
    ("server CPU (save), s", "", lambda r: r["save"]["server_cpu_seconds"]),
    ("SlowDowns (save)", "", lambda r: r["save"]["slowdowns"]),
    ("restore, s", "", lambda r: r["restore"]["seconds"]),
    ("requests per restoring rank, max", "", lambda r: r["restore"]["rank_requests"]["total"]["max"]),
    ("index GETs per restoring rank", "index GETs per restoring rank",
     lambda r: r["restore"]["rank_requests"]["index_gets"]["max"]),
    ("HEADs per restoring rank", "HEADs per restoring rank",
     lambda r: r["restore"]["rank_requests"]["by_kind"]["HEAD"]["max"]),
    ("LIST pages per restoring rank", "LIST pages per restoring rank",
     lambda r: r["restore"]["rank_requests"]["by_kind"]["LIST"]["max"]),
    ("busiest key, requests/s (restore)", "busiest key, requests/s (restore)",
     lambda r: f"{r['restore']['busiest_keys'][0]['peak_per_s']} {r['restore']['busiest_keys'][0]['key']}"),
    ("SlowDowns (restore)", "", lambda r: r["restore"]["slowdowns"]),
    ("restore from one opening, s", "", lambda r: r["restore_shared"]["seconds"]),
    ("  index GETs in all", "index GETs per restore, shared opening", lambda r: r["restore_shared"]["index_gets"]),
    ("  busiest key, requests/s", "busiest key, requests/s (restore, shared opening)",
     lambda r: f"{r['restore_shared']['busiest_keys'][0]['peak_per_s']} {r['restore_shared']['busiest_keys'][0]['key']}"),
    ("ranks ok (save / restore)", "", lambda r: f"{r['save']['ranks_ok']} / {r['restore']['ranks_ok']}"),
]


def table(record: dict[str, Any], markdown: bool = False) -> str:
    runs = record["runs"]
    header = ["quantity", *(f"N={r['world']}" for r in runs), "target"]
    lines = []
    for label, target, value in ROWS:
        cells = []
        for r in runs:
            try:
                text = str(value(r))
            except (KeyError, TypeError, IndexError):
                text = "-"
            if target and not r.get("verdicts", {}).get(target, True):
                text += " ✗"
            cells.append(text)
        lines.append([label, *cells, TARGETS[target][0] if target else ""])
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(map(str, line)) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(str(x[i]).ljust(widths[i]) for i in range(len(header))) for x in [header, *lines])


CHARTS: list[tuple[str, str, list[tuple[str, Callable[[dict[str, Any]], float]]], Callable[[int], float] | None]] = [
    ("worker requests per save", "requests", [
        ("max", lambda r: r["save"]["worker_requests"]["total"]["max"]),
        ("mean", lambda r: r["save"]["worker_requests"]["total"]["mean"]),
        ("max beyond data parts", lambda r: r["save"]["worker_requests"]["beyond_data"]["max"])],
     lambda n: 8),
    ("coordinator LIST pages", "pages", [("LIST pages", lambda r: r["save"]["coordinator_list_pages"])],
     lambda n: limit_pages(n)),
    ("busiest key", "requests / s (1 s windows)", [
        ("save", lambda r: r["save"]["busiest_keys"][0]["peak_per_s"]),
        ("restore", lambda r: r["restore"]["busiest_keys"][0]["peak_per_s"])],
     lambda n: 100),
    ("commit latency", "seconds", [("last report -> index", lambda r: r["save"]["commit_latency_seconds"] or 0)],
     lambda n: 2),
    ("save and restore time", "seconds", [
        ("save", lambda r: r["save"]["seconds"]), ("restore", lambda r: r["restore"]["seconds"])], None),
    ("CPU seconds", "seconds", [
        ("coordinator (save)", lambda r: r["save"]["coordinator_cpu_seconds"]),
        ("proxy (save)", lambda r: r["save"]["proxy_cpu_seconds"]),
        ("S3 server (save)", lambda r: r["save"]["server_cpu_seconds"]),
        ("proxy (restore)", lambda r: r["restore"]["proxy_cpu_seconds"])], None),
]


def _value(value: Callable[[dict[str, Any]], Any], run: dict[str, Any]) -> float:
    try:
        return float(value(run))
    except (KeyError, TypeError, IndexError, ValueError):
        return float("nan")


def charts(record: dict[str, Any], out: Path, name: str = "scale") -> Path | None:
    """One PNG of every quantity over N (targets dashed), if matplotlib is installed."""
    try:
        plt = pyplot()
    except ImportError:
        return None
    runs = record["runs"]
    worlds = [r["world"] for r in runs]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    for ax, (title, unit, series, target) in zip(axes.flat, CHARTS):
        for label, value in series:
            ax.plot(worlds, [_value(value, r) for r in runs], marker="o", label=label)
        if target is not None:
            ax.plot(worlds, [target(n) for n in worlds], linestyle="--", color="grey", label="target")
        ax.set_xscale("log", base=2)
        ax.set_xticks(worlds, [str(n) for n in worlds])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("ranks (N)")
        ax.set_ylabel(unit)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    throttle = runs[0].get("throttle") if runs else None
    fig.suptitle(f"simulated fleet on SeaweedFS, {record['machine']['cpus']} CPUs, {record['when']}"
                 + (f", SlowDown above {throttle['write']:g} writes / {throttle['read']:g} reads per s" if throttle else ""),
                 fontsize=10)
    return save(fig, out / f"{name}.png", dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", help="a scale-<time>.json record")
    parser.add_argument("--charts", help="directory for the PNG (default: none)")
    parser.add_argument("--markdown", action="store_true", help="the table in Markdown")
    args = parser.parse_args(argv)
    record = json.loads(Path(args.result).read_text())
    print(table(record, markdown=args.markdown))
    if args.charts:
        path = charts(record, Path(args.charts), "scale-throttled" if record["config"].get("throttle") else "scale")
        print(f"chart: {path}" if path else "matplotlib is not installed: no chart")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
