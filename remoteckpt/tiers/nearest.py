"""Reading a checkpoint from the nearest tier: what the local tier holds from local disk, the
rest from the remote prefix by ranged reads.

Opening remote `PREFIX` with a local tier (`open_nearest`):
  1. the tier's copy counts only if its record names `PREFIX` (`layout`)
  2. both indexes are fetched (the remote one's absence is no error while the local one is
     there: a checkpoint not drained yet); when both exist their bytes must be equal (a
     drain copies the index byte for byte), else the local copy is another checkpoint and is
     ignored; an index that does not decode (a flipped bit) is ignored for the other
  3. each data file is read from local disk if the tier holds it with the remote size (or
     the remote has none), else from the remote prefix; a tier holding nothing of the
     checkpoint (a replaced node) leaves a plain remote read, which lists nothing
A durable local copy (its marker: the remote index was committed from it) whose data files
are all there is read at once: the remote index is fetched in the background and compared
after the first read (`NearestStore.confirm`); should it differ (the remote prefix replaced by
another save since), the reader switches to the remote checkpoint and reads again.
Every byte read is verified against the index's CRCs as usual (`engine.read`).  A read that
fails on a local file (damaged, truncated, gone) makes the reader drop the local tier and
read everything again from the remote prefix (`NearestStore.fall_back`), when there is one:
a replaced node or a flipped bit costs a slower restore, never a failed one.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
from collections.abc import Sequence
from typing import Any

from ..errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError, StorageError
from ..format.bundle import BundleIndex, data_filename, decode_index_bytes, index_filename
from ..options import IOOptions
from ..storage import ObjectInfo, ObjectWriter, Store, StoreCapabilities, open_store, split_prefix
from ..storage.base import ScatterResult, StoredObject
from ..storage.local import LocalStore
from .layout import DURABLE, RECORD, LocalTier, local_prefix, read_record

log = logging.getLogger("remoteckpt")


class NearestStore(Store):
    """Read-only store over a local tier and a remote directory: every key is read from the
    store it was routed to when the checkpoint was opened (`routes`), else the remote one."""

    def __init__(self, local: Store | None, remote: Store, routes: dict[str, Store],
                 check: tuple[asyncio.Task[bytes | None], bytes] | None = None, *, listed: bool = True) -> None:
        self.local, self.remote, self.routes = local, remote, routes
        self.listed = listed
        """Whether the data files were listed when the checkpoint was opened (else every read
        pins its file's version as a plain reader's does)."""
        self.url = remote.url
        self.capabilities = StoreCapabilities(conditional_writes=False)
        self._check = check  # (the remote index being fetched, the local index's bytes)

    async def confirm(self) -> bytes | None:
        """The remote index's bytes if they differ from the local index the checkpoint was
        opened with (checked in the background, `open_nearest`'s fast path), else None.  A
        remote tier out of reach, without the index any more (retired), or with an index that
        does not decode, confirms nothing against a durable local copy: None."""
        if self._check is None:
            return None
        task, mine = self._check
        self._check = None
        try:
            theirs = await task
        except CheckpointError as exc:
            log.warning("%s: could not compare with the remote index (%s); the durable local copy is read",
                        self.remote.url, exc)
            return None
        if theirs is None or theirs == mine:
            return None
        try:
            decode_index_bytes(theirs)
        except CorruptCheckpointError as exc:  # ignored for the local one, which decodes
            log.warning("%s: the remote index does not decode (%s); the durable local copy is read",
                        self.remote.url, exc)
            return None
        return theirs

    @property
    def uses_local(self) -> bool:
        return self.local is not None and any(s is self.local for s in self.routes.values())

    def _on(self, key: str) -> Store:
        return self.routes.get(key, self.remote)

    def describe(self, key: str) -> str:
        return self._on(key).describe(key)

    async def head(self, key: str) -> ObjectInfo | None:
        return await self._on(key).head(key)

    async def get_object(self, key: str, *, max_size: int | None = None) -> StoredObject:
        return await self._on(key).get_object(key, max_size=max_size)

    async def read_scatter(self, key: str, start: int, targets: Sequence[tuple[int, memoryview]], *,
                           etag: str | None = None) -> ScatterResult:
        return await self._on(key).read_scatter(key, start, targets, etag=etag)

    def writer(self, key: str, *, exclusive: bool = False, if_match: str | None = None,
               size_hint: int | None = None) -> ObjectWriter:
        raise StorageError(f"{self.describe(key)}: a checkpoint opened from its nearest tier is read-only")

    async def delete(self, key: str, *, if_match: str | None = None) -> bool:
        raise StorageError(f"{self.describe(key)}: a checkpoint opened from its nearest tier is read-only")

    async def list(self, prefix: str = "") -> builtins.list[str]:
        return [i.key for i in await self.list_info(prefix)]

    async def list_info(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        found: dict[str, ObjectInfo] = {}
        for key, store in self.routes.items():
            if key.startswith(prefix):
                info = await store.head(key)
                if info is not None:
                    found[key] = info
        return [found[k] for k in sorted(found)]

    async def fall_back(self, data_files: dict[str, ObjectInfo], name: str) -> None:
        """Route everything to the remote store, and list its data files into `data_files`
        (the reader's, in place).  Raises the `CheckpointNotFoundError` of a checkpoint the
        remote prefix does not hold."""
        if self._check is not None:
            self._check[0].cancel()
            self._check = None
        if not await self.remote.exists(index_filename(name)):
            raise CheckpointNotFoundError(f"{self.remote.describe(index_filename(name))} does not exist: the "
                                          "checkpoint is on the local tier only, and there it is damaged")
        self.routes = {}
        listed = {i.key: i for i in await self.remote.list_info(f"{name}.data-")}
        data_files.clear()
        data_files.update(listed)

    async def close(self) -> None:
        if self._check is not None:
            self._check[0].cancel()
        if self.local is not None:
            await self.local.close()
        await self.remote.close()


async def _index(store: Store | None, key: str) -> tuple[bytes | None, BundleIndex | None]:
    """The index's bytes and decoding (None, None where absent; bytes and None if damaged)."""
    if store is None:
        return None, None
    try:
        data = await store.get(key, max_size=2**30)
    except CheckpointNotFoundError:
        return None, None
    try:
        return data, decode_index_bytes(data)
    except CorruptCheckpointError as exc:
        log.warning("%s is damaged (%s); reading the other tier's", store.describe(key), exc)
        return data, None


async def _remote_index(store: Store, key: str) -> bytes | None:
    try:
        return await store.get(key, max_size=2**30)
    except CheckpointNotFoundError:
        return None


async def open_nearest(prefix: str, tier: LocalTier, storage_options: dict[str, Any] | None, options: IOOptions,
                       data_files: dict[str, ObjectInfo]) -> tuple[NearestStore, BundleIndex]:
    """Open remote checkpoint `prefix` from its nearest tier (the module docstring): the
    store and the index; `data_files` (the reader's) is filled with the listed data files."""
    local = local_prefix(tier, prefix)
    l_dir, name = split_prefix(local)
    r_dir, r_name = split_prefix(prefix)
    assert name == r_name, (local, prefix)
    remote = open_store(r_dir, storage_options, options)
    here: Store | None = None
    try:
        try:
            record = read_record(local + RECORD)
        except CorruptCheckpointError:
            record = None
        if record is not None and record["remote"] == prefix and os.path.isdir(l_dir):
            here = LocalStore(l_dir)
        key = index_filename(name)
        local_bytes, local_index = await _index(here, key)
        if here is not None and local_bytes is not None and local_index is not None and os.path.exists(
                local + DURABLE):
            # Durable: the remote index was committed from these bytes.  The local files are
            # read at once; the remote index is compared in the background (`confirm`).
            held = {i.key: i for i in await here.list_info(f"{name}.data-")}
            needed = {data_filename(name, s, local_index.num_shards) for s in range(local_index.num_shards)}
            if needed <= set(held):
                data_files.clear()
                data_files.update({k: held[k] for k in needed})
                routes: dict[str, Store] = {k: here for k in [*needed, key]}
                task = asyncio.ensure_future(_remote_index(remote, key))
                return NearestStore(here, remote, routes, (task, local_bytes)), local_index
        try:
            remote_bytes, remote_index = await _index(remote, key)
        except CheckpointError as exc:
            if local_index is None:
                raise
            log.warning("%s: %s; reading the local tier's copy", remote.describe(key), exc)
            remote_bytes, remote_index = None, None
        if remote_index is not None and local_index is not None and remote_bytes != local_bytes:
            # Both decode and differ (an index that does not decode is ignored for the other one)
            log.info("%s holds another checkpoint than %s; reading the remote one", here and here.describe(key),
                     prefix)
            local_index = None
        if local_index is None and remote_index is None:
            if remote_bytes is not None:
                raise CorruptCheckpointError(f"{remote.describe(key)}: the index does not decode")
            missing = CheckpointNotFoundError(f"checkpoint not found: {remote.describe(key)} does not exist"
                                              + (f", nor {here.describe(key)}" if here is not None else ""))
            missing.index_missing = True  # type: ignore[attr-defined]
            raise missing
        if local_index is None:  # nothing of it here: a plain remote read, which lists nothing
            if here is not None:
                await here.close()
            assert remote_index is not None
            data_files.clear()
            return NearestStore(None, remote, {key: remote}, listed=False), remote_index
        assert here is not None
        here_files = {i.key: i for i in await here.list_info(f"{name}.data-")}
        there_files = {i.key: i for i in await remote.list_info(f"{name}.data-")} if remote_bytes is not None else {}
        routes = {}
        data_files.clear()
        for file in sorted(set(here_files) | set(there_files)):
            mine, theirs = here_files.get(file), there_files.get(file)
            if mine is not None and (theirs is None or theirs.size == mine.size):
                routes[file], data_files[file] = here, mine
            elif theirs is not None:
                routes[file], data_files[file] = remote, theirs
        index = local_index if local_index is not None else remote_index
        routes[key] = here if local_index is not None else remote
        assert index is not None
        return NearestStore(here, remote, routes), index
    except BaseException:
        if here is not None:
            await here.close()
        await remote.close()
        raise
