"""What every throughput suite shares: the tensors, timing, result rows, page-cache dropping,
scratch locations (local directory or S3 URL) and running a suite in a fresh process.

A *suite* is a function ``suite(cfg, target) -> list[row]`` in one of the bench modules.  It
runs in its own spawned interpreter (`run_suite`), so TensorFlow and PyTorch never share a
process with each other or with remoteckpt, a crash or an import error of one peer becomes an
"n/a" row with the reason, and each suite's memory is returned to the system when it ends.
Every suite regenerates the same tensors from the same seeds (`make_tensors`) and checks
their fingerprint, so all rows of a run measure the same bytes.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

GiB = 2**30
MiB = 2**20


@dataclass
class Config:
    """One throughput run.  Picklable: it is handed to every suite's process."""

    gib: float = 1.0
    tensors: int = 32
    repeat: int = 2
    seed: int = 0
    local_dir: str | None = None
    """Scratch directory for local measurements (None: no local measurements)."""
    s3_url: str | None = None
    """``s3://bucket/prefix`` for S3 measurements (None: no S3 measurements)."""
    s3_embedded: bool = False
    """The S3 server is the embedded SeaweedFS on this machine (its page cache is ours)."""
    upload_configs: list[tuple[int, int]] = field(default_factory=lambda: [(8 * MiB, 16), (16 * MiB, 8)])
    """Raw S3 multipart upload: (part size, parts in flight) pairs to try."""
    download_configs: list[tuple[int, int]] = field(default_factory=lambda: [(8 * MiB, 16), (16 * MiB, 16)])
    """Raw S3 ranged GET: (range size, requests in flight) pairs to try."""
    workers: int = 4
    """Processes of the multi-worker save."""
    dcp_threads: int = 1
    """`thread_count` of PyTorch DCP's writers (its default is 1)."""
    timeout: float = 900.0
    """Seconds one suite may take before its process is terminated."""

    @property
    def total_bytes(self) -> int:
        return tensor_elements(self) * 4 * self.tensors

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the tensors --------------------------------------------------------------------------

