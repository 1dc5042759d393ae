"""What a directory holds (`list_checkpoints`) and whether a checkpoint is sound (`verify`)."""

from __future__ import annotations

import asyncio
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .. import dtypes
from ..engine import loop
from ..errors import CheckpointError, CheckpointNotFoundError
from ..format.bundle import entry_shape, index_filename
from ..locate import DIRECTORY_CHECKPOINT
from ..management.state import CheckpointState, join, read_state
from ..options import DEFAULT_OPTIONS, IOOptions
from ..progress import ProgressCallback, Reporter
from ..reader import CheckpointReader
from ..storage import ObjectInfo, Store, on_store
from ..storage.errors import translate
from ..storage.s3 import S3Store

_DATA = re.compile(r"^(?P<name>[^/]+)\.data-\d{5,}-of-\d{5,}$")
_STEP = re.compile(r"-(\d+)$")
_PROBES = 32
"""Sub-directories looked into at once, for directory-style checkpoints (``step-100/ckpt``)."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One committed checkpoint of a directory.  `name` is how the directory names it:
    ``model.ckpt-100`` (TensorFlow's prefix form) or ``step-100/`` (a directory-style id,
    the checkpoint ``step-100/ckpt``); `prefix` is its full prefix."""

    prefix: str
    name: str
    step: int | None
    bytes: int
    mtime: float
    latest: bool


@dataclass(frozen=True)
class Listing:
    """What `list_directory` found: sub-directories holding something else than one
    directory-style checkpoint (``run1/``, as ``aws s3 ls`` lists them as ``PRE``), and the
    committed checkpoints, oldest first."""

    directory: str
    prefixes: list[str]
    checkpoints: list[CheckpointInfo]


