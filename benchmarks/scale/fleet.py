"""The simulated ranks: one process holds many, each an asyncio task running a real rank's code.

A rank saves with `remoteckpt.protocol.save.save_worker` on an S3 store of its own (its own
client, connection pool and pacer, as a rank of a real job has), with its own
`SaveLayout(rank, world_size, save_id)`; it restores with a `CheckpointReader` of its own.
Every request a rank sends carries its access key, ``rank<R>``, which the counting proxy reads
(tests/faultproxy.py).  Rank 0, the coordinator, runs alone in its process, so that this process's
CPU time is the coordinator's.

What a rank saves (`tensors`): rows ``[R*rows, (R+1)*rows)`` of the partitioned float32 tensor
``embedding`` (``world * rows`` x `cols`, row i holding the value i), plus its own
``rank<R>/state`` (`state` float32 values, R + 0, 1, 2, ...) and ``rank<R>/step`` (int64 R).
What it restores (`restore_requests`): rows ``[R*rows + rows/2, (R+1)*rows + rows/2)`` of
``embedding`` (another partitioning: half of its own box, half of the next rank's; the last
rank reads its half box), and its own two tensors; every value read is checked.

The process talks to its driver through a pipe: ``ready`` once every store has sent one
request (so that creating clients is not timed), then ``("save", NAME)`` (as often as the
driver asks: the stores stay open, as a job's do) and ``("restore", OPENING)`` on command,
each answered with the ranks' timings and errors and the process's CPU seconds.  OPENING is
None (each rank opens the checkpoint itself, one index GET per rank), or the pickled
`remoteckpt.Opening` that rank 0's process answered ``open`` with: a job with a process group
restores that way, one rank opening and broadcasting (`remoteckpt.torch`'s
``StorageReader(process_group=)``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import pickle
import time
import traceback
from typing import Any

import numpy as np

PREFIX_WARMUP_KEY = "scale-warmup-nothing"


def tensors(rank: int, spec: dict[str, Any]) -> dict[str, Any]:
    from remoteckpt import Slice

    rows, cols, world = spec["rows"], spec["cols"], spec["world"]
    block = np.repeat(np.arange(rank * rows, (rank + 1) * rows, dtype=np.float32)[:, None], cols, axis=1)
    return {
        "embedding": Slice(block, full_shape=(world * rows, cols), offset=(rank * rows, 0)),
        f"rank{rank:05d}/state": np.arange(spec["state"], dtype=np.float32) + rank,
        f"rank{rank:05d}/step": np.int64(rank),
    }


def restore_requests(rank: int, spec: dict[str, Any]) -> list[tuple[str, Any]]:
    rows, world = spec["rows"], spec["world"]
    start = rank * rows + rows // 2
    stop = min(world * rows, start + rows)
    return [("embedding", (slice(start, stop),)), (f"rank{rank:05d}/state", None), (f"rank{rank:05d}/step", None)]


def check_restored(rank: int, spec: dict[str, Any], arrays: list[np.ndarray]) -> None:
    rows = spec["rows"]
    start = rank * rows + rows // 2
    embedding, state, step = arrays
    expected = np.arange(start, start + embedding.shape[0], dtype=np.float32)[:, None]
    if not np.array_equal(embedding, np.broadcast_to(expected, embedding.shape)):
        raise AssertionError(f"rank {rank}: embedding rows differ")
    if not np.array_equal(state, np.arange(spec["state"], dtype=np.float32) + rank) or int(step) != rank:
        raise AssertionError(f"rank {rank}: its own tensors differ")


def storage_options(rank: int, spec: dict[str, Any]) -> dict[str, Any]:
    """A rank's S3 options: the proxy's endpoint, its own access key (its tag in the log)."""
    config: dict[str, Any] = {"s3": {"addressing_style": "path"}}
    return {"endpoint_url": spec["endpoint"], "key": f"rank{rank}", "secret": "scale-secret",
            "client_kwargs": {"region_name": "us-east-1"}, "config_kwargs": config}


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


async def _open_stores(ranks: list[int], spec: dict[str, Any], options: Any) -> dict[int, Any]:
    from remoteckpt.storage import open_store

    stores = {r: open_store(spec["directory"], storage_options(r, spec), options) for r in ranks}

    async def warm(rank: int) -> None:
        store = stores[rank]
        await store.head(PREFIX_WARMUP_KEY)  # creates the client (~30 ms of CPU each), untimed
        if rank == 0:
            await store.prepare_conditional_writes()  # the probe, once per process

    await asyncio.gather(*(warm(r) for r in ranks))
    return stores


async def _save_all(stores: dict[int, Any], spec: dict[str, Any], options: Any) -> list[dict[str, Any]]:
    from remoteckpt.protocol.layout import SaveLayout
    from remoteckpt.protocol.save import save_worker

    async def one(rank: int) -> dict[str, Any]:
        layout = SaveLayout(spec["name"], rank, spec["world"], spec["save_id"])
        start = time.monotonic()
        out: dict[str, Any] = {"rank": rank, "start": start}
        try:
            report = await save_worker(stores[rank], layout, tensors(rank, spec), overwrite=False, options=options)
            out.update(write_seconds=report.write_seconds, wait_seconds=report.wait_seconds,
                       merge_seconds=report.merge_seconds, commit_seconds=report.commit_seconds,
                       bytes=report.bytes_written)
        except Exception as exc:  # recorded: the driver reports failed ranks
            out["error"] = _error(exc)
        out["end"] = time.monotonic()
        return out

    return list(await asyncio.gather(*(one(r) for r in stores)))


async def _close(stores: dict[int, Any]) -> None:
    await asyncio.gather(*(s.close() for s in stores.values()), return_exceptions=True)


def _restore_one(rank: int, spec: dict[str, Any], options: Any, opening: bytes | None) -> dict[str, Any]:
    """Rank `rank` opens the checkpoint (or, given the `opening` another rank broadcast, opens
    from it: `CheckpointReader.from_opening`), reads its boxes and checks every value."""
    from remoteckpt import CheckpointReader
    from remoteckpt.engine import loop

    out: dict[str, Any] = {"rank": rank, "start": time.monotonic()}
    try:
        if opening is None:
            reader = CheckpointReader(spec["prefix"], storage_options=storage_options(rank, spec), options=options)
        else:  # each rank decodes what it received, as after a broadcast
            reader = CheckpointReader.from_opening(pickle.loads(opening), storage_options=storage_options(rank, spec),
                                                   options=options)
        out["opened"] = time.monotonic()
        try:
            arrays = loop.run(reader.read_boxes(restore_requests(rank, spec)))
        finally:
            reader.close()
        check_restored(rank, spec, arrays)
    except Exception as exc:
        out["error"] = _error(exc)
        out["trace"] = traceback.format_exc()[-2000:]
    out["end"] = time.monotonic()
    return out


async def _profiled(work: Any, ranks: list[int]) -> Any:
    """`work`, profiled on the I/O loop's thread when $SCALE_PROFILE names a directory (the
    profiles of the coordinator's process and of the process holding rank 1 are written there,
    one file per save: ``scale-save-<N ranks of the process>-<rank>-<n>.prof``)."""
    import os

    where = os.environ.get("SCALE_PROFILE")
    if not where or (0 not in ranks and 1 not in ranks):
        return await work
    import cProfile

    profile = cProfile.Profile()
    profile.enable()
    try:
        return await work
    finally:
        profile.disable()
        count = len([n for n in os.listdir(where) if n.startswith(f"scale-save-{len(ranks)}-{ranks[0]}-")])
        profile.dump_stats(os.path.join(where, f"scale-save-{len(ranks)}-{ranks[0]}-{count + 1}.prof"))


def serve(spec: dict[str, Any], ranks: list[int], conn: Any) -> None:
    """A fleet process's life (see the module docstring)."""
    from remoteckpt.engine import loop
    from remoteckpt.options import IOOptions

    options = IOOptions(**spec.get("options", {}))
    try:
        stores = loop.run(_open_stores(ranks, spec, options))
    except Exception as exc:
        conn.send(("failed", _error(exc)))
        return
    conn.send(("ready", len(stores)))
    while True:
        command = conn.recv()
        if isinstance(command, tuple) and command[0] == "save":
            cpu, start = time.process_time(), time.monotonic()
            results = loop.run(_profiled(_save_all(stores, {**spec, "name": command[1]}, options), ranks))
            conn.send(("saved", {"ranks": results, "cpu": time.process_time() - cpu, "start": start,
                                 "end": time.monotonic()}))
        elif command == "open":  # rank 0's process: the opening it would broadcast to a process group
            from remoteckpt import CheckpointReader

            start = time.monotonic()
            with CheckpointReader(spec["prefix"], storage_options=storage_options(0, spec), options=options) as reader:
                conn.send(("opening", {"opening": pickle.dumps(reader.opening()), "start": start}))
        elif isinstance(command, tuple) and command[0] == "restore":
            loop.run(_close(stores))  # the save's clients: a restoring rank opens a reader of its own
            stores = {}
            cpu, start = time.process_time(), time.monotonic()
            workers = max(1, min(len(ranks), spec["restore_concurrency"]))
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(lambda r: _restore_one(r, spec, options, command[1]), ranks))
            conn.send(("restored", {"ranks": results, "cpu": time.process_time() - cpu, "start": start,
                                    "end": time.monotonic()}))
        else:
            loop.run(_close(stores))
            return
