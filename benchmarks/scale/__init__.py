"""The simulated fleet (``make scale``; ``python -m benchmarks.scale``): N ranks save one
checkpoint to an embedded SeaweedFS through a request-counting proxy, then N ranks restore it
with another partitioning; the proxy's log says what each rank asked of the storage.  With
``--saves K`` the ranks save K checkpoints in a row, as a training job does, and the last one
is measured (its waits follow the rhythm the earlier ones set: `remoteckpt.protocol.poll`);
the earlier saves' requests are recorded too.

    driver ── SeaweedServer (weed mini, loopback)
          ├── counting proxy (its own process, one asyncio thread)      tests/faultproxy.py
          ├── process 0: rank 0, the coordinator, alone                 `fleet`
          └── processes 1..P: ranks 1..N-1, asyncio tasks, one S3 client each

Everything but the coordinator's process runs at a lower CPU priority (``--nice``, default
10): on a cluster the other ranks, the S3 service and the network are other machines, and
on this one their CPU would otherwise be taken from the coordinator, whose commit latency is
measured (``--nice 0`` runs them all alike).

Each run of N ranks records, in ``bench-results/scale-<time>.json``: requests by kind per
worker (max and mean over ranks 1..N-1) and for the coordinator, the coordinator's LIST pages,
the busiest key's peak requests per second (1 s windows) and which key, commit latency (the
last worker's report landing to the index landing, by the proxy's clock), save and restore
time (a restore where every rank opens the checkpoint, then one where rank 0 opens it and the
others open from its broadcast `remoteckpt.Opening`, as a job with a process group does), the coordinator's and the proxy's CPU seconds, and every SlowDown the proxy answered
(``--throttle W,R``: at most W writes and R reads a second, S3's per-prefix rule).  `TARGETS`
are what the design promises at 4,096 ranks; the summary marks each result against them.

The proxy is the test suite's (`faultproxy.ProxyProcess`): this runs from the repository root
with tests/ on the import path (``make scale`` puts it there; ``PYTHONPATH=tests python -m
benchmarks.scale``).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import test_module
from . import analysis

DEFAULT_RANKS = (64, 256, 1024, 4096)


@dataclass
class Config:
    ranks: tuple[int, ...] = DEFAULT_RANKS
    processes: int = 4
    """Processes holding ranks 1..N-1 (rank 0 has its own)."""
    rows: int = 16
    """Rows of the partitioned tensor per rank (64 float32 columns: 4 KiB)."""
    cols: int = 64
    state: int = 1024
    """float32 values of each rank's own tensor (4 KiB)."""
    restore_concurrency: int = 64
    """Ranks of one process restoring at once (each a CheckpointReader, i.e. an S3 client and
    the decoded index: all of 4,096 at once would not fit this machine's memory)."""
    throttle: tuple[float, float] | None = None
    """(writes, reads) per second the proxy serves before it answers SlowDown."""
    restore: bool = True
    shared_restore: bool = True
    """Restore a second time as a job with a process group does: rank 0 opens the checkpoint
    and broadcasts its `remoteckpt.Opening`, the other ranks open from it."""
    saves: int = 1
    """Checkpoints saved in a row; the last is measured."""
    nice: int = 10
    """Niceness added to every process but the coordinator's (the fleet's other processes,
    the proxy, the server)."""
    timeout: float = 3600.0
    options: dict[str, Any] = field(default_factory=dict)
    """IOOptions fields for every rank."""


def limit_pages(world: int) -> int:
    return 6 * math.ceil(world / 1000)


TARGETS: dict[str, tuple[str, Any]] = {
    "worker requests beyond its data parts": ("<= 8", lambda run: run["save"]["worker_requests"]["beyond_data"]["max"] <= 8),
    "coordinator LIST pages": ("<= 6 ceil(N/1000)", lambda run: run["save"]["coordinator_list_pages"] <= limit_pages(run["world"])),
    "busiest key, requests/s (save)": ("<= 100", lambda run: run["save"]["busiest_keys"][0]["peak_per_s"] <= 100),
    "commit latency, s": ("<= 2", lambda run: (run["save"]["commit_latency_seconds"] or 1e9) <= 2.0),
    "index GETs per restoring rank": ("1", lambda run: run["restore"]["rank_requests"]["index_gets"]["max"] <= 1),
    "HEADs per restoring rank": ("0", lambda run: run["restore"]["rank_requests"]["by_kind"]["HEAD"]["max"] == 0),
    "LIST pages per restoring rank": ("0", lambda run: run["restore"]["rank_requests"]["by_kind"]["LIST"]["max"] == 0),
    "busiest key, requests/s (restore)": ("<= 100", lambda run: run["restore"]["busiest_keys"][0]["peak_per_s"] <= 100),
    "index GETs per restore, shared opening": ("1", lambda run: run["restore_shared"]["index_gets"] == 1),
    "busiest key, requests/s (restore, shared opening)": (
        "<= 100", lambda run: run["restore_shared"]["busiest_keys"][0]["peak_per_s"] <= 100),
}
"""What the design promises at 4,096 ranks: (the bound, as text; a check of one run)."""