def human_size(n: int) -> str:
    """Bytes in binary units, never rounded down to zero: ``224 B``, ``1.0 KiB``, ``351.6 KiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _root(directory: str | os.PathLike[str]) -> str:
    text = os.fspath(directory)
    return text.rstrip("/") if "://" in text else os.path.abspath(text)


async def top_level(store: Store, root: str) -> tuple[list[ObjectInfo], list[str]] | None:
    """Objects directly in the store's directory and the names of its sub-directories, or None
    when there is no such directory (nothing under it)."""
    if "://" not in root or root.startswith("file://"):
        path = root.removeprefix("file://")

        def scan() -> tuple[list[ObjectInfo], list[str]] | None:
            if not os.path.isdir(path):
                return None
            files, dirs = [], []
            with os.scandir(path) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir():
                            dirs.append(entry.name)
                        elif entry.is_file():
                            st = entry.stat()
                            files.append(ObjectInfo(entry.name, st.st_size, st.st_mtime))
                    except FileNotFoundError:
                        continue  # removed while listing
            return files, sorted(dirs)

        return await asyncio.to_thread(scan)
    if isinstance(store, S3Store):  # one delimited listing, however deep the tree below
        params: dict[str, Any] = {"Bucket": store.bucket, "Prefix": store.object_key(""), "Delimiter": "/"}
        files, dirs = [], []
        base = len(store.object_key(""))
        try:
            while True:
                page = await store.client.call("list_objects_v2", **params)
                for item in page.get("Contents", []):
                    key = str(item["Key"])[base:]
                    if key:  # not the directory's own marker
                        files.append(ObjectInfo(key, int(item.get("Size") or 0),
                                                item["LastModified"].timestamp() if item.get("LastModified") else 0.0))
                dirs += [str(p["Prefix"])[base:].rstrip("/") for p in page.get("CommonPrefixes", [])]
                if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
                    break
                params["ContinuationToken"] = page["NextContinuationToken"]
        except Exception as exc:
            raise translate(exc, store.url) from exc
        if not files and not dirs:
            return None
        return files, sorted(d for d in dirs if d)
    infos = await store.list_info()  # other filesystems: the whole tree, split here
    if not infos:
        return None
    return [i for i in infos if "/" not in i.key], sorted({i.key.split("/", 1)[0] for i in infos if "/" in i.key})


def list_directory(directory: str | os.PathLike[str], *,
                   storage_options: dict[str, Any] | None = None) -> Listing:
    """The committed checkpoints in `directory` (those with an `.index`, and directory-style
    ones, ``SUB/ckpt.index``) and its other sub-directories.  `latest` marks the state file's
    latest (or, without one, the newest).  A directory (or bucket) that does not exist, or
    holds nothing, is `CheckpointNotFoundError`; an empty local directory is an empty listing."""
    root = _root(directory)

    async def listing(store: Store) -> tuple[tuple[list[ObjectInfo], list[str]] | None, dict[str, list[ObjectInfo]],
                                             CheckpointState | None]:
        top = await top_level(store, root)
        if top is None:
            return None, {}, None
        slots = asyncio.Semaphore(_PROBES)

        async def probe(sub: str) -> tuple[str, list[ObjectInfo]]:
            async with slots:
                return sub, await store.list_info(f"{sub}/{DIRECTORY_CHECKPOINT}.")

        inside = dict(await asyncio.gather(*(probe(d) for d in top[1])))
        try:
            state = await read_state(store, root)
        except CheckpointError:
            state = None
        return top, inside, state

    top, inside, state = on_store(root, listing, storage_options)
    if top is None:
        raise CheckpointNotFoundError(f"{root}: no such directory" if "://" not in root
                                      else f"{root}/: nothing there (no object's key starts with it)")
    files, dirs = top
    found: list[tuple[str, str, int, float, int | None]] = []  # (name, stored prefix name, bytes, mtime, step)
    sizes: dict[str, int] = {}
    for info in files:
        if m := _DATA.match(info.key):
            sizes[m.group("name")] = sizes.get(m.group("name"), 0) + info.size
    for info in files:
        if info.key.endswith(".index"):
            name = info.key[: -len(".index")]
            step = _STEP.search(name)
            found.append((name, name, info.size + sizes.get(name, 0), info.mtime, int(step.group(1)) if step else None))
    prefixes = []
    for sub in dirs:
        objects = {i.key: i for i in inside.get(sub, [])}
        index = objects.get(f"{sub}/{index_filename(DIRECTORY_CHECKPOINT)}")
        if index is None:
            prefixes.append(f"{sub}/")
            continue
        data = sum(i.size for k, i in objects.items() if _DATA.match(k.rsplit("/", 1)[1])
                   and k.rsplit("/", 1)[1].startswith(f"{DIRECTORY_CHECKPOINT}.data-"))
        step = _STEP.search(sub)
        found.append((f"{sub}/", f"{sub}/{DIRECTORY_CHECKPOINT}", index.size + data, index.mtime,
                      int(step.group(1)) if step else None))
    found.sort(key=lambda f: (f[3], -1 if f[4] is None else f[4], f[0]))  # S3 mtimes: 1 s resolution
    latest = state.model_checkpoint_path if state else (found[-1][1] if found else None)
    return Listing(root, prefixes, [CheckpointInfo(join(root, stored), name, step, size, mtime, stored == latest)
                                    for name, stored, size, mtime, step in found])


def list_checkpoints(directory: str | os.PathLike[str], *,
                     storage_options: dict[str, Any] | None = None) -> list[CheckpointInfo]:
    """Committed checkpoints in `directory`, oldest first (`list_directory`'s)."""
    return list_directory(directory, storage_options=storage_options).checkpoints


@dataclass
class VerifyReport:
    """What `verify` found: `tensors` of `tensors_total` tensors read and verified, `bytes` of
    `bytes_total` stored bytes (the bytes of the tensors verified: those of a damaged or
    missing tensor are not counted), and every problem."""

    prefix: str
    tensors: int = 0
    bytes: int = 0
    tensors_total: int = 0
    bytes_total: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(prefix: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None,
           options: IOOptions = DEFAULT_OPTIONS, progress: ProgressCallback | None = None) -> VerifyReport:
    """Read every tensor of the checkpoint, checking every checksum; collect every problem
    (a damaged tensor does not stop the others from being checked).  Reads in batches that
    fit the memory budget.  `prefix` is any checkpoint id a reader takes (`remoteckpt.locate`);
    a checkpoint that is not there raises `CheckpointNotFoundError`, an unreadable index is a
    problem."""
    report = VerifyReport(os.fspath(prefix))
    try:
        reader = CheckpointReader(prefix, storage_options=storage_options, options=options)
    except CheckpointNotFoundError:
        raise
    except CheckpointError as exc:
        report.problems.append(str(exc))
        return report
    with reader:
        report.prefix = reader.prefix
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
        report.tensors_total = len(names)
        report.bytes_total = total = sum(sizes.values())
        reporter = Reporter(progress, report.prefix)
        batch: list[str] = []
        batch_bytes = 0
        seen = 0

        def flush() -> None:
            nonlocal batch, batch_bytes, seen
            try:
                loop.run(reader.read_many(batch))
                report.tensors += len(batch)
                report.bytes += batch_bytes
            except CheckpointError:
                for name in batch:  # find every bad tensor of the batch
                    try:
                        reader.get_tensor(name)
                        report.tensors += 1
                        report.bytes += sizes[name]
                    except CheckpointError as exc:
                        report.problems.append(str(exc))
            seen += batch_bytes
            reporter.emit("read", seen, total)
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
