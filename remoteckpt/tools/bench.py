"""`remoteckpt bench [URL]`: how fast remoteckpt saves to and restores from one storage location.

Saves `gib` GiB of float32 tensors (`tensors` arrays of shape [rows, 1024]) with
`remoteckpt.save` to fresh prefixes in a scratch directory under URL, restores each with
`remoteckpt.load` (every CRC32C verified, values compared), `repeat` times; the best run of
each counts.  Everything written is deleted at the end, and URL itself is never removed.

URL is ``s3://bucket/prefix`` (endpoint and credentials from the standard AWS environment), a
local directory or any fsspec URL; without one, a temporary directory.  Local restores read
whatever the page cache still holds of the save just made, as a restore right after a save
would.  Needs nothing beyond remoteckpt; the comparisons with raw I/O, TensorFlow and PyTorch
DCP are the repository's benchmarks (``make bench``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..api import load, save
from ..storage import Store, on_store

GiB = 2**30
COLUMNS = 1024

CLI_DESCRIPTION = """\
Measures how fast remoteckpt saves to and restores from one storage location: saves GIB GiB
of float32 tensors with remoteckpt.save into a fresh scratch directory under URL
(URL/remoteckpt-bench-XXXXXXXXXXXX, printed before the first run), restores each with
remoteckpt.load (every checksum verified, values compared), REPEAT times; the best run of each
counts.  Everything it wrote is deleted at the end; URL itself is never removed, and nothing
else is touched (no system settings, no caches: local restores read whatever the page cache
still holds of the save just made, as a restore right after a save would).

URL is s3://bucket/prefix (endpoint and credentials from the standard AWS environment, or
--endpoint-url and --profile), a local directory or any fsspec URL; without one, a temporary
directory.  The comparisons with raw I/O, TensorFlow and PyTorch DCP are the repository's
benchmarks (make bench)."""
"""`remoteckpt bench --help`'s text: this module's docstring, without markup."""


@dataclass(frozen=True)
class BenchReport:
    """Seconds of every save and restore of `bytes` bytes in `tensors` arrays at `url`."""

    url: str
    bytes: int
    tensors: int
    scratch: str = ""
    """The scratch directory the runs wrote into (removed at the end)."""
    save_seconds: list[float] = field(default_factory=list)
    restore_seconds: list[float] = field(default_factory=list)

    def best(self, op: str) -> float:
        """The fastest run of `op` ("save" or "restore"), in seconds."""
        return min(self.save_seconds if op == "save" else self.restore_seconds)

    def gib_per_s(self, op: str) -> float:
        return self.bytes / GiB / self.best(op)

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "scratch": self.scratch, "bytes": self.bytes, "tensors": self.tensors,
                **{op: {"best_seconds": self.best(op), "gib_per_s": self.gib_per_s(op),
                        "seconds": self.save_seconds if op == "save" else self.restore_seconds}
                   for op in ("save", "restore")}}


def make_tensors(*, gib: float, tensors: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`tensors` float32 arrays of [rows, 1024] adding up to about `gib` GiB (at least one row each)."""
    rows = max(1, int(gib * GiB) // tensors // 4 // COLUMNS)
    rng = np.random.default_rng(seed)
    return {f"model/layer_{i:03d}/kernel": rng.random((rows, COLUMNS), dtype=np.float32) for i in range(tensors)}


def run_bench(url: str | None = None, *, gib: float = 1.0, tensors: int = 32, repeat: int = 2,
              storage_options: dict[str, Any] | None = None,
              log: Callable[[str], None] | None = None) -> BenchReport:
    """Measure `repeat` saves and restores at `url` (None: a temporary directory); `log` receives
    one line per measurement."""
    if gib <= 0 or tensors < 1 or repeat < 1:
        raise ValueError("gib, tensors and repeat must be positive")
    temporary = tempfile.mkdtemp(prefix="remoteckpt-bench-") if url is None else None
    base = temporary or str(url).rstrip("/")
    scratch = f"{base}/remoteckpt-bench-{uuid.uuid4().hex[:12]}"
    data = make_tensors(gib=gib, tensors=tensors)
    report = BenchReport(url=base, bytes=sum(a.nbytes for a in data.values()), tensors=tensors, scratch=scratch)
    if log is not None:
        log(f"writing {report.bytes / GiB:.2f} GiB per run into {scratch} (deleted at the end)")
    try:
        for r in range(repeat):
            prefix = f"{scratch}/model.ckpt-{r}"
            start = time.perf_counter()
            save(data, prefix, storage_options=storage_options)
            report.save_seconds.append(time.perf_counter() - start)
            start = time.perf_counter()
            restored = load(prefix, storage_options=storage_options)
            report.restore_seconds.append(time.perf_counter() - start)
            if any(not np.array_equal(restored[name], array) for name, array in data.items()):
                raise AssertionError(f"{prefix}: the restored tensors differ from the saved ones")
            del restored
            if log is not None:
                log(f"run {r + 1}/{repeat}: save {report.save_seconds[-1]:.3f} s, "
                    f"restore {report.restore_seconds[-1]:.3f} s")
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            remove_all(scratch, storage_options)
    return report


def remove_all(directory: str, storage_options: dict[str, Any] | None = None) -> None:
    """Delete every object under `directory` (a local directory too, once empty)."""

    async def work(store: Store) -> None:
        for key in await store.list(""):
            await store.delete(key)

    on_store(directory, work, storage_options)
    if "://" not in directory or directory.startswith("file://"):
        shutil.rmtree(directory.removeprefix("file://"), ignore_errors=True)


def format_report(report: BenchReport) -> str:
    runs = len(report.save_seconds)
    lines = [f"{report.bytes / GiB:.2f} GiB in {report.tensors} tensors at {report.url} "
             f"(best of {runs} run{'s' if runs > 1 else ''})"]
    for op, label in (("save", "remoteckpt.save"), ("restore", "remoteckpt.load")):
        times = report.save_seconds if op == "save" else report.restore_seconds
        lines.append(f"{op:<8} {label:<16} {report.best(op):>8.3f} s  {report.gib_per_s(op):>7.2f} GiB/s   "
                     f"runs: {' '.join(f'{t:.3f}' for t in times)}")
    return "\n".join(lines)