def _split(world: int, processes: int) -> list[list[int]]:
    """[[0], ranks 1..N-1 in `processes` contiguous groups]."""
    rest = list(range(1, world))
    count = max(1, min(processes, len(rest)))
    size = -(-len(rest) // count)
    return [[0]] + [rest[i : i + size] for i in range(0, len(rest), size)]


def _collect(pipes: list[Any], expected: str, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    answers = []
    for pipe in pipes:
        if not pipe.poll(max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"a fleet process did not answer {expected!r} within {timeout:g} s")
        kind, payload = pipe.recv()
        if kind != expected:
            raise RuntimeError(f"a fleet process answered {kind!r}: {payload}")
        answers.append(payload)
    return answers


def lower_priority(pid: int | None, nice: int) -> None:
    """Add `nice` to process `pid`'s niceness (see the module docstring)."""
    if pid and nice > 0:
        try:
            os.setpriority(os.PRIO_PROCESS, pid, min(19, os.getpriority(os.PRIO_PROCESS, pid) + nice))
        except OSError:
            pass


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of process `pid` so far (Linux /proc), 0 if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def proxy_process() -> Any:
    """The test suite's counting proxy in a process of its own (`faultproxy.ProxyProcess`)."""
    return test_module("faultproxy", "make scale, or PYTHONPATH=tests python -m benchmarks.scale").ProxyProcess


def run_fleet(world: int, endpoint: str, bucket: str, cfg: Config, *, log_dir: Path | None = None,
              server_pid: int | None = None) -> dict[str, Any]:
    """One fleet of `world` ranks through a fresh counting proxy in front of `endpoint`."""
    ProxyProcess = proxy_process()
    throttle = {"write": cfg.throttle[0], "read": cfg.throttle[1]} if cfg.throttle else None
    directory = f"s3://{bucket}/scale-{world}-{uuid.uuid4().hex[:8]}"
    names = [f"model.ckpt-{i}" for i in range(1, cfg.saves + 1)]
    name = names[-1]
    context = multiprocessing.get_context("spawn")
    with ProxyProcess(endpoint) as proxy:
        spec = {"endpoint": proxy.endpoint_url, "directory": directory, "name": name,
                "prefix": f"{directory}/{name}", "world": world, "save_id": f"scale-{world}",
                "rows": cfg.rows, "cols": cfg.cols, "state": cfg.state,
                "restore_concurrency": cfg.restore_concurrency, "options": cfg.options}
        groups = _split(world, cfg.processes)
        pipes, processes = [], []
        try:
            for ranks in groups:
                mine, theirs = context.Pipe()
                from .fleet import serve

                process = context.Process(target=serve, args=(spec, ranks, theirs), daemon=True)
                process.start()
                if ranks != [0]:
                    lower_priority(process.pid, cfg.nice)
                pipes.append(mine)
                processes.append(process)
            lower_priority(proxy.process.pid if proxy.process else None, cfg.nice)
            started = time.monotonic()
            _collect(pipes, "ready", cfg.timeout)
            setup_seconds = time.monotonic() - started
            if throttle:
                proxy.control("throttle", spec=json.dumps(throttle))
            earlier = []
            for i, earlier_name in enumerate(names[:-1], 1):
                proxy.control("phase", name=f"save-{i}")
                for pipe in pipes:
                    pipe.send(("save", earlier_name))
                earlier.append(_collect(pipes, "saved", cfg.timeout))
            server0 = process_cpu(server_pid)
            cpu0 = proxy.control("phase", name="save")["cpu"]
            for pipe in pipes:
                pipe.send(("save", name))
            saved = _collect(pipes, "saved", cfg.timeout)
            cpu1 = proxy.control("phase", name="restore")["cpu"]
            server1 = process_cpu(server_pid)
            restored: list[Any] = []
            if cfg.restore:
                for pipe in pipes:
                    pipe.send(("restore", None))
                restored = _collect(pipes, "restored", cfg.timeout)
            cpu2 = proxy.control("phase", name="restore-shared")["cpu"]
            server2 = process_cpu(server_pid)
            shared: list[Any] = []
            if cfg.restore and cfg.shared_restore:
                pipes[0].send("open")
                opened = _collect(pipes[:1], "opening", cfg.timeout)[0]
                for pipe in pipes:
                    pipe.send(("restore", opened["opening"]))
                shared = _collect(pipes, "restored", cfg.timeout)
                shared[0]["ranks"][0]["start"] = opened["start"]  # rank 0's restore began with its opening
            cpu3 = proxy.control("phase", name="done")["cpu"]
            server3 = process_cpu(server_pid)
            for pipe in pipes:
                pipe.send("exit")
        finally:
            for process in processes:
                process.join(30)
                if process.is_alive():
                    process.kill()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(log_dir or tmp) / f"scale-log-{world}{'-throttled' if throttle else ''}.json"
            dumped = proxy.control("dump", path=str(path))
            log = json.loads(path.read_text())
    save_ranks = [r for answer in saved for r in answer["ranks"]]
    save = analysis.save_summary(log, world, directory.split("/", 3)[-1] + "/", save_ranks,
                                 {"coordinator": saved[0]["cpu"]})
    save["proxy_cpu_seconds"] = round(cpu1 - cpu0, 3)
    save["fleet_cpu_seconds"] = round(sum(a["cpu"] for a in saved), 3)
    save["server_cpu_seconds"] = round(server1 - server0, 3)
    save["earlier_saves"] = [
        {k: v for k, v in analysis.save_summary(
            [[*r[:2], "save" if r[2] == f"save-{i}" else r[2], *r[3:]] for r in log if r[2] == f"save-{i}"],
            world, directory.split("/", 3)[-1] + "/", [r for answer in answers for r in answer["ranks"]],
            {"coordinator": answers[0]["cpu"]}).items() if k in EARLIER_KEYS}
        for i, answers in enumerate(earlier, 1)]
    prefix = directory.split("/", 3)[-1] + "/"

    def restore_record(answers: list[Any], phase: str, proxy_cpu: float, server_cpu: float) -> dict[str, Any] | None:
        """A restore phase's summary and the CPU seconds each side spent on it."""
        if not answers:
            return None
        summary = analysis.restore_summary(log, world, prefix, [r for a in answers for r in a["ranks"]], phase)
        summary["proxy_cpu_seconds"] = round(proxy_cpu, 3)
        summary["fleet_cpu_seconds"] = round(sum(a["cpu"] for a in answers), 3)
        summary["server_cpu_seconds"] = round(server_cpu, 3)
        return summary

    restore = restore_record(restored, "restore", cpu2 - cpu1, server2 - server1)
    restore_shared = restore_record(shared, "restore-shared", cpu3 - cpu2, server3 - server2)
    return {"world": world, "processes": len(groups), "setup_seconds": round(setup_seconds, 3),
            "throttle": throttle, "proxy": {k: dumped[k] for k in ("peak_connections", "upstream_opened")},
            "save": save, "restore": restore, "restore_shared": restore_shared}


EARLIER_KEYS = ("worker_requests", "commit_latency_seconds", "seconds", "ranks_ok", "busiest_keys")
"""What the record keeps of the saves before the measured one."""


def verdicts(run: dict[str, Any]) -> dict[str, bool]:
    return {name: bool(check(run)) for name, (_, check) in TARGETS.items()
            if "restor" not in name or run["restore" if "shared" not in name else "restore_shared"] is not None}


def run(cfg: Config, out_dir: str = "bench-results", *, keep_logs: bool = False,
        argv: list[str] | None = None, progress: Any = print) -> tuple[Path, dict[str, Any]]:
    """Every fleet size of `cfg` on one embedded SeaweedFS; the JSON record's path and record."""
    from remoteckpt.testing import SeaweedServer

    proxy_process()  # before anything starts: tests/ must be on the import path
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
        "argv": sys.argv[1:] if argv is None else argv,
        "config": asdict(cfg),
        "targets": {name: bound for name, (bound, _) in TARGETS.items()},
        "runs": [],
    }
    stamp = int(time.time())
    path = out / f"scale-{stamp}{'-throttled' if cfg.throttle else ''}.json"
    with SeaweedServer() as server:
        for world in cfg.ranks:
            progress(f"fleet of {world} ranks ...")
            started = time.monotonic()
            result = run_fleet(world, server.endpoint_url, server.bucket, cfg, log_dir=out if keep_logs else None,
                               server_pid=server.pid)
            result["verdicts"] = verdicts(result)
            result["wall_seconds"] = round(time.monotonic() - started, 1)
            record["runs"].append(result)
            path.write_text(json.dumps(record, indent=1))
            restored = f", restore {result['restore']['seconds']:.1f} s" if result["restore"] else ""
            if result["restore_shared"]:
                restored += f", from one opening {result['restore_shared']['seconds']:.1f} s"
            progress(f"  save {result['save']['seconds']:.1f} s{restored} ({result['wall_seconds']:.0f} s in all)")
    return path, record
