"""Incremental saves against full saves on an embedded SeaweedFS S3 server, bytes counted by
the request-counting proxy (tests/faultproxy.py's ProxyProcess: every request body's length).

    PYTHONPATH=tests python -m benchmarks.incremental [--mib 512] [--tensors 64] [--repeat 3] [--backend both|s3|local]
        [--local-dir DIR]

One checkpoint of `--mib` MiB in `--tensors` float32 tensors of one size.  Per repetition, a
fresh directory gets a base checkpoint (an incremental save, untimed) and a state file naming
it, then each scenario saves a new prefix, in an order rotated from one repetition to the next:

  full        remoteckpt.save, not incremental                       (the reference)
  changed     incremental, base of the same names and shapes, every tensor changed
  90%         incremental, 10% of the tensors (so of the bytes) changed since the base
  first       incremental without a base (a directory of its own: every tensor written, digests
              computed while streaming)

and on S3 the drain of a local tier (docs/tiered.md): the 90% checkpoint, saved on local disk
as a tier saves it (untimed: incrementally, against the base saved there before it), copied to
the directory by `tools.copy.copy_async`:

  drain       without a base: every byte uploaded (the reference of the next)
  drain 90%   with the directory's latest as the base (what a local tier's drain does): the
              unchanged tensors copied by the server

On S3, uploaded bytes are the request bodies the proxy relayed during the save (PUTs and
POSTs: parts, the index, the protocol's small records); copied parts (UploadPartCopy) carry
none.  On local disk they are the bytes the writer wrote itself (not copied by
copy_file_range).  Times (wall clock, and this process's CPU seconds: the client's side, less
disturbed by other load on the machine than wall time) are medians over the repetitions.
Also measured: the CPU cost of the content digest (SHA-256) against CRC32C, per core.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import blake3
import crc32c
import numpy as np

from remoteckpt import api
from remoteckpt.engine import loop
from remoteckpt.management.state import format_state
from remoteckpt.storage import open_store
from remoteckpt.testing import SeaweedServer
from remoteckpt.tools.copy import copy_async

from . import test_module

MiB = 2**20


def hash_rates(mib: int = 256) -> dict[str, float]:
    """GB/s of one core: CRC32C (what every save computes), BLAKE3 (the digest incremental
    saves add) and its alternatives SHA-256 and BLAKE2b-128, over the same buffer."""
    data = np.random.default_rng(0).integers(0, 255, mib * MiB, dtype=np.uint8).data
    rates = {}
    for name, fn in (("crc32c", lambda: crc32c.crc32c(data)),
                     ("blake3-128", lambda: blake3.blake3(data).digest(length=16)),
                     ("sha256", lambda: hashlib.sha256(data).digest()),
                     ("blake2b-128", lambda: hashlib.blake2b(data, digest_size=16).digest())):
        best = min(_timed(fn) for _ in range(3))
        rates[name] = mib * MiB / best / 1e9
    return rates


def _cpu() -> float:
    """CPU seconds of this process so far, every thread (the client's side of a save)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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


def _uploaded(proxy: Any, phase: str) -> int:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        proxy.control("dump", path=f.name)
        log = json.load(open(f.name))
    return sum(r[10] for r in log if r[2] == phase and r[4] in ("PUT", "POST"))


def run(mib: int, tensors: int, repeat: int, backend: str, local_dir: str | None = None) -> dict[str, Any]:
    """Every scenario `repeat` times on `backend` ("s3": SeaweedFS through the proxy; "local":
    a temporary directory, in `local_dir` if given, where written bytes are the writer's count)."""
    size = mib * MiB // tensors // 4
    rng = np.random.default_rng(1)
    base = {f"layer{i:03d}/w": rng.random(size, dtype=np.float32) for i in range(tensors)}
    changed = max(1, tensors // 10)
    ninety = dict(base, **{f"layer{i:03d}/w": base[f"layer{i:03d}/w"] + 1
                           for i in range(0, tensors, tensors // changed)[:changed]})
    everything = {k: v + 2 for k, v in base.items()}
    scenarios = {"full": (base, False), "first": (base, True), "90%": (ninety, True), "changed": (everything, True)}
    results: dict[str, list[tuple[float, int, int, float]]] = {k: [] for k in scenarios}
    if backend == "s3":
        results.update({"drain": [], "drain 90%": []})
    with contextlib.ExitStack() as stack:
        proxy: Any = None
        if backend == "s3":
            faultproxy = test_module("faultproxy", "PYTHONPATH=tests python -m benchmarks.incremental")
            server = stack.enter_context(SeaweedServer())
            os.environ.update(server.env())
            proxy = stack.enter_context(faultproxy.ProxyProcess(server.endpoint_url))
            root, options = f"s3://{server.bucket}", {"endpoint_url": proxy.endpoint_url}
        else:
            root, options = stack.enter_context(tempfile.TemporaryDirectory(prefix="rk-incremental-",
                                                                            dir=local_dir)), {}
        for r in range(repeat):
            directory = f"{root}/incremental-{uuid.uuid4().hex[:8]}"
            loop.run(api.save_checkpoint(base, f"{directory}/base", incremental=True, storage_options=options))
            _mark(directory, options, "base")
            order = list(scenarios)[r % len(scenarios):] + list(scenarios)[: r % len(scenarios)]  # rotated
            for label in order:
                tensors_, incremental = scenarios[label]
                # "first" has no base: a directory of its own, without a state file
                where = f"{root}/first-{uuid.uuid4().hex[:8]}" if label == "first" else directory
                if proxy is not None:
                    proxy.control("phase", name=label)
                start, cpu = time.perf_counter(), _cpu()
                report = loop.run(api.save_checkpoint(tensors_, f"{where}/{label.strip('%')}-{r}",
                                                      incremental=incremental, storage_options=options))
                seconds, cpu = time.perf_counter() - start, _cpu() - cpu
                if proxy is not None:
                    proxy.control("phase", name="between")
                    uploaded = _uploaded(proxy, label)
                else:
                    uploaded = report.bytes_written - report.bytes_copied
                results[label].append((seconds, uploaded, report.bytes_copied, cpu))
                print(f"  {backend} {r}: {label:<8} {seconds:7.2f} s  cpu {cpu:6.2f} s  uploaded "
                      f"{uploaded / MiB:8.1f} MiB  copied {report.bytes_copied / MiB:8.1f} MiB", flush=True)
            if proxy is not None:
                # As a local tier holds it: the base saved there first, then the 90% checkpoint saved
                # incrementally against it (its unchanged tensors laid out in runs, as the drain
                # copies them).
                local = stack.enter_context(tempfile.TemporaryDirectory(prefix="rk-tier-"))
                loop.run(api.save_checkpoint(base, f"{local}/base", incremental=True))
                _mark(local, {}, "base")
                loop.run(api.save_checkpoint(ninety, f"{local}/ninety", incremental=True, unchanged_last=True))
                for label, with_base in (("drain", None), ("drain 90%", True))[:: 1 if r % 2 == 0 else -1]:
                    proxy.control("phase", name=label)
                    start, cpu = time.perf_counter(), _cpu()
                    copied = loop.run(copy_async(f"{local}/ninety", f"{directory}/{label.replace(' ', '-')}-{r}",
                                                 destination_options=options, base=with_base))
                    seconds, cpu = time.perf_counter() - start, _cpu() - cpu
                    proxy.control("phase", name="between")
                    uploaded = _uploaded(proxy, label)
                    results[label].append((seconds, uploaded, copied.copied, cpu))
                    print(f"  {backend} {r}: {label:<9} {seconds:7.2f} s  cpu {cpu:6.2f} s  uploaded "
                          f"{uploaded / MiB:8.1f} MiB  copied {copied.copied / MiB:8.1f} MiB", flush=True)
    checkpoint = sum(v.nbytes for v in base.values())
    summary: dict[str, Any] = {"checkpoint_bytes": checkpoint, "tensors": tensors, "repeat": repeat}
    for label, rows in results.items():
        reference = "drain" if label.startswith("drain") else "full"
        full_time = statistics.median(row[0] for row in results[reference])
        full_cpu = statistics.median(row[3] for row in results[reference])
        seconds = statistics.median(row[0] for row in rows)
        uploaded = statistics.median(row[1] for row in rows)
        cpu = statistics.median(row[3] for row in rows)
        summary[label] = {"seconds": seconds, "x_full": seconds / full_time, "uploaded_bytes": uploaded,
                          "uploaded_fraction": uploaded / checkpoint,
                          "copied_bytes": statistics.median(row[2] for row in rows),
                          "cpu_seconds": cpu, "cpu_x_full": cpu / full_cpu,
                          "all_seconds": [row[0] for row in rows], "all_cpu_seconds": [row[3] for row in rows]}
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.incremental")
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--tensors", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="build/bench")
    parser.add_argument("--backend", choices=("s3", "local", "both"), default="both")
    parser.add_argument("--local-dir", default=None,
                        help="where the local scenarios write (default: the system's temporary directory)")
    args = parser.parse_args(argv)
    rates = hash_rates()
    print(f"one core: CRC32C {rates['crc32c']:.2f} GB/s, BLAKE3-128 {rates['blake3-128']:.2f} GB/s, "
          f"SHA-256 {rates['sha256']:.2f} GB/s, BLAKE2b-128 {rates['blake2b-128']:.2f} GB/s", flush=True)
    summary = {b: run(args.mib, args.tensors, args.repeat, b, args.local_dir)
               for b in (("s3", "local") if args.backend == "both" else (args.backend,))}
    print(f"{'backend':<8}{'scenario':<10}{'seconds':>9}{'x full':>8}{'cpu s':>8}{'x full':>8}{'uploaded':>10}")
    for backend, rows in summary.items():
        for label in ("full", "first", "changed", "90%", "drain", "drain 90%"):
            if label not in rows:
                continue
            row = rows[label]
            print(f"{backend:<8}{label:<10}{row['seconds']:>9.2f}{row['x_full']:>8.3f}{row['cpu_seconds']:>8.2f}"
                  f"{row['cpu_x_full']:>8.3f}{row['uploaded_fraction']:>10.1%}")
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
