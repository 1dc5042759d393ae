"""The local tier: a directory on fast local disk holding plain TensorFlow checkpoints, each
with two small records beside it that tie it to its remote prefix.

    TIER/NAME.index, NAME.data-RRRRR-of-NNNNN   the checkpoint, committed by the save protocol
    TIER/NAME.tier       {"remote": PREFIX, "time": T, "overwrite": B}, written (atomically)
                         BEFORE the local save starts: a crash leaves a record without an
                         index (nothing to drain; `gc` removes it), never an index without one
    TIER/NAME.durable    {"remote": PREFIX, "time": T}, written AFTER the remote index is
                         committed (and, when a drain finds it committed already, after its
                         bytes are found equal to the local index): only then is the
                         checkpoint reported durable; on a per-host tier, with
                         "sent": the data files this host's drains wrote, and their versions
                         (the next incremental drain's base: `sent`)
    TIER/NAME.drains     {"rank": R, "shards": [N]}, on a per-host tier of a DCP job: the data
                         files that worker R drains beside its own (the coordinator's
                         metadata file), for a restarted job (`tiers.collective`)
    TIER/NAME.lock       empty: the host's lock of the checkpoint (`hostlock`)
    TIER/checkpoint      TensorFlow's state file, of the local tier's checkpoints

``NAME`` is the remote checkpoint's name as `remoteckpt cp` keeps it in a folder
(``model.ckpt-1000``; a directory-style ``step-100/ckpt`` keeps its directory).  TensorFlow
ignores the two records: every tier holds checkpoints that `tf.train.load_checkpoint` opens.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from ..errors import CorruptCheckpointError
from ..format.bundle import index_filename
from ..locate import name_to_keep
from ..management.delete import delete_checkpoint
from ..protocol.layout import DATA_FILE
from ..storage.local import LocalStore
from .hostlock import host_locked

RECORD = ".tier"
DURABLE = ".durable"
DRAINS = ".drains"

DEFAULT_KEEP = 2
"""Checkpoints kept on the local tier once durable: the newest for a fast restart, and the one
before it in case the newest turns out bad; more belong to the remote tier's retention."""

FULL_TIMEOUT = 600.0
"""Seconds a save waits for drains to make room under `max_bytes` before it fails: a drain of
a checkpoint of tens of GB to S3 takes minutes."""


@dataclass(frozen=True, kw_only=True)
class LocalTier:
    """A local tier (``local_tier=`` takes this or just its path).

    `keep`: durable checkpoints kept locally (the newest ones; a checkpoint not yet durable
    is never evicted).  `max_bytes`: cap on the bytes of the tier's checkpoints; a save that
    would exceed it evicts durable checkpoints, oldest first, then waits up to `full_timeout`
    for drains in flight to make more durable, then raises `LocalTierFullError`.
    `resume`: whether a restarted job (a `Saver` adopting the tier, `resume_drains`) drains
    the checkpoints left committed locally but not durable; if false they are deleted.
    `per_host`: every host has a tier of its own at `path` (its local disk), holding the data
    files of its own workers only; the workers of a save meet through the remote store and
    each drains its own data file (`tiers.hosts`).  Without it, the workers of a save share
    the one directory (the processes of one host, or a filesystem every host sees)."""

    path: str
    keep: int = DEFAULT_KEEP
    max_bytes: int | None = None
    full_timeout: float = FULL_TIMEOUT
    resume: bool = True
    per_host: bool = False

    def __post_init__(self) -> None:
        if "://" in self.path:
            raise ValueError(f"a local tier is a local directory, not {self.path!r}")
        object.__setattr__(self, "path", os.path.abspath(os.fspath(self.path)))
        if self.keep < 1:
            raise ValueError("keep must be at least 1")
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise ValueError("max_bytes must be positive")


TierLike = LocalTier | str | os.PathLike[str]


def as_tier(value: TierLike | None) -> LocalTier | None:
    """``local_tier=`` as a `LocalTier` (None stays None)."""
    if value is None or isinstance(value, LocalTier):
        return value
    return LocalTier(path=os.fspath(value))


def name_in_tier(remote: str) -> str:
    """The checkpoint's name in the tier for remote prefix `remote` (see the module docstring)."""
    return name_to_keep(remote)


