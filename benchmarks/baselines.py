"""What remoteckpt is measured against, on the same tensors: the raw limits of the storage and
the checkpointers people would otherwise use.

    suite_raw_local   one file: os.write of every array's buffer + fsync; cold pread into
                      fresh arrays, 1 thread and 4 threads
    suite_raw_s3      s3fs's async client directly: multipart upload with N parts in flight,
                      ranged GETs with N requests in flight, read straight into the arrays
    suite_tf          TensorFlow's tf.train.Checkpoint (one tf.Variable per tensor):
                      write (+ fsync of its files) and read into the same variables
    suite_dcp         PyTorch Distributed Checkpoint, one process: FileSystemWriter/Reader on
                      disk, FsspecWriter/Reader on S3; state_dict of torch.from_numpy views

Each runs in its own process (`harness.run_suite`); anything that fails to import or to run
comes back as an "n/a" row with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .harness import (
    Config,
    MiB,
    before_save,
    cache_state,
    fsync_tree,
    make_tensors,
    na,
    nbytes,
    perf,
    quiet_warnings,
    remove,
    row,
    run_dir,
    s3fs_options,
    same_tensors,
    short_error,
)

# --- raw local disk -----------------------------------------------------------------------


def _write_all(fd: int, view: memoryview) -> None:
    while len(view):
        n = os.write(fd, view)
        view = view[n:]


def _write_file(path: str, arrays: list[np.ndarray]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for a in arrays:
            _write_all(fd, memoryview(a).cast("B"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _pread_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise OSError(f"short read at {offset + done}")
        done += n


def _read_file(path: str, outs: list[np.ndarray], threads: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        jobs = []
        offset = 0
        for out in outs:
            jobs.append((memoryview(out).cast("B"), offset))
            offset += out.nbytes
        if threads == 1:
            for view, off in jobs:
                _pread_all(fd, view, off)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda job: _pread_all(fd, *job), jobs))
    finally:
        os.close(fd)


def suite_raw_local(cfg: Config, target: str = "local") -> list[dict[str, Any]]:
    tensors = make_tensors(cfg)
    arrays = list(tensors.values())
    size = nbytes(tensors)
    base = run_dir(cfg, target, "raw")
    rows: list[dict[str, Any]] = []
    try:
        path = os.path.join(base, "raw.bin")
        times = []
        for _ in range(cfg.repeat):
            before_save(cfg)
            start = perf()
            _write_file(path, arrays)
            times.append(perf() - start)
            os.unlink(path)
        rows.append(row(target, "save", "raw", times, size, label="raw: os.write + fsync, 1 file",
                        detail=f"{len(arrays)} os.write calls into one file, one fsync"))
        _write_file(path, arrays)
        for threads in (1, 4):
            times, cache = [], None
            for r in range(cfg.repeat):
                outs = [np.empty_like(a) for a in arrays]  # fresh, untouched pages, like a load's
                cache = cache_state(cfg, target)
                start = perf()
                _read_file(path, outs, threads)
                times.append(perf() - start)
                if r == 0 and not all(np.array_equal(a, b) for a, b in zip(arrays, outs)):
                    raise AssertionError("raw read returned different bytes")
                del outs
            rows.append(row(target, "restore", f"raw-{threads}t", times, size, cache=cache,
                            label=f"raw: pread, {threads} thread{'s' if threads > 1 else ''}",
                            detail="into fresh np.empty arrays"))
    finally:
        remove(base)
    return rows


# --- raw S3 -------------------------------------------------------------------------------


def _split(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def _parts(views: list[memoryview], part: int) -> Iterator[bytes]:
    """The concatenated bytes of `views` in `part`-sized bodies (one copy each, as any
    client makes: botocore takes bytes, not memoryviews)."""
    pending: list[memoryview] = []
    have = 0
    for view in views:
        while len(view):
            take = min(len(view), part - have)
            pending.append(view[:take])
            have += take
            view = view[take:]
            if have == part:
                yield b"".join(pending)
                pending, have = [], 0
    if have:
        yield b"".join(pending)


async def _upload(fs: Any, bucket: str, key: str, views: list[memoryview], part: int, inflight: int) -> None:
    mpu = await fs._call_s3("create_multipart_upload", Bucket=bucket, Key=key)
    upload_id = mpu["UploadId"]
    slots = asyncio.Semaphore(inflight)
    etags: dict[int, str] = {}
    tasks: list[asyncio.Future[None]] = []

    async def one(number: int, body: bytes) -> None:
        try:
            out = await fs._call_s3("upload_part", Bucket=bucket, Key=key, UploadId=upload_id,
                                    PartNumber=number, Body=body)
            etags[number] = out["ETag"]
        finally:
            slots.release()

    try:
        bodies = _parts(views, part)
        number = 0
        while True:
            await slots.acquire()  # before the body exists: at most `inflight` bodies in memory
            body = next(bodies, None)
            if body is None:
                slots.release()
                break
            number += 1
            tasks.append(asyncio.ensure_future(one(number, body)))
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        await asyncio.gather(*tasks)
        await fs._call_s3("complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id,
                          MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]})
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await fs._call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        raise


async def _download(fs: Any, bucket: str, key: str, out: memoryview, size: int, inflight: int) -> None:
    slots = asyncio.Semaphore(inflight)

    async def one(start: int, end: int) -> None:
        async with slots:
            resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")
            body = resp["Body"]
            try:
                view = out[start:end]
                done = 0
                while done < len(view):
                    n = await body.readinto(view[done:])
                    if n == 0:
                        raise OSError(f"short ranged GET at {start + done}")
                    done += n
            finally:
                body.close()

    total = len(out)
    await asyncio.gather(*(one(a, min(a + size, total)) for a in range(0, total, size)))


async def _close(fs: Any) -> None:
    creator = getattr(fs, "_s3creator", None)
    if creator is not None:
        fs._s3creator = None
        await creator.__aexit__(None, None, None)


async def _raw_s3(cfg: Config, target: str, arrays: list[np.ndarray], base: str) -> list[dict[str, Any]]:
    import s3fs

    fs = s3fs.S3FileSystem(asynchronous=True, skip_instance_cache=True, **s3fs_options())
    await fs.set_session()
    rows: list[dict[str, Any]] = []
    size = sum(a.nbytes for a in arrays)
    views = [memoryview(a).cast("B") for a in arrays]
    try:
        for part, inflight in cfg.upload_configs:
            times = []
            try:
                for r in range(cfg.repeat):
                    bucket, key = _split(f"{base}/up-{r}.bin")
                    before_save(cfg)
                    start = perf()
                    await _upload(fs, bucket, key, views, part, inflight)
                    times.append(perf() - start)
                    await fs._call_s3("delete_object", Bucket=bucket, Key=key)
                rows.append(row(target, "save", f"raw-mpu-{part // MiB}MiBx{inflight}", times, size,
                                label=f"raw: multipart, {inflight} x {part // MiB} MiB in flight",
                                detail="s3fs _call_s3: create/upload_part/complete"))
            except Exception as exc:
                rows.append(na(target, "save", f"raw-mpu-{part // MiB}MiBx{inflight}", short_error(exc)))
        bucket, key = _split(f"{base}/down.bin")
        await _upload(fs, bucket, key, views, *cfg.upload_configs[0])
        for part, inflight in cfg.download_configs:
            times, cache = [], None
            try:
                for r in range(cfg.repeat):
                    flat = np.empty(size, np.uint8)
                    cache = cache_state(cfg, target)
                    start = perf()
                    await _download(fs, bucket, key, memoryview(flat), part, inflight)
                    times.append(perf() - start)
                    if r == 0:
                        offset = 0
                        for a in arrays:
                            if not np.array_equal(flat[offset:offset + a.nbytes].view(a.dtype).reshape(a.shape), a):
                                raise AssertionError("ranged GETs returned different bytes")
                            offset += a.nbytes
                    del flat
                rows.append(row(target, "restore", f"raw-get-{part // MiB}MiBx{inflight}", times, size, cache=cache,
                                label=f"raw: ranged GET, {inflight} x {part // MiB} MiB in flight",
                                detail="get_object + readinto the arrays"))
            except Exception as exc:
                rows.append(na(target, "restore", f"raw-get-{part // MiB}MiBx{inflight}", short_error(exc)))
        await fs._call_s3("delete_object", Bucket=bucket, Key=key)
    finally:
        await _close(fs)
    return rows


def suite_raw_s3(cfg: Config, target: str = "s3") -> list[dict[str, Any]]:
    tensors = make_tensors(cfg)
    base = run_dir(cfg, target, "raw")
    try:
        return asyncio.run(_raw_s3(cfg, target, list(tensors.values()), base))
    finally:
        remove(base)


# --- TensorFlow ---------------------------------------------------------------------------


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def suite_tf(cfg: Config, target: str = "local") -> list[dict[str, Any]]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    label_save, label_restore = "TF: tf.train.Checkpoint.write", "TF: tf.train.Checkpoint.read"
    try:
        with quiet_warnings(), _stderr_silenced():  # TF's C++ start-up logging ignores the env var
            import tensorflow as tf
    except Exception as exc:
        why = f"tensorflow not importable: {short_error(exc)}"
        return [na(target, "save", "tf", why, label=label_save), na(target, "restore", "tf", why, label=label_restore)]
    base = run_dir(cfg, target, "tf")
    rows: list[dict[str, Any]] = []
    try:
        if target != "local":
            try:
                tf.io.gfile.exists(base + "/probe")
            except Exception as exc:
                why = f"TensorFlow {tf.__version__} cannot open {base.split('://')[0]}:// ({short_error(exc)[:120]})"
                return [na(target, "save", "tf", why, label=label_save),
                        na(target, "restore", "tf", why, label=label_restore)]
        tensors = make_tensors(cfg)
        size = nbytes(tensors)
        variables = {name: tf.Variable(value, name=name.replace("/", "_")) for name, value in tensors.items()}
        ckpt = tf.train.Checkpoint(**{f"v{i:03d}": v for i, v in enumerate(variables.values())})
        tiny = tf.train.Checkpoint(w=tf.Variable(np.zeros(1024, np.float32)))  # warm-up: first-call costs
        tiny.read(tiny.write(f"{base}/warmup/ckpt"))
        remove(f"{base}/warmup")
        try:
            durable, write_only = [], []
            for r in range(cfg.repeat):
                directory = f"{base}/save-{r}"
                os.makedirs(directory, exist_ok=True)
                before_save(cfg)
                start = perf()
                ckpt.write(f"{directory}/ckpt")
                wrote = perf()
                if target == "local":
                    fsync_tree(directory)
                durable.append(perf() - start)
                write_only.append(wrote - start)
                remove(directory)
            rows.append(row(target, "save", "tf", durable, size, label=label_save + " + fsync",
                            detail=f"write alone (page cache) best {min(write_only):.3f} s; then fsync of its files",
                            extra={"write_only_seconds": min(write_only)}))
        except Exception as exc:
            rows.append(na(target, "save", "tf", short_error(exc), label=label_save))
        try:
            path = ckpt.write(f"{base}/restore/ckpt")
            for v in variables.values():  # so the check below proves the read restored them
                v.assign(tf.zeros_like(v))
            times, cache = [], None
            for r in range(cfg.repeat):
                cache = cache_state(cfg, target)
                start = perf()
                status = ckpt.read(path)
                times.append(perf() - start)
                status.assert_consumed()
                if r == 0:
                    bad = same_tensors(tensors, variables)
                    if bad:
                        raise AssertionError(f"TF restored different values: {bad}")
            rows.append(row(target, "restore", "tf", times, size, cache=cache, label=label_restore,
                            detail="into the existing tf.Variables"))
        except Exception as exc:
            rows.append(na(target, "restore", "tf", short_error(exc), label=label_restore))
    finally:
        remove(base)
    return rows


# --- PyTorch DCP --------------------------------------------------------------------------


def suite_dcp(cfg: Config, target: str = "local", via: str = "dcp") -> list[dict[str, Any]]:
    """DCP's own storage (`via="dcp"`: FileSystem*/Fsspec*), or remoteckpt's plugin behind the
    same `dcp.save`/`dcp.load` calls (`via="dcp-remoteckpt"`: remoteckpt.torch.StorageWriter)."""
    impl = via
    if via == "dcp":
        kind = "FileSystem" if target == "local" else "Fsspec"
        label_save, label_restore = f"DCP: dcp.save, {kind}Writer", f"DCP: dcp.load, {kind}Reader"
    else:
        label_save, label_restore = "DCP + remoteckpt.torch.StorageWriter", "DCP + remoteckpt.torch.StorageReader"
    try:
        with quiet_warnings():
            import torch
            import torch.distributed.checkpoint as dcp

            writer_cls: Any
            reader_cls: Any
            options: dict[str, Any] = {}
            if via != "dcp":
                import remoteckpt.torch as plugin

                def writer_cls(path: str, **_: Any) -> Any:
                    return plugin.StorageWriter(path)

                def reader_cls(path: str, **_: Any) -> Any:
                    return plugin.StorageReader(path)
            elif target == "local":
                writer_cls, reader_cls = dcp.FileSystemWriter, dcp.FileSystemReader
            else:
                from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

                writer_cls, reader_cls = FsspecWriter, FsspecReader
                options = s3fs_options()
    except Exception as exc:
        why = f"torch DCP not importable: {short_error(exc)}"
        return [na(target, "save", impl, why, label=label_save), na(target, "restore", impl, why, label=label_restore)]
    tensors = make_tensors(cfg)
    size = nbytes(tensors)
    state = {name: torch.from_numpy(value) for name, value in tensors.items()}  # shares memory
    base = run_dir(cfg, target, impl)
    rows: list[dict[str, Any]] = []
    with quiet_warnings():  # warm-up: first-call costs (imports, planners, the I/O stack)
        tiny = {"w": torch.zeros(1024)}
        dcp.save(tiny, storage_writer=writer_cls(f"{base}/warmup", thread_count=cfg.dcp_threads, **options))
        dcp.load(tiny, storage_reader=reader_cls(f"{base}/warmup", **options))
    remove(f"{base}/warmup")
    detail = f"torch {torch.__version__}, one process, no process group" + (
        f", thread_count={cfg.dcp_threads}" if via == "dcp" else ", remoteckpt's engine underneath")
    try:
        try:
            times = []
            for r in range(cfg.repeat):
                path = f"{base}/save-{r}"
                before_save(cfg)
                with quiet_warnings():
                    start = perf()
                    dcp.save(state, storage_writer=writer_cls(path, thread_count=cfg.dcp_threads, **options))
                    times.append(perf() - start)
                remove(path)
            rows.append(row(target, "save", impl, times, size, label=label_save,
                            detail=detail + (", sync_files=True" if via == "dcp" else "")))
        except Exception as exc:
            rows.append(na(target, "save", impl, short_error(exc), label=label_save))
        try:
            path = f"{base}/restore"
            with quiet_warnings():
                dcp.save(state, storage_writer=writer_cls(path, thread_count=cfg.dcp_threads, **options))
            times, cache = [], None
            for r in range(cfg.repeat):
                dest = {name: torch.empty_like(t) for name, t in state.items()}
                cache = cache_state(cfg, target)
                with quiet_warnings():
                    start = perf()
                    dcp.load(dest, storage_reader=reader_cls(path, **options))
                    times.append(perf() - start)
                if r == 0:
                    bad = same_tensors(tensors, dest)
                    if bad:
                        raise AssertionError(f"DCP loaded different values: {bad}")
                del dest
            rows.append(row(target, "restore", impl, times, size, cache=cache, label=label_restore,
                            detail=f"torch {torch.__version__}, into preallocated torch.empty tensors"))
        except Exception as exc:
            rows.append(na(target, "restore", impl, short_error(exc), label=label_restore))
    finally:
        remove(base)
    return rows
