"""``python -m benchmarks.readonce [--gib G] [--ranks N] [--repeat R] [--out DIR]``: N ranks
restoring one fully replicated checkpoint from the embedded SeaweedFS, each alone (every rank
fetches everything) against read-once restores (``remoteckpt.load(..., process_group=...)``
over gloo, also as if on two hosts, and ``IOOptions(host_cache=...)`` without a group).

Run from the repository root with tests/ on the import path (bytes are counted by the test
suite's proxy, tests/faultproxy.py): ``PYTHONPATH=tests python -m benchmarks.readonce``.

The checkpoint: G GiB of float32 in 32 tensors ``[rows, 1024]`` (written once, untimed).
Each mode runs R times twice: through the request-counting proxy (bytes of data-file
responses, i.e. what the ranks fetched from storage) and straight to the server (the time
reported: the proxy, a Python relay on the same cores, would slow the mode that moves the
most bytes most).  A run: N spawned processes join one gloo group, load a tiny checkpoint
untimed (imports, connections), wait at a barrier, then load; its time is from the first
rank's start to the last rank's return (one monotonic clock for the machine).  Every rank
checks the CRC32C of each array it got against the writer's, untimed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from . import test_module

TENSORS = 32
"""As benchmarks.throughput: 32 tensors, so a load has several to fetch at once."""

MODES = ("alone", "group", "host-cache", "group-2hosts")
"""group-2hosts: the group, its ranks telling it they are on two hosts (ranks 0, 1 and 2, 3):
every block then moves by gloo broadcasts over loopback TCP, the path of a group spanning
several hosts."""


def tensors(gib: float) -> dict[str, np.ndarray]:
    rows = max(1, int(gib * 2**30) // (TENSORS * 1024 * 4))
    return {f"t{i:02d}": np.random.default_rng([7, i]).standard_normal((rows, 1024), dtype=np.float32)
            for i in range(TENSORS)}


def rank_main(init_file: str, rank: int, ranks: int, mode: str, prefix: str, warm: str, endpoint: str,
              cache_dir: str, digests: dict[str, int], size: int, out: str) -> None:
    """One rank: join the group, warm up, load at the barrier, check, write its record."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if mode == "group-2hosts":
        from remoteckpt.engine.group import HOST_ENV

        os.environ[HOST_ENV] = "ab"[rank * 2 // ranks]
    import torch.distributed as dist

    import remoteckpt
    from remoteckpt.format.coding import crc32c

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=ranks)
    try:
        storage = {"endpoint_url": endpoint}
        group = dist.group.WORLD if mode.startswith("group") else None
        options = remoteckpt.IOOptions(host_cache=cache_dir) if mode == "host-cache" else remoteckpt.IOOptions()
        remoteckpt.load(warm, storage_options=storage, process_group=group)
        settle = np.ones(size, np.uint8)  # as benchmarks.harness.settle_memory: fresh memory costs
        del settle                        # several times the usual on a VM, whoever touches it first
        dist.barrier()
        start = time.monotonic()
        got = remoteckpt.load(prefix, storage_options=storage, process_group=group, options=options)
        end = time.monotonic()
        dist.barrier()
        ok = {n: crc32c(a.data) == digests[n] for n, a in got.items()} == dict.fromkeys(digests, True)
        Path(out).write_text(json.dumps({"rank": rank, "start": start, "end": end, "ok": ok}))
    finally:
        dist.destroy_process_group()


def run_mode(mode: str, ranks: int, prefix: str, warm: str, endpoint: str, digests: dict[str, int],
             size: int, work: Path, cache_root: str | None) -> float:
    """One run of `mode`: the seconds from the first rank's start to the last one's end."""
    context = multiprocessing.get_context("spawn")
    init_file = str(work / f"pg-{uuid.uuid4().hex}")
    cache_dir = Path(cache_root or work) / f"rk-cache-{uuid.uuid4().hex}"
    outs = [str(work / f"rank-{uuid.uuid4().hex}.json") for _ in range(ranks)]
    procs = [context.Process(target=rank_main, args=(init_file, r, ranks, mode, prefix, warm, endpoint,
                                                     str(cache_dir), digests, size, outs[r]))
             for r in range(ranks)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(1800)
        if p.exitcode != 0:
            raise RuntimeError(f"a rank of mode {mode} failed (exit code {p.exitcode})")
    records = [json.loads(Path(o).read_text()) for o in outs]
    if not all(r["ok"] for r in records):
        raise RuntimeError(f"mode {mode}: a rank restored wrong bytes")
    shutil.rmtree(cache_dir, ignore_errors=True)
    return max(r["end"] for r in records) - min(r["start"] for r in records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readonce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="GiB of the replicated state (default 1)")
    parser.add_argument("--ranks", type=int, default=4, help="processes loading it (default 4)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each mode and way; the median counts")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--cache-root", help="where the host-cache mode's cache directory goes "
                        "(default: the temporary directory, on disk; /dev/shm for memory)")
    parser.add_argument("--out", default="bench-results", help="directory for the JSON results")
    args = parser.parse_args(argv)
    FaultProxy = test_module("faultproxy", "PYTHONPATH=tests python -m benchmarks.readonce").FaultProxy

    import remoteckpt
    from remoteckpt.format.coding import crc32c
    from remoteckpt.testing import SeaweedServer

    modes = args.modes.split(",")
    state = tensors(args.gib)
    digests = {n: crc32c(a.data) for n, a in state.items()}
    size = sum(a.nbytes for a in state.values())
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rk-readonce-") as tmp, SeaweedServer() as server:
        for name, value in server.env().items():
            os.environ[name] = value
        prefix = f"s3://{server.bucket}/readonce/ckpt"
        warm = f"s3://{server.bucket}/readonce/warm"
        remoteckpt.save(state, prefix)
        remoteckpt.save({"w": np.zeros(16, np.float32)}, warm)
        del state
        for mode in modes:
            fetched, proxied, direct = [], [], []
            for _ in range(args.repeat):
                with FaultProxy(server.endpoint_url) as proxy:
                    proxied.append(run_mode(mode, args.ranks, prefix, warm, proxy.endpoint_url, digests, size,
                                           Path(tmp), args.cache_root))
                    fetched.append(proxy.counters["response-bytes"])
                direct.append(run_mode(mode, args.ranks, prefix, warm, server.endpoint_url, digests, size, Path(tmp),
                                       args.cache_root))
            results[mode] = {"fetched_bytes": fetched, "seconds_through_proxy": proxied, "seconds": direct}
            print(f"{mode:<11} fetched {statistics.median(fetched) / 2**30:6.3f} GiB  "
                  f"{statistics.median(direct):7.2f} s  (through the proxy {statistics.median(proxied):7.2f} s)",
                  flush=True)
    if "alone" in results:
        base = statistics.median(results["alone"]["seconds"])
        for mode, r in results.items():
            print(f"{mode:<11} time / alone {statistics.median(r['seconds']) / base:5.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "gib": args.gib, "bytes": size,
              "cache_root": args.cache_root, "load_average_after": os.getloadavg(),
              "ranks": args.ranks, "repeat": args.repeat, "machine": {"python": sys.version.split()[0],
              "platform": platform.platform(), "cpus": os.cpu_count()}, "results": results}
    path = out / f"readonce-{int(time.time())}.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
