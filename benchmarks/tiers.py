"""``python -m benchmarks.tiers [--gib G] [--tensors N] [--repeat R] [--triplets T] [--dir DIR] [--ram-dir DIR] [--out DIR]``

Tiered checkpoints against their targets, on the same tensors in one run (docs/tiered.md,
docs/benchmarks.md "Tiered checkpoints"): a local directory (the tier) and an embedded
SeaweedFS S3 server on this machine (the remote tier).  A round measures every row; the
table gives the best and the median of the measurements, and each ratio is computed within
one round (both sides under the same load), a target being judged on the median of the ratios.

    blocking, async     save_async(local_tier=) until it returns   vs  an in-memory copy of the tensors
    blocking, sync      save(local_tier=) (the local commit)        vs  save() to the same local disk
    local commit        save(local_tier=)                           vs  raw os.write + fsync, one file
    drain               tiers.drain.drain() of the committed copy   vs  save() straight to S3
                        (its peak RSS beyond the process's before: no second copy of the tensors)
    restore, local      load(local_tier=)                           vs  raw pread of one file
                        (and, for reference, load() of a checkpoint on local disk)
    restore, S3         load(local_tier=) with the tier wiped       vs  load() from S3

The two local-write rows (blocking, sync and local commit) are measured T times a round as
triplets (raw write, save(), save(local_tier=)), the order rotated from one triplet to the
next, a ratio per triplet; once on the disk of --dir, and once on a RAM disk (--ram-dir,
default /dev/shm; "none" skips it), where fsync costs nothing and no block is allocated on a
device, so what is left of a gap there is the software's own.  On disk every write goes to
new files (see `one_round` on fresh blocks) and the tier keeps every checkpoint of the round
(nothing is deleted while it runs); on the RAM disk the tier keeps the default 2, so from
the third triplet on each tiered save evicts a durable checkpoint as a job's saves do, and
the raw and direct files of a triplet are removed after it.  Each tiered save is followed by waiting for its drain (not
timed), so no write of a triplet runs beside a drain.

Reads run after the page cache is dropped when the process may (root), else warm (both sides
alike; noted in the output).  Writes start after `sync`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .baselines import _read_file, _write_file
from .harness import Config, GiB, drop_caches, make_tensors, nbytes, perf, same_tensors
from .throughput import current_rss


class PeakRss:
    """Samples this process's RSS every few ms in a thread: the peak above the start."""

    def __init__(self) -> None:
        self.start = self.peak = current_rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss())
            self._stop.wait(0.005)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def extra(self) -> int:
        return self.peak - self.start


def _cold() -> str:
    return "cold" if drop_caches() else "warm"


WRITERS = ("raw_write", "local_save", "tiered_save")
"""The three local writes of a triplet (their order rotates from one triplet to the next)."""


def write_triplets(tensors: dict[str, np.ndarray], where: str, tier: Any, s3: str, tag: str, count: int,
                   keep_files: bool) -> tuple[list[dict[str, float]], dict[str, str]]:
    """`count` triplets of local writes under `where` (raw write + fsync of one file, save()
    and save(local_tier=`tier`), the order rotated each time, each after `sync`); their times
    and the paths of the last triplet's files (kept if `keep_files`, else removed)."""
    import remoteckpt

    arrays = list(tensors.values())
    triplets = []
    last: dict[str, str] = {}
    for k in range(count):
        times: dict[str, float] = {}
        raw = os.path.join(where, f"raw-{tag}-{k}.bin")
        direct = os.path.join(where, f"direct-{tag}-{k}", "model.ckpt")
        prefix = f"{s3}/tiered-{tag}-{k}/model.ckpt-{tag}-{k}"
        for what in WRITERS[k % 3:] + WRITERS[: k % 3]:
            os.sync()
            start = perf()
            if what == "raw_write":
                _write_file(raw, arrays)
            elif what == "local_save":
                remoteckpt.save(tensors, direct)
            else:
                remoteckpt.save(tensors, prefix, local_tier=tier)
            times[what] = perf() - start
            if what == "tiered_save":
                remoteckpt.wait_durable(prefix)  # its drain is done before the next write
        triplets.append(times)
        if not keep_files:
            os.unlink(raw)
            shutil.rmtree(os.path.dirname(direct), ignore_errors=True)
        last = {"raw": raw, "direct": direct, "prefix": prefix}
    return triplets, last


