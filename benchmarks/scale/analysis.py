"""What a fleet run's request log says: requests per rank by kind, the busiest key, commit
latency.  Pure functions over the proxy's log (tests/faultproxy.py: ``[start, end, phase, method,
kind, key, rank, status, ...]``) and the ranks' own results."""

from __future__ import annotations

import collections
import re
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

KINDS = ("PUT", "GET", "HEAD", "LIST", "DELETE", "POST")

REPORT = re.compile(r"\.tmp-[^/]+/worker-\d+$")
INDEX = re.compile(r"\.index$")
DATA = re.compile(r"\.data-(\d+)-of-\d+$")


def rank_of(tag: str) -> int | None:
    return int(tag[4:]) if tag.startswith("rank") and tag[4:].isdigit() else None


def peak_rate(times: Sequence[float], window: float = 1.0) -> int:
    """The most of `times` (sorted) inside any interval of `window` seconds."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def busiest_keys(records: Iterable[Sequence[Any]], top: int = 5) -> list[dict[str, Any]]:
    """The keys with the highest peak requests per second (1 s windows, by arrival), every
    request counted (answered 503 or not)."""
    arrivals: dict[str, list[float]] = collections.defaultdict(list)
    for r in records:
        arrivals[r[5]].append(r[0])
    peaks = []
    for key, times in arrivals.items():
        times.sort()
        peaks.append({"key": key, "peak_per_s": peak_rate(times), "requests": len(times)})
    peaks.sort(key=lambda p: (-p["peak_per_s"], -p["requests"]))
    return peaks[:top]


def _spread(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"max": 0, "mean": 0}
    return {"max": max(values), "mean": round(statistics.fmean(values), 2)}


def per_rank(records: Iterable[Sequence[Any]]) -> dict[int, collections.Counter[str]]:
    counts: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in records:
        rank = rank_of(r[6])
        if rank is not None:
            counts[rank][r[4]] += 1
    return counts


def _short(key: str, directory: str, ranks: bool = True) -> str:
    """A key without the run's directory and with the attempt token generalised (and, with
    `ranks`, rank numbers too), for grouping: ``LIST model.ckpt-1.tmp-*/``."""
    key = key.replace(directory, "", 1)
    key = re.sub(r"\.tmp-[0-9a-f]{8,}/", ".tmp-*/", key)
    return re.sub(r"-\d{5}(?=$|-of)", "-R", key) if ranks else key


def save_summary(log: list[list[Any]], world: int, directory: str, ranks: list[dict[str, Any]],
                 cpu_by_process: dict[str, float]) -> dict[str, Any]:
    records = [r for r in log if r[2] == "save"]
    counts = per_rank(records)
    data_requests: dict[int, int] = collections.Counter()
    for r in records:
        m = DATA.search(r[5])
        rank = rank_of(r[6])
        if m and rank is not None and int(m.group(1)) == rank and r[4] in ("PUT", "POST"):
            data_requests[rank] += 1
    workers = range(1, world)
    totals = [sum(counts[w].values()) for w in workers]
    overhead = [sum(counts[w].values()) - data_requests[w] for w in workers]
    by_kind = {k: _spread([counts[w][k] for w in workers]) for k in KINDS}
    coordinator = {k: counts[0][k] for k in KINDS}
    coordinator_lists: collections.Counter[str] = collections.Counter(
        _short(r[5], directory) for r in records if rank_of(r[6]) == 0 and r[4] == "LIST")
    # commit latency: the last report that landed, to the index landing (proxy times)
    report_ends = [r[1] for r in records if REPORT.search(r[5]) and r[4] == "PUT" and r[7] == 200]
    index_end = [r[1] for r in records if INDEX.search(r[5]) and r[4] == "PUT" and r[7] == 200]
    latency = (index_end[0] - max(report_ends)) if index_end and report_ends else None
    ok = [x for x in ranks if "error" not in x]
    start = min(x["start"] for x in ranks)
    coordinator_result = next((x for x in ranks if x["rank"] == 0), {})
    by_group: collections.Counter[str] = collections.Counter()
    for r in records:
        by_group[f"{r[4]} {_short(r[5], directory)}"] += 1
    return {
        "ranks_ok": len(ok),
        "errors": sorted({x["error"] for x in ranks if "error" in x})[:5],
        "seconds": round(max(x["end"] for x in ranks) - start, 3),
        "rank_seconds": _spread([round(x["end"] - x["start"], 3) for x in ranks]),
        "worker_write_seconds": _spread([round(x["write_seconds"], 3) for x in ok if x["rank"]]),
        "worker_wait_seconds": _spread([round(x["wait_seconds"], 3) for x in ok if x["rank"]]),
        "requests": len(records),
        "slowdowns": sum(1 for r in records if r[7] == 503),
        "worker_requests": {"total": _spread(totals), "beyond_data": _spread(overhead),
                            "data_parts": _spread([data_requests[w] for w in workers]), "by_kind": by_kind},
        "coordinator_requests": {"total": sum(coordinator.values()), "by_kind": coordinator},
        "coordinator_list_pages": sum(coordinator_lists.values()),
        "coordinator_lists_by_prefix": dict(coordinator_lists.most_common()),
        "coordinator_cpu_seconds": round(cpu_by_process.get("coordinator", 0.0), 3),
        "coordinator_phases": {k: round(float(coordinator_result.get(k, 0.0)), 3)
                               for k in ("write_seconds", "wait_seconds", "merge_seconds", "commit_seconds")},
        "commit_latency_seconds": None if latency is None else round(latency, 3),
        "busiest_keys": [dict(b, key=_short(b["key"], directory, False)) for b in busiest_keys(records)],
        "peak_requests_per_s": peak_rate(sorted(r[0] for r in records)),
        "requests_by_key_group": dict(by_group.most_common(16)),
    }


def restore_summary(log: list[list[Any]], world: int, directory: str, ranks: list[dict[str, Any]],
                    phase: str = "restore") -> dict[str, Any]:
    records = [r for r in log if r[2] == phase]
    counts = per_rank(records)
    index_gets: collections.Counter[int] = collections.Counter()
    data_gets: collections.Counter[int] = collections.Counter()
    for r in records:
        rank = rank_of(r[6])
        if rank is None or r[4] != "GET":
            continue
        if INDEX.search(r[5]):
            index_gets[rank] += 1
        elif DATA.search(r[5]):
            data_gets[rank] += 1
    everyone = range(world)
    ok = [x for x in ranks if "error" not in x]
    start = min(x["start"] for x in ranks)
    return {
        "ranks_ok": len(ok),
        "errors": sorted({x["error"] for x in ranks if "error" in x})[:5],
        "seconds": round(max(x["end"] for x in ranks) - start, 3),
        "open_seconds": _spread([round(x["opened"] - x["start"], 3) for x in ok if "opened" in x]),
        "rank_seconds": _spread([round(x["end"] - x["start"], 3) for x in ranks]),
        "requests": len(records),
        "slowdowns": sum(1 for r in records if r[7] == 503),
        "rank_requests": {"total": _spread([sum(counts[r].values()) for r in everyone]),
                          "by_kind": {k: _spread([counts[r][k] for r in everyone]) for k in KINDS},
                          "index_gets": _spread([index_gets[r] for r in everyone]),
                          "data_gets": _spread([data_gets[r] for r in everyone])},
        "busiest_keys": [dict(b, key=_short(b["key"], directory, False)) for b in busiest_keys(records)],
        "peak_requests_per_s": peak_rate(sorted(r[0] for r in records)),
        "index_gets": sum(index_gets.values()),
    }

