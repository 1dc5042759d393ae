"""Workers of the job-lifecycle tests (test_lifecycle.py), run in spawned processes.

A worker is one rank of a job: it saves its share of a deterministic checkpoint with the job's
save id and writes a JSON record of how its save ended.  It can pretend to run on another
host (``socket.gethostname``) and with a wall clock hours off (``time.time``), and take
``REMOTECKPT_CRASH_AT`` / ``REMOTECKPT_STOP_AT`` from its environment.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ROWS, COLS = 32, 16
BIG = 4 * 2**20
"""Bytes of each of a rank's three big tensors when `big`: 12 MiB, a multipart upload of 5 MiB
parts whose first part is under way when the "mid-upload" point (halfway) is reached."""
PART_SIZE = 5 * 2**20
LEASE = 1.0


def tensors(seed: int, rank: int, world: int, *, big: bool = False, bad: bool = False,
            overlap: bool = False) -> dict[str, Any]:
    """Rank `rank`'s share of job `seed`'s checkpoint: rows of a partitioned matrix (the last
    rank takes the rows left over) and a tensor of its own (with `bad`, one that cannot be
    saved; with `overlap`, rows that overlap the next rank's by one)."""
    import remoteckpt

    rows = ROWS // world
    full = np.arange(ROWS * COLS, dtype=np.float32).reshape(ROWS, COLS) * (seed + 1)
    start = rank * rows
    stop = ROWS if rank + 1 == world else start + rows + (1 if overlap else 0)
    out: dict[str, Any] = {
        "matrix": remoteckpt.Slice(full[start:stop], (ROWS, COLS), (start, 0)),
        f"rank{rank}/own": np.full(BIG // 4 if big else 100, seed * 10 + rank, dtype=np.float32),
    }
    if big:
        out[f"rank{rank}/more"] = np.full(BIG // 8, seed * 10 + rank + 0.5, dtype=np.float64)
        out[f"rank{rank}/last"] = np.full(BIG // 4, seed * 10 + rank + 0.25, dtype=np.float32)
    if bad:
        out[f"rank{rank}/bad"] = np.array([np.datetime64("2020-01-01")])
    return out


def expected(seed: int, world: int, *, big: bool = False) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for rank in range(world):
        for name, value in tensors(seed, rank, world, big=big).items():
            if name != "matrix":
                out[name] = np.asarray(value)
    out["matrix"] = np.arange(ROWS * COLS, dtype=np.float32).reshape(ROWS, COLS) * (seed + 1)
    return out


@dataclass(frozen=True)
class Rank:
    """How one rank of a job runs."""

    rank: int
    seed: int = 0
    bad: bool = False
    overlap: bool = False
    big: bool = False
    host: str = ""
    clock_skew: float = 0.0
    delay: float = 0.0
    env: dict[str, str] = field(default_factory=dict)


def worker_main(prefix: str, world: int, save_id: str, spec: Rank, storage_options: dict[str, Any] | None,
                options: dict[str, Any], result_path: str) -> None:
    os.environ.update(spec.env)
    if spec.host:
        socket.gethostname = lambda: spec.host  # type: ignore[assignment]
    if spec.clock_skew:
        real = time.time
        time.time = lambda: real() + spec.clock_skew  # type: ignore[assignment]
    import faulthandler
    import logging

    import remoteckpt
    from remoteckpt.options import IOOptions

    logging.getLogger("remoteckpt").setLevel(logging.ERROR)
    # A rank still running at its job's bound is asked where it is before it is killed.
    faulthandler.register(signal.SIGUSR1, file=open(result_path + ".stack", "w"), all_threads=True)  # noqa: SIM115
    time.sleep(spec.delay)
    started = time.monotonic()
    record: dict[str, Any] = {"rank": spec.rank, "pid": os.getpid()}
    try:
        remoteckpt.save(tensors(spec.seed, spec.rank, world, big=spec.big, bad=spec.bad, overlap=spec.overlap),
                        prefix, rank=spec.rank, world_size=world, save_id=save_id, storage_options=storage_options,
                        options=IOOptions(**options))
        record["ok"] = True
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        record.update(error=type(exc).__name__, message=str(exc)[:1000],
                      remoteckpt=isinstance(exc, remoteckpt.CheckpointError), traceback=traceback.format_exc()[-2000:])
    record["seconds"] = time.monotonic() - started
    record["began"] = started  # the host's monotonic clock: comparable across the job's ranks
    with open(result_path, "w") as f:
        json.dump(record, f)
    os._exit(0)


class Job:
    """The ranks of one job, each a process of `context` (default: spawned)."""

    def __init__(self, prefix: str, ranks: list[Rank], *, save_id: str, storage_options: dict[str, Any] | None = None,
                 options: dict[str, Any] | None = None, context: Any = None) -> None:
        self.prefix, self.ranks, self.save_id = prefix, ranks, save_id
        self.storage_options = storage_options
        self.options = {"commit_timeout": 30.0, "poll_interval": 0.02, "lease_timeout": LEASE, **(options or {})}
        self.context = context
        self._dir = tempfile.TemporaryDirectory(prefix="rk-life-")
        self.procs: list[Any] = []
        self.paths: list[str] = []

    def start(self) -> "Job":
        ctx = self.context or multiprocessing.get_context("spawn")
        for spec in self.ranks:
            path = os.path.join(self._dir.name, f"{spec.rank}.json")
            p = ctx.Process(target=worker_main, daemon=True,
                            args=(self.prefix, len(self.ranks), self.save_id, spec, self.storage_options,
                                  self.options, path))
            p.start()
            self.procs.append(p)
            self.paths.append(path)
        return self

    def running(self) -> bool:
        return any(p.exitcode is None for p in self.procs)

    def kill(self, *, sparing: tuple[int, ...] = ()) -> None:
        """SIGKILL every rank still running but those in `sparing`, as a launcher tears a job
        down, and reap them (a dead rank's pid is then gone)."""
        for rank, p in enumerate(self.procs):
            if rank not in sparing and p.exitcode is None:
                p.kill()
        for rank, p in enumerate(self.procs):
            if rank not in sparing:
                p.join(10)

    def wait(self, bound: float = 90.0) -> list[dict[str, Any]]:
        """Join every rank within `bound` seconds; their records.  A rank still running then
        is asked for its stack and killed: its record says so ("hung", "stack")."""
        deadline = time.monotonic() + bound
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
        records = []
        for p, path in zip(self.procs, self.paths):
            hung = p.exitcode is None
            if hung:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)  # a paused rank cannot show its stack
                    os.kill(p.pid, signal.SIGUSR1)
                time.sleep(0.5)
                p.kill()
                p.join(10)
            try:
                with open(path) as f:
                    records.append(json.load(f))
            except (FileNotFoundError, ValueError):
                records.append({"error": "no record", "exitcode": p.exitcode, "hung": hung,
                                **({"stack": _read(path + ".stack")[-4000:]} if hung else {})})
        self._dir.cleanup()
        return records

    def run(self, bound: float = 90.0) -> list[dict[str, Any]]:
        return self.start().wait(bound)


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _state(pid: int) -> str:
    """Process `pid`'s state letter (R, S, T for stopped, Z for ended...), "" if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return ""


def stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (SIGSTOP)."""
    return _state(pid) in ("T", "t")


def wait_stopped(pid: int, bound: float) -> bool:
    """Wait up to `bound` seconds for process `pid` to be stopped; whether it is (False at
    once if it has ended)."""
    deadline = time.monotonic() + bound
    while not stopped(pid):
        if time.monotonic() >= deadline or _state(pid) in ("", "Z", "X"):
            return False
        time.sleep(0.02)
    return True


# --- what a job left ---------------------------------------------------------------------------------

def listing(directory: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Every key under `directory`, then "upload of KEY" for each incomplete multipart upload."""
    from remoteckpt.storage import on_store

    async def go(store: Any) -> list[str]:
        return [*(await store.list()), *(f"upload of {u.key}" for u in await store.pending_uploads())]

    return on_store(directory, go, storage_options)


def checkpoint_files(name: str, world: int) -> list[str]:
    """The keys a committed checkpoint `name` of `world` workers consists of, sorted."""
    from remoteckpt.format.bundle import data_filename, index_filename

    return sorted([*(data_filename(name, r, world) for r in range(world)), index_filename(name)])


def committed_versions(directory: str, storage_options: dict[str, Any] | None, name: str) -> dict[str, tuple[int, str]]:
    """Size and etag of checkpoint `name`'s index and data files (not of temporary files
    beside them, such as a local writer's ``*.tempstate*``)."""
    from remoteckpt.protocol.layout import DATA_FILE
    from remoteckpt.storage import on_store

    infos = on_store(directory, lambda store: store.list_info(f"{name}."), storage_options)
    return {i.key: (i.size, i.etag) for i in infos
            if i.key == f"{name}.index" or ((m := DATA_FILE.match(i.key)) is not None and m.group("name") == name)}