def one_round(tensors: dict[str, np.ndarray], local: str, ram: str | None, s3: str, rnd: int,
              triplets: int) -> dict[str, Any]:
    import remoteckpt
    from remoteckpt.engine import loop
    from remoteckpt.tiers import drain
    from remoteckpt.tiers.layout import LocalTier, local_prefix

    size = nbytes(tensors)
    out: dict[str, Any] = {"load_average": os.getloadavg()[0]}
    tier = LocalTier(path=os.path.join(local, f"tier-{rnd}"), keep=100)
    arrays = list(tensors.values())

    # in-memory copy (what save_async must do at the least) and save_async's blocking time
    for _ in range(2):  # the second copy is timed: the allocator then holds freed memory, as save_async's has
        start = perf()
        copies = [np.array(a, copy=True) for a in arrays]
        out["memcopy"] = perf() - start
        del copies
    os.sync()
    prefix = f"{s3}/async-{rnd}/model.ckpt-a"
    start = perf()
    future = remoteckpt.save_async(tensors, prefix, local_tier=tier)
    out["async_block"] = perf() - start
    future.result()
    remoteckpt.wait_durable(prefix)

    # Local writes on disk: every write goes to new files, none removed first: on
    # thin-provisioned and discarding disks (cloud VMs) a write into blocks a deleted file
    # freed costs a fraction of a write into fresh ones (here 0.25 s against 1.2 to 1.6 s
    # for 512 MiB), so the three are compared on fresh blocks alike.
    out["writes"], last = write_triplets(tensors, local, tier, s3, f"{rnd}", triplets, keep_files=True)
    for key in WRITERS:
        out[key] = min(t[key] for t in out["writes"])
    raw, direct, prefix = last["raw"], last["direct"], last["prefix"]
    if ram is not None:  # the same on a RAM disk, with the tier's default retention
        ram_tier = LocalTier(path=os.path.join(ram, f"tier-{rnd}"))
        out["ram_writes"], _ = write_triplets(tensors, ram, ram_tier, s3, f"ram-{rnd}", triplets, keep_files=False)
        shutil.rmtree(ram_tier.path, ignore_errors=True)

    # the drain of a committed local copy vs a direct S3 save of the same tensors
    os.sync()
    start = perf()
    remoteckpt.save(tensors, f"{s3}/direct-{rnd}/model.ckpt")
    out["s3_save"] = perf() - start
    drained = f"{s3}/drained-{rnd}/model.ckpt-t"
    local_copy = local_prefix(tier, prefix)
    os.sync()
    with PeakRss() as rss:
        start = perf()
        loop.run(drain.drain(local_copy, drained))
        out["drain"] = perf() - start
    out["drain_extra_rss"] = rss.extra

    # restores: raw pread, the local tier, S3 as today, S3 after the tier is lost
    outs = [np.empty_like(a) for a in arrays]
    out["cache"] = _cold()
    start = perf()
    _read_file(raw, outs, 4)
    out["raw_read"] = perf() - start
    del outs
    _cold()
    start = perf()
    got = remoteckpt.load(direct)
    out["local_restore"] = perf() - start
    del got
    _cold()
    start = perf()
    got = remoteckpt.load(prefix, local_tier=tier)  # its record names `prefix`: every data file local
    out["tier_restore"] = perf() - start
    assert same_tensors(tensors, got) is None, "the local tier restored other bytes"
    del got
    _cold()
    start = perf()
    got = remoteckpt.load(f"{s3}/direct-{rnd}/model.ckpt")
    out["s3_restore"] = perf() - start
    del got
    shutil.rmtree(tier.path)  # a replaced node: the tier is gone
    _cold()
    start = perf()
    got = remoteckpt.load(prefix, local_tier=tier)
    out["lost_tier_restore"] = perf() - start
    assert same_tensors(tensors, got) is None, "the restore after losing the tier returned other bytes"
    del got
    for k in range(triplets):
        os.unlink(os.path.join(local, f"raw-{rnd}-{k}.bin"))
        shutil.rmtree(os.path.join(local, f"direct-{rnd}-{k}"), ignore_errors=True)
    out["bytes"] = size
    return out


TARGETS = [
    ("blocking, async", "async_block", "memcopy", 1.5, "<="),
    ("blocking, sync", "tiered_save", "local_save", 1.05, "<="),
    ("local commit (speed)", "raw_write", "tiered_save", 0.9, ">="),
    ("drain (speed)", "s3_save", "drain", 0.9, ">="),
    ("restore from the tier (speed)", "raw_read", "tier_restore", 0.9, ">="),
    ("restore from S3, tier lost (speed)", "s3_restore", "lost_tier_restore", 1.0, ">="),
]
"""(what, numerator, denominator, target, sense): each ratio is numerator / denominator of
one round, or of one triplet for the local writes (times: for a "speed" row, the peer's time
over ours, so higher is better)."""

