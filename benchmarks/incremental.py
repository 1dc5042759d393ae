"""Incremental saves against full saves on an embedded SeaweedFS S3 server, bytes counted by
the request-counting proxy (`benchmarks.scale.proxy`: every request body's length).

    python -m benchmarks.incremental [--mib 512] [--tensors 64] [--repeat 3] [--out build/bench]

One checkpoint of `--mib` MiB in `--tensors` float32 tensors of one size; per repetition,
each on a fresh prefix of one directory whose state file names the previous checkpoint:

  full        remoteckpt.save, not incremental                       (the reference)
  changed     incremental, base of the same names and shapes, every tensor changed
  90%         incremental, 10% of the tensors (so of the bytes) changed since the base
  first       incremental without a base (every tensor written, digests computed while streaming)

Uploaded bytes are the request bodies the proxy relayed during the save (PUTs and POSTs:
parts, the index, the protocol's small records); copied parts (UploadPartCopy) carry none.
Times are medians over the repetitions, scenarios interleaved so that drift hits them all.
Also measured: the CPU cost of the content digest (SHA-256) against CRC32C, per core.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import crc32c
import numpy as np

from remoteckpt import api
from remoteckpt.engine import loop
from remoteckpt.management.state import format_state
from remoteckpt.storage import open_store
from remoteckpt.testing import SeaweedServer

from .scale.proxy import ProxyProcess

MiB = 2**20


def hash_rates(mib: int = 256) -> dict[str, float]:
    """GB/s of one core: CRC32C (what every save computes), SHA-256 (the digest incremental
    saves add) and BLAKE2b-128 (its alternative), over the same buffer."""
    data = np.random.default_rng(0).integers(0, 255, mib * MiB, dtype=np.uint8).data
    rates = {}
    for name, fn in (("crc32c", lambda: crc32c.crc32c(data)),
                     ("sha256", lambda: hashlib.sha256(data).digest()),
                     ("blake2b-128", lambda: hashlib.blake2b(data, digest_size=16).digest())):
        best = min(_timed(fn) for _ in range(3))
        rates[name] = mib * MiB / best / 1e9
    return rates


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _mark(directory: str, options: dict[str, Any], name: str) -> None:
    async def go() -> None:
        store = open_store(directory, options)
        try:
            await store.put("checkpoint", format_state(name, [name]))
        finally:
            await store.close()

    loop.run(go())


def _uploaded(proxy: ProxyProcess, phase: str) -> int:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        proxy.control("dump", path=f.name)
        log = json.load(open(f.name))
    return sum(r[10] for r in log if r[2] == phase and r[4] in ("PUT", "POST"))


def run(mib: int, tensors: int, repeat: int) -> dict[str, Any]:
    size = mib * MiB // tensors // 4
    rng = np.random.default_rng(1)
    base = {f"layer{i:03d}/w": rng.random(size, dtype=np.float32) for i in range(tensors)}
    changed = max(1, tensors // 10)
    ninety = dict(base, **{f"layer{i:03d}/w": base[f"layer{i:03d}/w"] + 1
                           for i in range(0, tensors, tensors // changed)[:changed]})
    everything = {k: v + 2 for k, v in base.items()}
    results: dict[str, list[tuple[float, int, int]]] = {k: [] for k in ("full", "changed", "90%", "first")}
    with SeaweedServer() as server:
        os.environ.update(server.env())
        with ProxyProcess(server.endpoint_url) as proxy:
            options = {"endpoint_url": proxy.endpoint_url}
            for r in range(repeat):
                directory = f"s3://{server.bucket}/incremental-{uuid.uuid4().hex[:8]}"

                def one(label: str, tensors_: dict[str, Any], name: str, incremental: bool) -> None:
                    proxy.control("phase", name=label)
                    start = time.perf_counter()
                    report = loop.run(api.save_checkpoint(tensors_, f"{directory}/{name}", incremental=incremental,
                                                          storage_options=options))
                    seconds = time.perf_counter() - start
                    proxy.control("phase", name="between")
                    results[label].append((seconds, _uploaded(proxy, label), report.bytes_copied))
                    print(f"  {r}: {label:<8} {seconds:7.2f} s  uploaded {results[label][-1][1] / MiB:8.1f} MiB"
                          f"  copied {report.bytes_copied / MiB:8.1f} MiB", flush=True)

                one("first", base, "base", True)
                _mark(directory, options, "base")
                one("full", base, "full", False)
                one("90%", ninety, "ninety", True)
                one("changed", everything, "changed", True)
    checkpoint = sum(v.nbytes for v in base.values())
    summary: dict[str, Any] = {"checkpoint_bytes": checkpoint, "tensors": tensors, "repeat": repeat}
    full_time = statistics.median(t for t, _, _ in results["full"])
    for label, rows in results.items():
        seconds = statistics.median(t for t, _, _ in rows)
        uploaded = statistics.median(u for _, u, _ in rows)
        summary[label] = {"seconds": seconds, "x_full": seconds / full_time, "uploaded_bytes": uploaded,
                          "uploaded_fraction": uploaded / checkpoint,
                          "copied_bytes": statistics.median(c for _, _, c in rows),
                          "all_seconds": [t for t, _, _ in rows]}
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.incremental")
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--tensors", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="build/bench")
    args = parser.parse_args(argv)
    rates = hash_rates()
    print(f"one core: CRC32C {rates['crc32c']:.2f} GB/s, SHA-256 {rates['sha256']:.2f} GB/s, "
          f"BLAKE2b-128 {rates['blake2b-128']:.2f} GB/s", flush=True)
    summary = run(args.mib, args.tensors, args.repeat)
    print(f"{'scenario':<10}{'seconds':>9}{'x full':>8}{'uploaded':>10}  of the checkpoint")
    for label in ("full", "first", "changed", "90%"):
        row = summary[label]
        print(f"{label:<10}{row['seconds']:>9.2f}{row['x_full']:>8.3f}{row['uploaded_fraction']:>10.1%}")
    record = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
              "argv": sys.argv[1:] if argv is None else argv, "hash_rates_gb_s": rates, "incremental": summary}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"incremental-{int(time.time())}.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