def tensor_elements(cfg: Config) -> int:
    """float32 elements per tensor: `cfg.gib` split into `cfg.tensors` arrays, rounded down to
    a multiple of 1024 (each array is [rows, 1024])."""
    per = int(cfg.gib * GiB) // cfg.tensors // 4
    return max(1024, per // 1024 * 1024)


def tensor_name(i: int) -> str:
    return f"model/layer_{i:03d}/kernel"


def make_tensors(cfg: Config, indices: range | list[int] | None = None) -> dict[str, np.ndarray]:
    """The run's float32 tensors (or those at `indices`): tensor i comes from its own seeded
    generator, so any process can make any subset, byte-identical everywhere."""
    rows = tensor_elements(cfg) // 1024
    out = {}
    for i in range(cfg.tensors) if indices is None else indices:
        rng = np.random.default_rng([cfg.seed, i])
        out[tensor_name(i)] = rng.random((rows, 1024), dtype=np.float32)
    return out


def fingerprint(arrays: Iterator[np.ndarray] | list[np.ndarray]) -> int:
    """CRC32C over the arrays' bytes, in order."""
    import crc32c

    crc = 0
    for a in arrays:
        crc = crc32c.crc32c(memoryview(np.ascontiguousarray(a)).cast("B"), value=crc)
    return crc


def nbytes(tensors: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in tensors.values())


def same_tensors(expected: dict[str, np.ndarray], got: dict[str, Any]) -> str | None:
    """None if `got` holds exactly `expected` (numpy, torch or TF values), else what differs."""
    if set(got) != set(expected):
        return f"names differ: {sorted(set(expected) ^ set(got))[:3]}"
    for name, want in expected.items():
        value = got[name]
        value = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        if value.shape != want.shape or value.dtype != want.dtype or not np.array_equal(value, want):
            return f"tensor {name!r} differs ({value.dtype}{list(value.shape)})"
    return None


# --- timing and rows ----------------------------------------------------------------------

def perf() -> float:
    return time.perf_counter()


def row(target: str, op: str, impl: str, times: list[float], size: int, *, label: str = "",
        cache: str | None = None, detail: str = "", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A measured row: the best of `times` is what counts (least disturbed by the machine)."""
    best = min(times)
    out = {"id": f"{target}/{op}/{impl}", "target": target, "op": op, "impl": impl,
           "label": label or impl, "status": "ok", "seconds": best, "times": times, "bytes": size,
           "gib_per_s": size / best / GiB if best > 0 else None, "cache": cache, "detail": detail}
    if extra:
        out.update(extra)
    return out


def na(target: str, op: str, impl: str, reason: str, *, label: str = "") -> dict[str, Any]:
    """A row that could not be measured, and why."""
    return {"id": f"{target}/{op}/{impl}", "target": target, "op": op, "impl": impl,
            "label": label or impl, "status": "n/a", "seconds": None, "times": [], "bytes": None,
            "gib_per_s": None, "cache": None, "detail": "", "reason": reason}


def short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


# --- page cache ---------------------------------------------------------------------------

def drop_caches() -> bool:
    """Flush dirty pages and drop the page cache (needs root); True if it was dropped."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def cache_state(cfg: Config, target: str) -> str:
    """Drop caches before a read measurement (then `settle_memory`); the label of what the
    read then saw."""
    if target == "s3" and not cfg.s3_embedded:
        return "remote"
    dropped = drop_caches()
    settle_memory(cfg)
    return "cold" if dropped else "warm"


def before_save(cfg: Config) -> None:
    """Right before a timed save: `settle_memory`, then flush what earlier steps left dirty."""
    settle_memory(cfg)
    os.sync()


# --- scratch locations --------------------------------------------------------------------

def run_dir(cfg: Config, target: str, tag: str) -> str:
    """A fresh, unique directory (local path or S3 URL) for one suite."""
    name = f"rckpt-bench-{tag}-{uuid.uuid4().hex[:8]}"
    if target == "local":
        assert cfg.local_dir is not None
        path = os.path.join(cfg.local_dir, name)
        os.makedirs(path, exist_ok=True)
        return path
    assert cfg.s3_url is not None
    return f"{cfg.s3_url.rstrip('/')}/{name}"


def s3fs_options() -> dict[str, Any]:
    """s3fs keyword arguments from the standard AWS environment, as remoteckpt builds them
    (endpoint from ``AWS_ENDPOINT_URL``, no botocore default checksums)."""
    client: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        client["endpoint_url"] = endpoint
        if not os.environ.get("AWS_DEFAULT_REGION"):
            client["region_name"] = "us-east-1"
    return {"client_kwargs": client,
            "config_kwargs": {"request_checksum_calculation": "when_required",
                              "response_checksum_validation": "when_required"}}


_sync_fs: Any = None


def s3_sync_fs() -> Any:
    global _sync_fs
    if _sync_fs is None:
        import s3fs

        _sync_fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3fs_options())
    return _sync_fs


def remove(path: str) -> None:
    """Delete a local directory/file or everything under an S3 URL; never raises."""
    try:
        if path.startswith("s3://"):
            fs = s3_sync_fs()
            fs.invalidate_cache()
            if fs.exists(path):
                fs.rm(path, recursive=True)
        elif os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.unlink(path)
    except Exception as exc:  # cleanup must not hide a measurement
        print(f"warning: could not delete {path}: {short_error(exc)}", file=sys.stderr)


def fsync_tree(path: str) -> None:
    """fsync every file under `path` (and the directories): what makes a save durable."""
    for dirpath, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- optional API surface -----------------------------------------------------------------

def accepted_kwargs(fn: Callable[..., Any], **wanted: Any) -> dict[str, Any] | None:
    """The subset of `wanted` that `fn` names as parameters (None: signature unknown)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    return {k: v for k, v in wanted.items() if k in params}


def accepts(fn: Callable[..., Any], *names: str) -> bool:
    got = accepted_kwargs(fn, **{n: None for n in names})
    return got is not None and len(got) == len(names)


# --- running a suite in a fresh process ---------------------------------------------------

def settle_memory(cfg: Config) -> None:
    """Right before a measurement: touch as much fresh memory as the tensors and push that
    much through the page cache into a file (fsync, unlink), untimed.  On this VM, memory
    freed a few seconds ago (a deleted file's pages, a freed array) costs several times the
    usual to use again (presumably handed back to the host meanwhile); without this, a suite
    whose framework takes seconds to import, or whichever runs first after a quiet spell,
    pays for it alone."""
    scratch = np.ones(cfg.total_bytes, dtype=np.uint8)
    fd, path = tempfile.mkstemp(prefix="rckpt-settle-", dir=cfg.local_dir)
    try:
        view = memoryview(scratch)
        while len(view):
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(path)
    del scratch


def _child(module: str, func: str, args: tuple[Any, ...], conn: Any) -> None:
    try:
        rows = getattr(importlib.import_module(module), func)(*args)
        conn.send(("ok", rows))
    except BaseException as exc:  # the parent reports it as n/a
        conn.send(("error", short_error(exc), traceback.format_exc()))
    finally:
        conn.close()


def run_suite(module: str, func: str, *args: Any, timeout: float) -> tuple[list[dict[str, Any]] | None, str | None]:
    """Run ``module.func(*args)`` in a fresh spawned interpreter: (rows, None) or (None, why)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(module, func, args, child), name=f"bench-{func}")
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            if proc.is_alive():
                proc.terminate()
                return None, f"timed out after {timeout:.0f} s"
            return None, f"process died (exit code {proc.exitcode})"
        try:
            message = parent.recv()
        except EOFError:
            proc.join(10)
            return None, f"process died (exit code {proc.exitcode})"
        if message[0] == "ok":
            return message[1], None
        print(message[2], file=sys.stderr)
        return None, message[1]
    finally:
        parent.close()
        proc.join(30)
        if proc.is_alive():
            proc.terminate()
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


@contextlib.contextmanager
def quiet_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