NAMES = {"memcopy": "in-memory copy of the tensors", "async_block": "save_async(local_tier=): blocks",
         "raw_write": "raw: os.write + fsync, one file", "local_save": "save() to local disk",
         "tiered_save": "save(local_tier=): local commit", "s3_save": "save() to S3",
         "drain": "drain of the local copy to S3", "raw_read": "raw: pread, 4 threads, one file",
         "local_restore": "load() from local disk", "tier_restore": "load(local_tier=): from the tier",
         "s3_restore": "load() from S3", "lost_tier_restore": "load(local_tier=), tier lost: from S3"}


def samples(rounds: list[dict[str, Any]], key: str, where: str = "disk") -> list[dict[str, float]]:
    """What a ratio of `key`'s row is computed on: every triplet of every round for a local
    write (`where`: "disk" or "ram"), else every round."""
    if key in WRITERS:
        return [t for r in rounds for t in r["writes" if where == "disk" else "ram_writes"]]
    return rounds


def report(rounds: list[dict[str, Any]]) -> str:
    size = rounds[0]["bytes"]
    triplets = len(rounds[0]["writes"])
    ram = "ram_writes" in rounds[0]
    lines = [f"{size / GiB:.2f} GiB, {len(rounds)} round(s), {triplets} triplet(s) of local writes a round"
             + (" on disk and on the RAM disk" if ram else "")
             + "; load average (1 min) at each round's start: "
             + " ".join(f"{r['load_average']:.1f}" for r in rounds),
             "", "| measurement | best s | median s | GiB/s (best) |", "|---|---:|---:|---:|"]
    places = [("disk", "")] + ([("ram", ", RAM disk")] if ram else [])
    for key, label in NAMES.items():
        for where, suffix in places if key in WRITERS else places[:1]:
            times = [x[key] for x in samples(rounds, key, where)]
            best = min(times)
            lines.append(f"| {label}{suffix} | {best:.3f} | {statistics.median(times):.3f} | {size / best / GiB:.2f} |")
    lines += ["", "drain: peak RSS beyond the process's before it: "
              + ", ".join(f"{r['drain_extra_rss'] / 2**20:.0f}" for r in rounds)
              + f" MiB in the rounds; the tensors are {size / 2**20:.0f} MiB",
              f"reads: {rounds[0]['cache']} page cache", "",
              "| target | ratio per round (local writes: per triplet) | median | target | met (median) |",
              "|---|---|---:|---:|:-:|"]
    for what, num, den, target, sense in TARGETS:
        for where, suffix in places if num in WRITERS else places[:1]:
            ratios = [x[num] / x[den] for x in samples(rounds, num, where)]
            median = statistics.median(ratios)
            met = median <= target if sense == "<=" else median >= target
            lines.append(f"| {what}{suffix}: {NAMES[num]} / {NAMES[den]} | {' '.join(f'{x:.2f}' for x in ratios)} | "
                         f"{median:.2f} | {sense} {target} | {'yes' if met else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tiers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=0.5)
    parser.add_argument("--tensors", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--triplets", type=int, default=6, help="triplets of local writes a round (default 6)")
    parser.add_argument("--dir", help="local directory for the tier and the local saves (default: a temp dir)")
    parser.add_argument("--ram-dir", default="/dev/shm",
                        help='a RAM disk for the local writes measured there too (default /dev/shm; "none": skipped)')
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    from remoteckpt.testing import SeaweedServer

    from .throughput import _warm_up_server

    cfg = Config(gib=args.gib, tensors=args.tensors)
    tensors = make_tensors(cfg)
    local = tempfile.mkdtemp(prefix="rckpt-tiers-", dir=args.dir)
    ram = None
    if args.ram_dir != "none" and os.path.isdir(args.ram_dir):
        ram = tempfile.mkdtemp(prefix="rckpt-tiers-", dir=args.ram_dir)
    started = time.time()
    load_before = os.getloadavg()
    server = SeaweedServer(bucket="remoteckpt-bench").start()
    try:
        os.environ.update(server.env())
        _warm_up_server(server)
        rounds = []
        for rnd in range(args.repeat):
            rounds.append(one_round(tensors, local, ram, f"s3://{server.bucket}/tiers", rnd, args.triplets))
            print(f"round {rnd}: " + ", ".join(f"{k}={v:.3f}" for k, v in rounds[-1].items()
                                                if isinstance(v, float)), file=sys.stderr)
            server.vacuum()
    finally:
        server.stop()
        shutil.rmtree(local, ignore_errors=True)
        if ram is not None:
            shutil.rmtree(ram, ignore_errors=True)
    text = report(rounds)
    load_after = os.getloadavg()
    text += (f"\n\nload average (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in load_before)} before, "
             f"{' '.join(f'{x:.2f}' for x in load_after)} after")
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"tiers-{int(started)}.json"
    path.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                                "argv": sys.argv[1:] if argv is None else argv, "rounds": rounds,
                                "load_average": {"before": load_before, "after": load_after},
                                "table": text}, indent=1))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