@dataclass(frozen=True)
class TierCheckpoint:
    """One checkpoint of the local tier, as its files say now."""

    tier: LocalTier
    name: str
    remote: str
    time: float
    overwrite: bool
    committed: bool
    durable: bool
    size: int

    @property
    def local(self) -> str:
        return os.path.join(self.tier.path, self.name)


def local_prefix(tier: LocalTier, remote: str) -> str:
    return os.path.join(tier.path, name_in_tier(remote))


def record_bytes(remote: str, *, overwrite: bool = False, stamp: float | None = None) -> bytes:
    return json.dumps({"remote": remote, "time": time.time() if stamp is None else stamp,
                       "overwrite": overwrite}).encode()


def read_record(path: str) -> dict[str, Any] | None:
    """A record's fields, None if there is no such file; a damaged one raises naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read(64 * 1024)
    except FileNotFoundError:
        return None
    try:
        record = json.loads(data)
        if not isinstance(record, dict) or not isinstance(record.get("remote"), str):
            raise ValueError("no remote prefix")
        return record
    except ValueError as exc:
        raise CorruptCheckpointError(f"{path} is not a local tier record: {exc}") from None


def _size(tier: LocalTier, name: str) -> int:
    directory, base = os.path.split(os.path.join(tier.path, name))
    total = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.startswith(base + ".") and (entry.name == base + ".index" or DATA_FILE.match(entry.name)):
            try:
                total += entry.stat().st_size
            except FileNotFoundError:
                pass
    return total


def checkpoint(tier: LocalTier, name: str) -> TierCheckpoint | None:
    """Checkpoint `name` of the tier (None if it has no record)."""
    prefix = os.path.join(tier.path, name)
    record = read_record(prefix + RECORD)
    if record is None:
        return None
    return TierCheckpoint(tier, name, record["remote"], float(record.get("time", 0.0)),
                          bool(record.get("overwrite", False)), os.path.exists(index_filename(prefix)),
                          os.path.exists(prefix + DURABLE), _size(tier, name))


def checkpoints(tier: LocalTier) -> list[TierCheckpoint]:
    """Every checkpoint of the tier with a record, oldest first (by the record's time)."""
    found = []
    if not os.path.isdir(tier.path):
        return []
    for dirpath, _, files in os.walk(tier.path):
        for file in files:
            if file.endswith(RECORD) and ".tempstate" not in file:
                name = os.path.relpath(os.path.join(dirpath, file[: -len(RECORD)]), tier.path)
                try:
                    one = checkpoint(tier, name)
                except CorruptCheckpointError:
                    continue  # a damaged record: its checkpoint is not the tier's to manage
                if one is not None:
                    found.append(one)
    return sorted(found, key=lambda c: (c.time, c.name))


async def delete_local(tier: LocalTier, name: str) -> None:
    """Remove checkpoint `name` from the tier: index, data files, workers' tables and drains
    (per-host tiers), marker, record, and a per-host tier's host lock."""
    store = LocalStore(tier.path)
    path = os.path.join(tier.path, name)
    try:
        # not while a worker adds to its marker (per-host tiers: `sent`); a shared tier has no lock
        async with host_locked(path) if tier.per_host else contextlib.nullcontext() as lock:
            await delete_checkpoint(store, name)
            for key in await store.list(name + ".table-"):
                await store.delete(key)
            await store.delete(name + DURABLE)
            await store.delete(name + DRAINS)
            await store.delete(name + RECORD)
            if lock is not None:
                lock.unlink()
    finally:
        await store.close()


def extra_shards(local: str, rank: int) -> list[int]:
    """The data files of checkpoint `local` (a per-host tier's) that worker `rank` drains beside
    its own (`DRAINS`): none unless this worker's process wrote them as the DCP coordinator."""
    try:
        with open(local + DRAINS, "rb") as f:
            record = json.loads(f.read(64 * 1024))
        if not isinstance(record, dict):
            raise ValueError("not an object")
        shards = [int(s) for s in record.get("shards", [])] if record.get("rank") == rank else []
    except FileNotFoundError:
        return []
    except (ValueError, TypeError) as exc:
        raise CorruptCheckpointError(f"{local + DRAINS} is not a record of the data files its host drains: "
                                     f"{exc}") from None
    return shards
