"""What a directory holds (`list_checkpoints`) and whether a checkpoint is sound (`verify`)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .. import dtypes
from ..engine import loop
from ..errors import CheckpointError
from ..format.bundle import entry_shape
from ..management.state import CheckpointState, join, read_state
from ..options import DEFAULT_OPTIONS, IOOptions
from ..progress import ProgressCallback, Reporter
from ..reader import CheckpointReader
from ..storage import ObjectInfo, Store, on_store

_DATA = re.compile(r"^(?P<name>[^/]+)\.data-\d{5,}-of-\d{5,}$")
_STEP = re.compile(r"-(\d+)$")


@dataclass(frozen=True)
class CheckpointInfo:
    prefix: str
    name: str
    step: int | None
    bytes: int
    mtime: float
    latest: bool


def list_checkpoints(directory: str | os.PathLike[str], *,
                     storage_options: dict[str, Any] | None = None) -> list[CheckpointInfo]:
    """Committed checkpoints in `directory` (those with an `.index`), oldest first; `latest`
    marks the state file's latest (or, without one, the newest)."""
    text = os.fspath(directory)
    root = text.rstrip("/") if "://" in text else os.path.abspath(text)

    async def listing(store: Store) -> tuple[list[ObjectInfo], CheckpointState | None]:
        infos = await store.list_info()
        try:
            return infos, await read_state(store, root)
        except CheckpointError:
            return infos, None

    infos, state = on_store(root, listing, storage_options)
    sizes: dict[str, int] = {}
    for info in infos:
        if m := _DATA.match(info.key):
            sizes[m.group("name")] = sizes.get(m.group("name"), 0) + info.size
    found = []
    for info in infos:
        if "/" in info.key or not info.key.endswith(".index"):
            continue
        name = info.key[: -len(".index")]
        step = _STEP.search(name)
        found.append((name, info.size + sizes.get(name, 0), info.mtime, int(step.group(1)) if step else None))
    found.sort(key=lambda f: (f[2], -1 if f[3] is None else f[3], f[0]))  # S3 mtimes: 1 s resolution
    latest = state.model_checkpoint_path if state else (found[-1][0] if found else None)
    return [CheckpointInfo(join(root, n), n, step, size, mtime, n == latest) for n, size, mtime, step in found]


@dataclass
class VerifyReport:
    prefix: str
    tensors: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(prefix: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None,
           options: IOOptions = DEFAULT_OPTIONS, progress: ProgressCallback | None = None) -> VerifyReport:
    """Read every tensor of the checkpoint, checking every checksum; collect every problem
    (a damaged tensor does not stop the others from being checked).  Reads in batches that
    fit the memory budget."""
    report = VerifyReport(os.fspath(prefix))
    try:
        reader = CheckpointReader(prefix, storage_options=storage_options, options=options)
    except CheckpointError as exc:
        report.problems.append(str(exc))
        return report
    with reader:
        entries = reader.index.entries
        names = sorted(reader.get_variable_to_shape_map())
        sizes = {}
        for name in names:
            key = name.encode("utf-8", "surrogateescape")
            entry = entries[key]
            if entry.slices:
                sizes[name] = sum(entries[k].size for _, k in reader.index.slice_boxes(key) if k in entries)
            else:
                sizes[name] = entry.size
        total = sum(sizes.values())
        reporter = Reporter(progress, report.prefix)
        batch: list[str] = []
        batch_bytes = 0

        def flush() -> None:
            nonlocal batch, batch_bytes
            try:
                loop.run(reader.read_many(batch))
                report.tensors += len(batch)
            except CheckpointError:
                for name in batch:  # find every bad tensor of the batch
                    try:
                        reader.get_tensor(name)
                        report.tensors += 1
                    except CheckpointError as exc:
                        report.problems.append(str(exc))
            report.bytes += batch_bytes
            reporter.emit("read", report.bytes, total)
            batch, batch_bytes = [], 0

        for name in names:
            batch.append(name)
            batch_bytes += sizes[name]
            if batch_bytes >= options.memory_budget:
                flush()
        if batch:
            flush()
    return report


def describe_tensors(reader: CheckpointReader) -> list[dict[str, Any]]:
    """Rows for `inspect`: name, dtype, shape, bytes, shards, slices."""
    index = reader.index
    rows = []
    for name, shape in sorted(reader.get_variable_to_shape_map().items()):
        key = name.encode("utf-8", "surrogateescape")
        entry = index.entries[key]
        row: dict[str, Any] = {"name": name, "dtype": dtypes.dtype_name(entry.dtype), "shape": shape,
                               "elements": math.prod(entry_shape(entry))}
        if entry.slices:
            boxes = index.slice_boxes(key)
            row["slices"] = [box.spec() for box, _ in boxes]
            row["bytes"] = sum(index.entries[k].size for _, k in boxes if k in index.entries)
            row["shards"] = sorted({index.entries[k].shard_id for _, k in boxes if k in index.entries})
        else:
            row["bytes"] = entry.size
            row["shards"] = [entry.shard_id]
        rows.append(row)
    return rows
