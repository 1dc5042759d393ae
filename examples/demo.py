"""``make demo``: a 4-worker save to an embedded S3 server, then a verified restore.

    python examples/demo.py                  # starts SeaweedFS on 127.0.0.1, saves to s3://
    python examples/demo.py --store DIR      # the same on a local directory (or any URL)
    python examples/demo.py --workers 2 --mib 512

Needs remoteckpt and, for the S3 server, its testing extra: ``pip install "remoteckpt[testing]"``.

Each worker process holds a quarter of every weight matrix (rows) and saves it as slices of the
full tensor; rank 0 merges the tables and commits one TensorFlow-readable checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from remoteckpt import CheckpointReader, ProgressBar, ProgressEvent, Slice, load
from remoteckpt.api import save_checkpoint
from remoteckpt.engine import loop
from remoteckpt.protocol.save import SaveReport

WIDTH = 1024


def model_shapes(mib: int) -> dict[str, tuple[int, ...]]:
    """A transformer-shaped set of float32 weights adding up to about `mib` MiB."""
    per_layer = 4 * (WIDTH * 3 * WIDTH + WIDTH * WIDTH + 2 * WIDTH * 4 * WIDTH + WIDTH)
    layers = max(1, mib * 2**20 // per_layer)
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(layers):
        shapes.update({f"layer_{i:02d}/attn/qkv": (WIDTH, 3 * WIDTH), f"layer_{i:02d}/attn/out": (WIDTH, WIDTH),
                       f"layer_{i:02d}/mlp/in": (WIDTH, 4 * WIDTH), f"layer_{i:02d}/mlp/out": (4 * WIDTH, WIDTH),
                       f"layer_{i:02d}/norm/scale": (WIDTH,)})
    return shapes


def rows_of(name: str, shape: tuple[int, ...], lo: int, hi: int) -> np.ndarray:
    """Rows lo..hi of tensor `name`: a cheap deterministic pattern, so that each worker makes
    only its own rows and the restore can be checked exactly."""
    cols = int(np.prod(shape[1:]))
    index = np.arange(lo * cols, hi * cols, dtype=np.int64)
    values = ((index * 7919 + sum(name.encode())) % 10007).astype(np.float32) / 10007
    return values.reshape((hi - lo, *shape[1:]))


def full_tensor(name: str, shape: tuple[int, ...]) -> np.ndarray:
    return rows_of(name, shape, 0, shape[0])


def worker_share(rank: int, world: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    share: dict[str, Any] = {}
    for name, shape in shapes.items():
        if len(shape) < 2:
            if rank == 0:
                share[name] = full_tensor(name, shape)  # small vectors: saved whole by one worker
            continue
        rows = shape[0] // world
        lo, hi = rank * rows, shape[0] if rank == world - 1 else (rank + 1) * rows
        share[name] = Slice(rows_of(name, shape, lo, hi), shape, (lo, 0))
    share[f"worker_{rank}/rng_state"] = np.array([rank, 12345], np.int64)
    if rank == 0:
        share["global_step"] = np.int64(1000)
    return share


def _worker(rank: int, world: int, prefix: str, mib: int, events: Any, env: dict[str, str],
            save_id: str) -> SaveReport:
    os.environ.update(env)
    share = worker_share(rank, world, model_shapes(mib))
    return loop.run(save_checkpoint(share, prefix, rank=rank, world_size=world, save_id=save_id,
                                    progress=events.put))


@contextlib.contextmanager
def _s3() -> Iterator[tuple[str, dict[str, str]]]:
    from remoteckpt.testing import SeaweedServer

    print("starting an embedded S3 server (SeaweedFS) on 127.0.0.1 ...", flush=True)
    with SeaweedServer() as server:
        print(f"  endpoint {server.endpoint_url}, bucket {server.bucket!r} (ready in {server.startup_seconds:.1f} s)")
        yield f"s3://{server.bucket}/demo", server.env()
    print("S3 server stopped.")


def _watch(events: Any, world: int, stop: threading.Event) -> None:
    """One bar for all workers: the sum of their written bytes."""
    bar = ProgressBar(f"save ({world} workers)")
    written: dict[int, int] = {}
    totals: dict[int, int] = {}
    while not stop.is_set() or not events.empty():
        try:
            event: ProgressEvent = events.get(timeout=0.1)
        except queue.Empty:
            continue
        totals[event.rank] = event.total
        if event.kind == "written":
            written[event.rank] = event.done
        bar(ProgressEvent(event.prefix, 0, world, "written", sum(written.values()), sum(totals.values())))
    bar.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="examples/demo.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="a local directory (or any URL) instead of the embedded S3 server")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--mib", type=int, default=256, help="checkpoint size in MiB (default 256)")
    args = parser.parse_args(argv)
    shapes = model_shapes(args.mib)
    nbytes = sum(4 * int(np.prod(s)) for s in shapes.values())
    with contextlib.ExitStack() as stack:
        env: dict[str, str] = {}
        if args.store:
            base = args.store.rstrip("/")
        else:
            base, env = stack.enter_context(_s3())
            os.environ.update(env)
        prefix = f"{base}/model.ckpt-1000"
        save_id = f"demo-{uuid.uuid4().hex[:12]}"  # one per job, shared by its workers
        context = multiprocessing.get_context("spawn")
        manager = stack.enter_context(context.Manager())
        events = manager.Queue()
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(events, args.workers, stop), daemon=True)
        watcher.start()
        start = time.perf_counter()
        with context.Pool(args.workers) as pool:
            reports: list[SaveReport] = pool.starmap(
                _worker, [(r, args.workers, prefix, args.mib, events, env, save_id) for r in range(args.workers)])
        saved = time.perf_counter() - start
        stop.set()
        watcher.join()
        start = time.perf_counter()
        restored = load(prefix, progress=ProgressBar("restore"))
        loaded = time.perf_counter() - start
        verified = all(np.array_equal(restored[n], full_tensor(n, s)) for n, s in shapes.items())
        verified &= all(restored[f"worker_{r}/rng_state"].tolist() == [r, 12345] for r in range(args.workers))
        with CheckpointReader(prefix) as reader:
            shards = reader.index.num_shards
            count = len(reader.get_variable_to_shape_map())
        coordinator = reports[0]
        busy = max(r.write_seconds + r.wait_seconds + r.merge_seconds + r.commit_seconds for r in reports)
        print(f"checkpoint   {prefix}")
        print(f"tensors      {count} in {shards} data shards, written by {args.workers} worker processes")
        print(f"bytes        {nbytes / 2**20:.1f} MiB")
        print(f"save         {busy:.2f} s in the workers' save calls ({nbytes / busy / 1e6:.0f} MB/s); "
              f"{saved:.2f} s with process start-up")
        print(f"commit       merge {coordinator.merge_seconds * 1000:.1f} ms + commit "
              f"{coordinator.commit_seconds * 1000:.1f} ms on the coordinator (no data copied)")
        print(f"restore      {loaded:.2f} s  ({nbytes / loaded / 1e6:.0f} MB/s), every CRC32C checked")
        print(f"verified     {'yes: every tensor equals what the workers saved' if verified else 'NO'}")
    return 0 if verified else 1


if __name__ == "__main__":
    raise SystemExit(main())
