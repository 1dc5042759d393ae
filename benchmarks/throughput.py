"""Throughput of remoteckpt's save and restore against the raw I/O of the same bytes,
TensorFlow's `tf.train.Checkpoint` and PyTorch's Distributed Checkpoint, on local disk and S3.

    python -m benchmarks [--quick] [--gib G] [--tensors N] [--repeat R] [URL]

Without a URL: local disk (a temporary directory) and S3 on an embedded SeaweedFS server
(`remoteckpt.testing`).  ``s3://bucket/prefix``: only S3, on that storage, configured from
the standard AWS environment.  A local directory: only local disk, there.

Rows (each the best of R runs; every suite runs in a fresh process, see `harness`):

    save / restore      raw limits (`baselines`), remoteckpt.save / remoteckpt.load,
                        TF tf.train.Checkpoint write+fsync / read, DCP dcp.save / dcp.load
    save_async          time until remoteckpt.save_async returns (the training step's
                        stall) and until its future completes, next to an in-memory copy
    save-multiworker    W processes each saving 1/W of the tensors to one checkpoint
                        (when remoteckpt.save takes rank/world_size); commit time if exposed
    rss-save / -restore peak RSS of a fresh process doing one save / one load, against the
                        tensors' size and the process's RSS before the operation

Functions the engine does not have yet (save_async, rank/world_size) show as "n/a".
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import multiprocessing
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .harness import (
    Config,
    accepted_kwargs,
    accepts,
    before_save,
    cache_state,
    drop_caches,
    make_tensors,
    na,
    nbytes,
    perf,
    remove,
    row,
    run_dir,
    run_suite,
    same_tensors,
    settle_memory,
    short_error,
    tensor_name,
)

# --- remoteckpt: save, load, save_async ---------------------------------------------------


def _save_kwargs(save: Any) -> dict[str, Any]:
    return accepted_kwargs(save, overwrite=True) or {}


def suite_remoteckpt(cfg: Config, target: str) -> list[dict[str, Any]]:
    import remoteckpt

    tensors = make_tensors(cfg)
    size = nbytes(tensors)
    base = run_dir(cfg, target, "rc")
    rows: list[dict[str, Any]] = []
    if getattr(remoteckpt, "save", None) is not None and getattr(remoteckpt, "load", None) is not None:
        _warm_up(base, load=True)  # first-call costs (I/O thread, lazy imports), as the peers get
    save = getattr(remoteckpt, "save", None)
    load = getattr(remoteckpt, "load", None)
    save_async = getattr(remoteckpt, "save_async", None)
    async_where = "remoteckpt.save_async"
    if save_async is None:  # the engine may have it before the package exports it
        import remoteckpt.api

        save_async = getattr(remoteckpt.api, "save_async", None)
        async_where = "remoteckpt.api.save_async (not exported by the package)"
    kw = _save_kwargs(save) if save is not None else {}
    try:
        # save
        if save is None:
            rows.append(na(target, "save", "remoteckpt", "remoteckpt.save is missing", label="remoteckpt.save"))
        else:
            try:
                times = []
                for r in range(cfg.repeat):
                    before_save(cfg)
                    start = perf()
                    save(tensors, f"{base}/save-{r}/model.ckpt", **kw)
                    times.append(perf() - start)
                    remove(f"{base}/save-{r}")
                rows.append(row(target, "save", "remoteckpt", times, size, label="remoteckpt.save",
                                detail="data file, then .index" + (", overwrite=True" if kw else "")))
            except Exception as exc:
                rows.append(na(target, "save", "remoteckpt", short_error(exc), label="remoteckpt.save"))
        # restore
        if save is None or load is None:
            rows.append(na(target, "restore", "remoteckpt", "remoteckpt.save or .load is missing", label="remoteckpt.load"))
        else:
            try:
                prefix = f"{base}/restore/model.ckpt"
                save(tensors, prefix, **kw)
                times, cache = [], None
                for r in range(cfg.repeat):
                    gc.collect()
                    cache = cache_state(cfg, target)
                    start = perf()
                    out = load(prefix)
                    times.append(perf() - start)
                    if r == 0:
                        bad = same_tensors(tensors, out)
                        if bad:
                            raise AssertionError(f"remoteckpt.load returned different values: {bad}")
                    del out
                rows.append(row(target, "restore", "remoteckpt", times, size, cache=cache, label="remoteckpt.load",
                                detail="new arrays, every CRC32C verified"))
            except Exception as exc:
                rows.append(na(target, "restore", "remoteckpt", short_error(exc), label="remoteckpt.load"))
            if "out" in (accepted_kwargs(load, out=None) or {}):
                label = "remoteckpt.load(out=...)"
                try:
                    times, cache = [], None
                    for r in range(cfg.repeat):
                        gc.collect()
                        dest = {k: np.empty_like(v) for k, v in tensors.items()}  # untouched pages
                        cache = cache_state(cfg, target)
                        start = perf()
                        out = load(prefix, out=dest)
                        times.append(perf() - start)
                        if r == 0:
                            bad = same_tensors(tensors, dest)
                            if bad:
                                raise AssertionError(f"remoteckpt.load(out=) filled different values: {bad}")
                        del out, dest
                    rows.append(row(target, "restore", "remoteckpt-out", times, size, cache=cache, label=label,
                                    detail="into preallocated arrays (as TF and DCP restore)"))
                except Exception as exc:
                    rows.append(na(target, "restore", "remoteckpt-out", short_error(exc), label=label))
            remove(f"{base}/restore")
        # in-memory copy: what a save_async must at least cost the caller, if it snapshots;
        # measured here, in the same process and moment, because fresh memory costs a VM very
        # different amounts from one minute to the next
        times = []
        for _ in range(cfg.repeat):
            settle_memory(cfg)
            start = perf()
            snapshot = {k: v.copy() for k, v in tensors.items()}
            times.append(perf() - start)
            assert len(snapshot) == len(tensors)
            del snapshot
        rows.append(row(target, "copy", "numpy", times, size, label="{k: v.copy() ...}",
                        detail="in-memory snapshot of the tensors"))
        # save_async
        labels = ("remoteckpt.save_async: returns", "remoteckpt.save_async: done")
        if save_async is None:
            for op, label in zip(("save_async-blocking", "save_async-total"), labels):
                rows.append(na(target, op, "remoteckpt", "remoteckpt.save_async does not exist (yet)", label=label))
        else:
            try:
                akw = accepted_kwargs(save_async, overwrite=True) or {}
                blocking, total = [], []
                for r in range(cfg.repeat):
                    before_save(cfg)
                    start = perf()
                    future = save_async(tensors, f"{base}/async-{r}/model.ckpt", **akw)
                    blocking.append(perf() - start)
                    future.result()
                    total.append(perf() - start)
                    remove(f"{base}/async-{r}")
                rows.append(row(target, "save_async-blocking", "remoteckpt", blocking, size, label=labels[0],
                                detail=f"until the call returns (the caller's stall); {async_where}"))
                rows.append(row(target, "save_async-total", "remoteckpt", total, size, label=labels[1],
                                detail=f"until future.result() returns; {async_where}"))
            except Exception as exc:
                for op, label in zip(("save_async-blocking", "save_async-total"), labels):
                    rows.append(na(target, op, "remoteckpt", short_error(exc), label=label))
    finally:
        remove(base)
    return rows


# --- peak RSS -----------------------------------------------------------------------------


def current_rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """ru_maxrss of this process, in bytes (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def _rss_row(target: str, op: str, seconds: float, size: int, baseline: int, peak_before: int, peak: int) -> dict[str, Any]:
    out = row(target, f"rss-{op}", "remoteckpt", [seconds], size, label=f"remoteckpt.{'save' if op == 'save' else 'load'}: peak RSS",
              detail="fresh process; baseline = RSS after imports, a tiny warm-up " + op
              + (" and making the tensors" if op == "save" else ""))
    out.update({"baseline_rss": baseline, "peak_rss_before": peak_before, "peak_rss": peak,
                "extra_rss": peak - baseline})
    return out


def _warm_up(directory: str, load: bool) -> None:
    """One tiny save (and load) first, so that lazily imported backends (s3fs, botocore and its
    service model) and the I/O thread are in the baseline, not in the measured peak."""
    import remoteckpt

    prefix = f"{directory}/warmup/model.ckpt"
    remoteckpt.save({"warmup": np.zeros(1024, np.float32)}, prefix, **_save_kwargs(remoteckpt.save))
    if load:
        remoteckpt.load(prefix)
    remove(f"{directory}/warmup")


def suite_rss_save(cfg: Config, target: str, directory: str) -> list[dict[str, Any]]:
    import remoteckpt

    _warm_up(directory, load=False)
    tensors = make_tensors(cfg)
    size = nbytes(tensors)
    gc.collect()
    baseline, before = current_rss(), peak_rss()
    start = perf()
    remoteckpt.save(tensors, f"{directory}/model.ckpt", **_save_kwargs(remoteckpt.save))
    seconds = perf() - start
    return [_rss_row(target, "save", seconds, size, baseline, before, peak_rss())]


def suite_rss_load(cfg: Config, target: str, directory: str) -> list[dict[str, Any]]:
    import remoteckpt

    size = cfg.total_bytes
    _warm_up(directory, load=True)
    gc.collect()
    drop_caches()  # not cache_state: its settle_memory would raise ru_maxrss, the peak measured here
    baseline, before = current_rss(), peak_rss()
    start = perf()
    out = remoteckpt.load(f"{directory}/model.ckpt")
    seconds = perf() - start
    peak = peak_rss()
    got = sum(a.nbytes for a in out.values())
    if got != size:
        raise AssertionError(f"loaded {got} bytes, expected {size}")
    return [_rss_row(target, "restore", seconds, size, baseline, before, peak)]


# --- several workers, one checkpoint ------------------------------------------------------


def commit_seconds(result: Any) -> float | None:
    """The commit time a save's result exposes, if any (attribute or mapping key)."""
    names = ("commit_seconds", "commit_time", "commit_s", "commit")
    for holder in (result, getattr(result, "stats", None), getattr(result, "timings", None),
                   getattr(result, "timing", None)):
        if holder is None or isinstance(holder, (str, bytes)):
            continue
        for name in names:
            value = holder.get(name) if isinstance(holder, dict) else getattr(holder, name, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
    return None


def _worker_indices(cfg: Config, rank: int) -> list[int]:
    return [i for i in range(cfg.tensors) if i * cfg.workers // cfg.tensors == rank]


def _timings(result: Any) -> dict[str, float]:
    """Numeric ``*_seconds`` fields (and a ``timings`` mapping) of a save's result."""
    out: dict[str, float] = {}
    for name in dir(result):
        if name.endswith("_seconds") and not name.startswith("_"):
            value = getattr(result, name, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[name] = float(value)
    timings = getattr(result, "timings", None)
    if isinstance(timings, dict):
        out.update({k: float(v) for k, v in timings.items() if isinstance(v, (int, float))})
    return out


def _mw_worker(cfg: Config, rank: int, prefix: str, save_id: str, options: dict[str, Any] | None,
               barrier: Any, queue: Any) -> None:
    try:
        import remoteckpt
        import remoteckpt.api as api

        tensors = make_tensors(cfg, _worker_indices(cfg, rank))
        kw = accepted_kwargs(remoteckpt.save, overwrite=True, save_id=save_id) or {}
        kw.update(rank=rank, world_size=cfg.workers)
        if options:
            kw["storage_options"] = options
        # The coroutine behind save() returns the worker's report (with the commit time);
        # save() itself returns only the prefix.  Use it when it exists.
        coroutine = getattr(api, "save_checkpoint", None)
        via = "remoteckpt.save"
        if coroutine is not None and inspect.iscoroutinefunction(coroutine):
            from remoteckpt.engine import loop

            via = "remoteckpt.api.save_checkpoint (the coroutine behind save)"
        barrier.wait()
        start = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes on Linux
        if coroutine is None or via == "remoteckpt.save":
            result: Any = remoteckpt.save(tensors, prefix, **kw)
        else:
            result = loop.run(coroutine(tensors, prefix, **kw))
        end = time.monotonic()
        queue.put({"rank": rank, "start": start, "end": end, "commit": commit_seconds(result),
                   "timings": _timings(result), "result": type(result).__name__, "via": via})
    except BaseException as exc:
        queue.put({"rank": rank, "error": short_error(exc)})
        try:
            barrier.abort()
        except Exception:
            pass


NO_LISTING_CACHE = {"use_listings_cache": False}
"""s3fs option: no directory-listing cache.  A workaround for a stale-listing failure of the
multi-worker commit (the coordinator's polls fill s3fs's listing cache; a later whole-object
GET sizes the object from that stale listing and reports it missing)."""


def suite_multiworker(cfg: Config, target: str) -> list[dict[str, Any]]:
    import remoteckpt

    op, label = "save-multiworker", f"remoteckpt.save, {cfg.workers} processes"
    save = getattr(remoteckpt, "save", None)
    if save is None or not accepts(save, "rank", "world_size"):
        return [na(target, op, "remoteckpt", "remoteckpt.save takes no rank/world_size (yet)", label=label)]
    rows = [_multiworker(cfg, target, op, "remoteckpt", label, None)]
    if rows[0]["status"] != "ok" and target == "s3" and accepts(save, "storage_options"):
        rows.append(_multiworker(cfg, target, op, "remoteckpt-nolistcache",
                                 label + ", use_listings_cache=False", NO_LISTING_CACHE))
    return rows


def _multiworker(cfg: Config, target: str, op: str, impl: str, label: str,
                 options: dict[str, Any] | None) -> dict[str, Any]:
    import remoteckpt

    ctx = multiprocessing.get_context("spawn")
    base = run_dir(cfg, target, "mw")
    totals: list[float] = []
    commits: list[float | None] = []
    kinds: set[str] = set()
    vias: set[str] = set()
    rank0: list[dict[str, float]] = []
    try:
        for r in range(cfg.repeat):
            prefix = f"{base}/mw-{r}/model.ckpt"
            save_id = f"bench-{os.getpid()}-{r}-{int(time.time())}"
            barrier, queue = ctx.Barrier(cfg.workers + 1), ctx.Queue()
            procs = [ctx.Process(target=_mw_worker, args=(cfg, rank, prefix, save_id, options, barrier, queue))
                     for rank in range(cfg.workers)]
            for p in procs:
                p.start()
            results = []
            try:
                try:
                    barrier.wait(timeout=cfg.timeout)
                except Exception:
                    pass  # a worker failed before the start line; its error is in the queue
                for _ in procs:
                    results.append(queue.get(timeout=cfg.timeout))
            finally:
                for p in procs:
                    p.join(30)
                    if p.is_alive():
                        p.terminate()
                        p.join()
            errors = [f"rank {x['rank']}: {x['error']}" for x in sorted(results, key=lambda x: x["rank"]) if "error" in x]
            if errors:
                return na(target, op, impl, f"run {r + 1}: " + "; ".join(errors)[:300], label=label)
            totals.append(max(x["end"] for x in results) - min(x["start"] for x in results))
            got = [x["commit"] for x in results if x["commit"] is not None]
            commits.append(max(got) if got else None)
            kinds.update(x["result"] for x in results)
            vias.update(x["via"] for x in results)
            rank0.append(next(x["timings"] for x in results if x["rank"] == 0))
            if r == 0:
                names = {n for n, _ in remoteckpt.list_variables(prefix, storage_options=options)}
                if names != {tensor_name(i) for i in range(cfg.tensors)}:
                    raise AssertionError(f"the checkpoint holds {len(names)} tensors, expected {cfg.tensors}")
            remove(f"{base}/mw-{r}")
    finally:
        remove(base)
    best = min(range(len(totals)), key=totals.__getitem__)
    commit = commits[best]
    detail = "first start to last return, " + ", ".join(sorted(vias))
    detail += f"; commit {commit:.3f} s" if commit is not None else \
        f"; commit time n/a (the result, {', '.join(sorted(kinds))}, does not expose it)"
    return row(target, op, impl, totals, cfg.total_bytes, label=label, detail=detail,
               extra={"commit_seconds": commit, "workers": cfg.workers, "rank0_timings": rank0[best]})


# --- the run ------------------------------------------------------------------------------

_PLACEHOLDERS: dict[str, list[tuple[str, str, str]]] = {
    "suite_raw_local": [("save", "raw", "raw: os.write + fsync"), ("restore", "raw", "raw: pread")],
    "suite_raw_s3": [("save", "raw", "raw: multipart upload"), ("restore", "raw", "raw: ranged GET")],
    "suite_remoteckpt": [("save", "remoteckpt", "remoteckpt.save"), ("restore", "remoteckpt", "remoteckpt.load")],
    "suite_tf": [("save", "tf", "TF: tf.train.Checkpoint.write"), ("restore", "tf", "TF: tf.train.Checkpoint.read")],
    "suite_dcp": [("save", "dcp", "DCP: dcp.save"), ("restore", "dcp", "DCP: dcp.load")],
    "suite_multiworker": [("save-multiworker", "remoteckpt", "remoteckpt.save, several processes")],
    "suite_rss_save": [("rss-save", "remoteckpt", "remoteckpt.save: peak RSS")],
    "suite_rss_load": [("rss-restore", "remoteckpt", "remoteckpt.load: peak RSS")],
}


def plan(cfg: Config) -> list[tuple[str, str, tuple[Any, ...]]]:
    """(module, function, extra args) of every suite, in the order they run."""
    steps: list[tuple[str, str, tuple[Any, ...]]] = []
    for target in ("local", "s3"):
        if (cfg.local_dir if target == "local" else cfg.s3_url) is None:
            continue
        raw = "suite_raw_local" if target == "local" else "suite_raw_s3"
        steps += [
            ("baselines", raw, (target,)),
            ("throughput", "suite_remoteckpt", (target,)),
            ("baselines", "suite_tf", (target,)),
            ("baselines", "suite_dcp", (target,)),
            ("baselines", "suite_dcp", (target, "dcp-remoteckpt")),
            ("throughput", "suite_rss_save", (target,)),  # + suite_rss_load, same directory
        ]
    mw_target = "s3" if cfg.s3_url else "local"
    steps.append(("throughput", "suite_multiworker", (mw_target,)))
    return steps


def run_throughput(cfg: Config, progress: Any = sys.stderr,
                   between_suites: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Every row of the run (measured or n/a), in plan order; `between_suites()` runs after
    each suite, untimed (the embedded server's vacuum).

    The run is `cfg.repeat` rounds; each round runs every suite once (peak RSS: the first round
    only).  On a shared machine conditions drift over minutes (other jobs, the hypervisor
    handing memory back and forth), so interleaving puts every implementation through the same
    conditions, and `report.paired_ratios` compares runs of the same round."""
    rows: dict[str, dict[str, Any]] = {}
    steps = plan(cfg)
    one = dataclasses.replace(cfg, repeat=1)
    for rnd in range(cfg.repeat):
        for n, (module, func, args) in enumerate(steps, 1):
            target = args[0]
            calls = [(func, args)]
            if func == "suite_rss_save":
                if rnd:
                    continue
                directory = run_dir(cfg, target, "rss")
                calls = [("suite_rss_save", (target, directory)), ("suite_rss_load", (target, directory))]
            for name, call_args in calls:
                print(f"[round {rnd + 1}/{cfg.repeat}, {n}/{len(steps)}] {target:<5} {name} ...", end="",
                      file=progress, flush=True)
                start = time.monotonic()
                got, why = run_suite(f"benchmarks.{module}", name, one, *call_args, timeout=cfg.timeout)
                print(f" {time.monotonic() - start:.1f} s" + (f"  (failed: {why})" if why else ""), file=progress,
                      flush=True)
                if got is None:
                    got = [na(target, op, impl, why or "failed", label=label) for op, impl, label in _PLACEHOLDERS[name]]
                load = round(os.getloadavg()[0], 2)  # how busy the machine was: context for the numbers
                for r in got:
                    r.setdefault("load_avg_1m", load)
                    merge_round(rows, r, rnd)
            if func == "suite_rss_save":
                remove(directory)
            if between_suites is not None:
                try:
                    between_suites()
                except Exception as exc:  # housekeeping: the next suite reports what it meets
                    print(f"warning: between suites: {short_error(exc)}", file=progress, flush=True)
    return list(rows.values())


def merge_round(rows: dict[str, dict[str, Any]], new: dict[str, Any], rnd: int) -> None:
    """Fold round `rnd`'s `new` row into `rows` (by id): times gathered, the best kept, and
    ``rounds[i]`` = the seconds measured in round i (None where that round failed)."""
    seconds = new.get("seconds") if new.get("status") == "ok" else None
    old = rows.get(new["id"])
    if old is None:
        rows[new["id"]] = row_ = dict(new)
        row_["rounds"] = [None] * rnd + [seconds]
        row_["loads"] = [new.get("load_avg_1m")]
        return
    old["rounds"] = old.get("rounds", []) + [None] * (rnd - len(old.get("rounds", []))) + [seconds]
    old["loads"] = old.get("loads", []) + [new.get("load_avg_1m")]
    if seconds is None:
        return
    if old.get("status") != "ok":  # an earlier round failed: this one is the row
        keep = {k: old[k] for k in ("rounds", "loads")}
        old.clear()
        old.update(new, **keep)
        return
    old["times"] = old.get("times", []) + new.get("times", [])
    if seconds < old["seconds"]:
        for key in ("seconds", "gib_per_s", "cache", "detail", "load_avg_1m", "commit_seconds", "rank0_timings"):
            if key in new:
                old[key] = new[key]


def default_local_dir() -> str:
    return tempfile.mkdtemp(prefix="remoteckpt-bench-")


def configure(url: str | None, cfg: Config) -> tuple[Config, list[str]]:
    """Fill in where to measure from `url`; notes for the report."""
    notes = []
    if url is None:
        cfg.local_dir = cfg.local_dir or default_local_dir()
        notes.append(f"local: temporary directory {cfg.local_dir}")
    elif url.startswith(("s3://", "s3a://")):
        cfg.s3_url = "s3://" + url.split("://", 1)[1].rstrip("/")
        notes.append(f"s3: {cfg.s3_url} (credentials and endpoint from the environment)")
    elif "://" in url and not url.startswith("file://"):
        raise ValueError(f"unsupported URL {url!r}: give s3://bucket/prefix or a local directory")
    else:
        path = Path(url.removeprefix("file://")).resolve()
        path.mkdir(parents=True, exist_ok=True)
        cfg.local_dir = str(path)
        notes.append(f"local: {path}")
    return cfg, notes


def _warm_up_server(server: Any) -> None:
    """A fresh SeaweedFS allocates its volumes on the first writes: do those before measuring."""
    client = server.client()
    try:
        body = os.urandom(8 * 2**20)
        for i in range(8):
            client.put_object(Bucket=server.bucket, Key=f"warmup/{i}", Body=body)
            client.get_object(Bucket=server.bucket, Key=f"warmup/{i}")["Body"].read()
        for i in range(8):
            client.delete_object(Bucket=server.bucket, Key=f"warmup/{i}")
    finally:
        client.close()


def run(url: str | None, cfg: Config, out_dir: str | os.PathLike[str] = "bench-results",
        argv: list[str] | None = None) -> tuple[dict[str, Any], Path]:
    """The whole throughput benchmark: start SeaweedFS if no URL was given, run every suite,
    print the table, write ``OUT/throughput-<timestamp>.json``; (record, its path)."""
    import json
    import signal

    from . import report
    from .harness import drop_caches

    cfg, notes = configure(url, cfg)
    own_local = url is None
    server = None
    started = time.time()
    load_before = os.getloadavg()
    previous = None
    if threading.current_thread() is threading.main_thread():
        def terminated(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt(f"signal {signum}")  # so that the finally below stops SeaweedFS

        previous = signal.signal(signal.SIGTERM, terminated)
    try:
        if url is None:
            try:
                from remoteckpt.testing import SeaweedServer

                server = SeaweedServer(bucket="remoteckpt-bench").start()
                os.environ.update(server.env())
                _warm_up_server(server)
                cfg.s3_url, cfg.s3_embedded = f"s3://{server.bucket}/bench", True
                notes.append(f"s3: embedded SeaweedFS (weed mini) at {server.endpoint_url}, "
                             f"data in {server.workdir} (same disk), started in {server.startup_seconds:.1f} s")
            except Exception as exc:
                notes.append(f"s3: not measured, embedded SeaweedFS did not start: {short_error(exc)}")
        dropped = drop_caches()
        notes.append("reads: page cache dropped before each (sync; echo 3 > /proc/sys/vm/drop_caches)" if dropped
                     else "reads: WARM CACHE - the page cache could not be dropped (needs root)")
        rows = run_throughput(cfg, between_suites=server.vacuum if server is not None else None)
    finally:
        if server is not None:
            server.stop()
        if own_local and cfg.local_dir:
            remove(cfg.local_dir)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    from .harness import GiB

    record: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_seconds": round(time.time() - started, 1),
        "argv": sys.argv[1:] if argv is None else argv,
        "config": cfg.as_dict(),
        "bytes": cfg.total_bytes,
        "tensor_shape": [cfg.total_bytes // cfg.tensors // 4 // 1024, 1024],
        "notes": notes,
        "machine": report.machine_info(cfg.local_dir if not own_local else tempfile.gettempdir()),
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()]},
        "rows": rows,
    }
    record["ratios"] = report.ratios(rows)
    record["paired_ratios"] = report.paired_ratios(rows)
    text = report.table(record)
    print(text)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"throughput-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}.json"
    record["text"] = text
    path.write_text(json.dumps(record, indent=1, default=str))
    print(f"\nresults: {path}  ({record['wall_seconds']:.0f} s, {record['bytes'] / GiB:.2f} GiB per row)")
    return record, path
