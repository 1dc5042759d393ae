"""Ranks of torch.distributed jobs as spawned processes, for the plugin tests."""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any


def run_ranks(job: Any, world_size: int, tmp_path: Path, *args: Any, timeout: float = 180) -> list[Any]:
    """`job(init_file, rank, world_size, *args)` on `world_size` spawned processes (a fresh
    file:// rendezvous under `tmp_path`); their results in rank order, the first error
    re-raised.  A rank still running after `timeout` is killed (a hang fails the test)."""
    init_file = str(tmp_path / f"pg-{uuid.uuid4().hex}")
    results = run_each(job, [(init_file, r, world_size, *args) for r in range(world_size)], timeout)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def run_each(target: Any, arg_lists: list[tuple[Any, ...]], timeout: float) -> list[Any]:
    """``target(*args)`` for every entry of `arg_lists`, each in its own spawned process, all at
    once; their results in order, with the exception (raised, or a timeout) in place of the
    result of any that failed, for the caller's assertions.  All are waited for within one
    `timeout`, then any still running is killed (a hang fails the test, never hangs it)."""
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(len(arg_lists))
    try:
        pending = [pool.apply_async(target, args) for args in arg_lists]
        deadline = time.monotonic() + timeout
        results: list[Any] = []
        for r in pending:
            try:
                results.append(r.get(timeout=max(0.1, deadline - time.monotonic())))
            except Exception as exc:  # noqa: BLE001 - returned for the assertions
                results.append(exc)
        return results
    finally:
        pool.terminate()
        pool.join()


def run_together(target: Any, arg_lists: list[tuple[Any, ...]], bound: float) -> list[dict[str, Any] | None]:
    """``target(barrier, *args, result_path)`` in one spawned process per entry of
    `arg_lists`, all at once, `barrier` a `multiprocessing.Barrier` of them all (to start
    their work together once every process is up); each writes a JSON record to
    `result_path`.  Every process is joined within `bound` seconds or killed (a hang fails
    the test, never hangs it); the records in order, None for a process that wrote none."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(arg_lists))
    with tempfile.TemporaryDirectory(prefix="rk-together-") as results:
        paths = [os.path.join(results, f"{i}.json") for i in range(len(arg_lists))]
        procs = [context.Process(target=target, args=(barrier, *args, path), daemon=True)
                 for args, path in zip(arg_lists, paths)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + bound
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
        for p in procs:
            if p.exitcode is None:
                p.kill()
                p.join(10)
        records: list[dict[str, Any] | None] = []
        for path in paths:
            try:
                with open(path) as f:
                    records.append(json.load(f))
            except (FileNotFoundError, ValueError):
                records.append(None)
        return records
