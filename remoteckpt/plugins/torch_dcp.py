"""PyTorch Distributed Checkpoint (`torch.distributed.checkpoint`, "DCP") storage on remoteckpt.

`StorageWriter` (here) and `StorageReader` (`torch_dcp_reader`, re-exported here) implement
DCP's storage interfaces so that

    dcp.save(state_dict, storage_writer=StorageWriter("s3://bucket/run/step-100"))
    dcp.load(state_dict, storage_reader=StorageReader("s3://bucket/run/step-100"))

write and read a TensorFlow tensor bundle at that prefix (``step-100.index`` +
``step-100.data-SSSSS-of-NNNNN``), readable by `tf.train.load_checkpoint` and
`remoteckpt.CheckpointReader`, with tensor names equal to the state_dict's FQNs.

How DCP's save sequence maps onto the bundle (N ranks, N + 1 data files):

    prepare_global_plan  (coordinator)  claim the prefix for a fresh attempt
                                        (`protocol.claim`: of two jobs racing for it, one
                                        goes on; a lease renewed in the background); refuse
                                        an existing checkpoint (or retire it, if overwriting)
                                        and clear a dead attempt's leftovers; give rank r
                                        data file r of N + 1
    write_data           (every rank)   stream the rank's items into PREFIX.data-r-of-(N+1)
                                        (final name, create-only, durable on return); its
                                        index table and the file's identity ride back to
                                        the coordinator in the WriteResults
    finish               (coordinator)  DCP's Metadata, as JSON, into the string tensor
                                        ``_DCP_METADATA`` of data file N; fence the N + 1
                                        data files (`protocol.fence`); merge the tables;
                                        commit PREFIX.index (create-only); release the claim

The process group does the meeting that `remoteckpt.save` does through storage, so there is
no staging, no polling, and the index (the commit) covers DCP's metadata too: a checkpoint
exists for TensorFlow and for DCP at the same instant, or for neither.

Chunks of sharded tensors (DTensor, ShardedTensor, FSDP) become TensorFlow slices of one
tensor; byte items (non-tensor objects DCP serializes) become string scalars
``_DCP_BYTES/<fqn>``.  Loading: see `torch_dcp_reader`.  Dtypes and tensor conversions are
in `torch_tensors`; what the writer and reader share is in `torch_common`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import uuid
import weakref
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItem, WriteItemType
from torch.distributed.checkpoint.storage import StorageWriter as _DCPStorageWriter
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from ..engine import loop
from ..engine.incremental import Incremental
from ..engine.plan import BundlePlan, Slice
from ..errors import (
    CheckpointBusyError,
    CheckpointError,
    CheckpointExistsError,
    InvalidTensorsError,
    ShapeMismatchError,
)
from ..format.bundle import index_filename
from ..locate import for_writing
from ..management.state import previous_checkpoint
from ..options import DEFAULT_OPTIONS, IOOptions
from ..protocol import claim as claims
from ..protocol import coordinator, fence
from ..protocol.commit import DEFAULT_COMMIT, CommitProtocol
from ..protocol.layout import SaveLayout
from ..protocol.lease import Lease
from ..protocol.records import DataIdentity
from ..protocol.save import commit_tables, refuse_unsafe_store
from ..protocol.worker import table_bytes, write_part
from ..storage import Store, open_store, split_prefix
from ..storage.local import LocalStore
from ..tiers import collective, drain, hosts
from ..tiers import save as tiered
from ..tiers.layout import TierLike, as_tier, local_prefix
from .torch_common import BYTES_PREFIX, DCP_VERSION, METADATA_TENSOR, AtPrefix, refuse_credentials
from .torch_dcp_reader import StorageReader
from .torch_metadata import FORMAT, encode_metadata
from .torch_tensors import numel, tensor_to_numpy

__all__ = ["StorageWriter", "StorageReader", "METADATA_TENSOR", "BYTES_PREFIX"]

log = logging.getLogger("remoteckpt")


def _check_name(fqn: str) -> None:
    if fqn == METADATA_TENSOR or fqn.startswith(BYTES_PREFIX):
        raise InvalidTensorsError(f"state_dict key {fqn!r} is reserved by remoteckpt's DCP storage")


# --- save ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Written:
    """`WriteResult.storage_data`: where an item went.  `table` (the rank's index table, one
    object shared by all of the rank's results, so sent once) is how the coordinator learns
    each data file's entries, and `data` which version of the file the rank wrote."""

    tensor: str
    shard_id: int
    table: bytes
    data: DataIdentity | None = None


@dataclasses.dataclass
class _Held:
    """The claim a writer holds between prepare_global_plan and finish: its lease renews on
    the store opened for it."""

    store: Store
    lease: Lease
    forget: weakref.finalize


_held_by_prefix: dict[str, _Held] = {}
"""The claim of the last DCP save of each prefix in this process.  DCP saves of one process
run one after another (they are collectives): when a new one starts, an earlier one still
holding the prefix has ended (it failed on some rank, and DCP never called its `finish`)."""


def _abandon(lease: Lease) -> None:
    """A writer holding `lease` was collected: stop renewing, let later saves take it over."""
    claims.forget(lease)
    try:
        loop.submit(lease.stop())
    except RuntimeError:  # interpreter shutting down
        pass


async def _exists_or_unknown(store: Any, key: str) -> bool:
    """Whether `key` exists; False when that cannot be told (a failed check must not replace
    the error it was asked to refine)."""
    try:
        return await store.exists(key)
    except CheckpointError:
        return False


class StorageWriter(AtPrefix, _DCPStorageWriter):
    """Writes a DCP checkpoint as a TensorFlow tensor bundle at `prefix` (``PREFIX.index`` +
    ``PREFIX.data-*``; local path, ``file://``, ``s3://`` or any fsspec URL).  A committed
    checkpoint at `prefix` is never replaced unless `overwrite`.  `storage_options` and
    `options` are as for `remoteckpt.save`; so is `incremental` (every rank copies its tensors
    unchanged since the latest checkpoint the prefix directory's state file names), or the
    name of the base checkpoint in the prefix's directory.  Requires DCP's collectives (the
    default); ``use_collectives=False`` is refused.  With `local_tier` the checkpoint is
    committed on that local directory (shared by the ranks of one host) and drained to
    `prefix` in the background (`remoteckpt.wait_durable(prefix)` on the coordinator;
    docs/tiered.md).  With ``LocalTier(per_host=True)`` every host has a tier of its own: each
    rank's data file goes to its host's tier, the coordinator's DCP metadata file to its own,
    the local commit is ``.tiers/NAME.index`` in the prefix's directory, and every rank drains
    its own data file in the background (`remoteckpt.wait_durable(prefix)` on any rank;
    `tiers.collective`); there `incremental` (true, or a name: either way) copies on each host
    from its own latest checkpoint, and each drain from the remote directory's latest."""

    def __init__(self, prefix: str | os.PathLike[str] | None = None, *, overwrite: bool = False,
                 storage_options: dict[str, Any] | None = None, options: IOOptions = DEFAULT_OPTIONS,
                 commit: CommitProtocol = DEFAULT_COMMIT, incremental: bool | str = False,
                 local_tier: TierLike | None = None) -> None:
        super().__init__()
        self.local_tier = as_tier(local_tier)
        self.prefix = None if prefix is None else os.fspath(prefix)
        self.overwrite = overwrite
        self.storage_options = storage_options
        self.options = options
        self.commit = commit
        self.incremental = incremental
        self.save_id = uuid.uuid4().hex
        self.is_coordinator = False
        self.rank: int | None = None
        self._shard = 0  # this rank's data file, as the coordinator's plan numbered it
        self._claim: _Held | None = None

    def __getstate__(self) -> dict[str, Any]:
        refuse_credentials(self)
        state = dict(self.__dict__)
        state["_claim"] = None  # held by this process's writer, not by a copy
        return state

    # --- DCP's interface -------------------------------------------------------------------

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id:
            self.prefix = os.fspath(checkpoint_id)
        self.save_id = uuid.uuid4().hex

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.prefix, save_id=self.save_id)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        if self.prefix is None:
            raise ValueError("remoteckpt.torch.StorageWriter needs a checkpoint prefix "
                             "(StorageWriter(prefix) or dcp.save(..., checkpoint_id=prefix))")
        if kwargs.get("use_collectives", True) is False:
            raise NotImplementedError("remoteckpt.torch.StorageWriter commits one index for all ranks "
                                      "and needs DCP's collectives (use_collectives=True)")
        self.is_coordinator = is_coordinator
        self.rank = kwargs.get("rank")
        if self._claim is not None:  # the last save through this writer failed on some rank
            loop.run(self._release_claim())

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        for plan in plans:
            for item in plan.items:
                _check_name(item.index.fqn)
        shards = len(plans) + 1  # one data file per rank, plus the coordinator's metadata file
        attempt = loop.run(self._claim_unless_committed(shards))
        return [dataclasses.replace(plan, storage_data={"shard_id": r, "num_shards": shards, "attempt": attempt})
                for r, plan in enumerate(plans)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        slot = plan.storage_data
        if not isinstance(slot, dict) or "shard_id" not in slot:
            raise RuntimeError("remoteckpt.torch.StorageWriter: the plan lacks its storage slot "
                               "(prepare_global_plan did not run on the coordinator)")
        tensors: dict[str, Any] = {}
        placed: list[tuple[WriteItem, str, int]] = []
        for item in plan.items:
            name, nbytes = self._add_item(tensors, item, planner.resolve_data(item))
            placed.append((item, name, nbytes))
        self._shard = slot["shard_id"]
        write = self._write_on_host if self._per_host else self._write_shard
        identity, table = loop.run(write(tensors, slot["shard_id"], slot["num_shards"], slot.get("attempt", "")))
        results = [WriteResult(index=item.index, size_in_bytes=nbytes,
                               storage_data=_Written(name, slot["shard_id"], table, identity))
                   for item, name, nbytes in placed]
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        n = len(results)
        tables: list[bytes | None] = [None] * n
        identities: list[DataIdentity] = []
        for rank_results in results:
            for result in rank_results:
                written = result.storage_data
                if isinstance(written, _Written) and tables[written.shard_id] is None:
                    tables[written.shard_id] = written.table
                    if written.data is not None:
                        identities.append(written.data)
        if metadata.version is None:
            metadata.version = DCP_VERSION
        metadata.storage_meta = self.storage_meta()
        metadata.storage_data = {"format": FORMAT, "metadata_tensor": METADATA_TENSOR,
                                 "bytes_prefix": BYTES_PREFIX, "num_shards": n + 1}
        blob = encode_metadata(metadata)
        empty = table_bytes(BundlePlan())  # a rank that wrote no items
        loop.run(self._commit([t if t is not None else empty for t in tables], identities, blob))

    # --- the work --------------------------------------------------------------------------

    @property
    def _per_host(self) -> bool:
        return self.local_tier is not None and self.local_tier.per_host

    @property
    def _target(self) -> str:
        """The prefix committed: the checkpoint id, or ``ID/ckpt`` for a directory id (with a
        local tier, that checkpoint's prefix on the tier; with a per-host tier, the local
        commit's prefix in the remote directory, ``.tiers/NAME``)."""
        assert self.prefix is not None
        if self.local_tier is not None and self.local_tier.per_host:
            remote_dir, name = collective.meeting(for_writing(self.prefix))
            return f"{remote_dir.rstrip('/')}/{name}"
        if self.local_tier is not None:
            return local_prefix(self.local_tier, for_writing(self.prefix))
        return for_writing(self.prefix)

    def _add_item(self, tensors: dict[str, Any], item: WriteItem, data: Any) -> tuple[str, int]:
        fqn = item.index.fqn
        if item.type == WriteItemType.BYTE_IO:
            raw = data.getvalue() if isinstance(data, io.BytesIO) else bytes(data)
            name = BYTES_PREFIX + fqn
            tensors[name] = np.array(raw, dtype=object)
            return name, len(raw)
        td = item.tensor_data
        if not isinstance(data, torch.Tensor) or td is None:
            raise InvalidTensorsError(f"state_dict item {fqn!r}: expected a tensor, got {type(data).__qualname__}")
        array = tensor_to_numpy(data)
        full, offset, sizes = tuple(td.size), tuple(td.chunk.offsets), tuple(td.chunk.sizes)
        if tuple(array.shape) != sizes:
            raise ShapeMismatchError(f"state_dict item {fqn!r}: the planner resolved a {list(array.shape)} "
                                     f"tensor for a chunk of size {list(sizes)}")
        covers = all(o == 0 for o in offset) and sizes == full
        if covers:
            if fqn in tensors:
                raise InvalidTensorsError(f"state_dict item {fqn!r} is written twice by one rank")
            tensors[fqn] = array
        elif numel(sizes):  # an empty chunk of a larger tensor holds nothing
            previous = tensors.setdefault(fqn, [])
            if not isinstance(previous, list):
                raise InvalidTensorsError(f"state_dict item {fqn!r} is written both whole and in chunks")
            previous.append(Slice(array, full, offset))
        return fqn, int(array.nbytes)

    @contextlib.asynccontextmanager
    async def _opened(self) -> AsyncIterator[tuple[Any, str]]:
        """(store of the prefix's directory, checkpoint name), closed on exit; on remoteckpt's loop."""
        directory, name = split_prefix(self._target)
        store = open_store(directory, self.storage_options, self.options)
        try:
            yield store, name
        finally:
            await store.close()

    async def _claim_unless_committed(self, shards: int) -> str:
        """Claim the prefix for a fresh attempt before any rank writes, then prepare it (a
        committed checkpoint refused unless overwriting, then retired; a dead attempt's
        leftovers cleared), in this order as `remoteckpt.save` does: checked before the claim,
        the index of a racing save that commits and releases its claim in between would go
        unseen.  A claim held by another save over a committed checkpoint is reported as that
        checkpoint (the holder lost to it, or is replacing it).  Should a rank's write_data
        fail, DCP never calls `finish`: the claim is released by this writer's next save, or
        by the next DCP save of the prefix in this process, and stops renewing once the
        writer is gone.  Returns the attempt token."""
        earlier = _held_by_prefix.pop(self._target, None)
        if earlier is not None and earlier is not self._claim:
            await _let_go(earlier)
        if self.local_tier is not None and self.local_tier.per_host:
            await self._refuse_remote_index()
        elif self.local_tier is not None:
            assert self.prefix is not None
            await tiered.begin(self.local_tier, for_writing(self.prefix), overwrite=self.overwrite, needed=0)
        directory, name = split_prefix(self._target)
        store = open_store(directory, self.storage_options, self.options)
        layout = SaveLayout(name, 0, shards, save_id=self.save_id)
        try:
            await refuse_unsafe_store(store, layout)
            try:
                lease = await claims.acquire(store, layout, self.options)
            except CheckpointBusyError:
                if not self.overwrite and await _exists_or_unknown(store, layout.index):
                    raise CheckpointExistsError.committed(store.describe(layout.index)) from None
                raise
        except BaseException:
            await store.close()
            raise
        self._claim = _held_by_prefix[self._target] = _Held(store, lease, weakref.finalize(self, _abandon, lease))
        try:
            await coordinator.prepare(store, layout, lease, overwrite=self.overwrite)
        except BaseException:
            await self._release_claim()
            raise
        return lease.attempt

    async def _release_claim(self) -> None:
        held, self._claim = self._claim, None
        if held is None:
            return
        if self.prefix is not None and _held_by_prefix.get(self._target) is held:
            del _held_by_prefix[self._target]
        await _let_go(held)

    async def _write_shard(self, tensors: dict[str, Any], shard_id: int, num_shards: int,
                           attempt: str) -> tuple[DataIdentity, bytes]:
        async with self._opened() as (store, name):
            since = None
            if self.incremental:
                base = (self.incremental if isinstance(self.incremental, str)
                        else await previous_checkpoint(store, store.url, name))
                since = Incremental(base=base)
            return await write_part(store, SaveLayout(name, shard_id, num_shards), tensors, options=self.options,
                                    attempt=attempt, incremental=since)

    async def _refuse_remote_index(self) -> None:
        """A per-host save's first look: the remote checkpoint committed already is refused
        unless overwriting (its drain then replaces it)."""
        assert self.prefix is not None
        directory, name = split_prefix(for_writing(self.prefix))
        store = open_store(directory, self.storage_options, self.options)
        try:
            if not self.overwrite and await store.exists(index_filename(name)):
                raise CheckpointExistsError.committed(store.describe(index_filename(name)))
        finally:
            await store.close()

    async def _write_on_host(self, tensors: dict[str, Any], shard_id: int, num_shards: int,
                             attempt: str) -> tuple[DataIdentity | None, bytes]:
        """A rank's data file on its host's tier (no identity: the coordinator cannot fence a
        file on another host's disk; its drain is fenced at the remote prefix), then its drain
        started in the background, to go once the coordinator has committed."""
        assert self.prefix is not None and self.local_tier is not None
        prefix = for_writing(self.prefix)
        tier_dir, name = split_prefix(local_prefix(self.local_tier, prefix))
        os.makedirs(tier_dir, exist_ok=True)
        future = drain.promise(prefix)
        job = _job_id(attempt)
        here = LocalStore(tier_dir)
        try:
            await hosts.ready_tier(here, self.local_tier, name, prefix, rank=shard_id, world_size=num_shards,
                                   overwrite=self.overwrite, needed=tiered.payload_bytes(tensors))
            table = await hosts.write_host_part(here, SaveLayout(name, shard_id, num_shards, job), tensors,
                                                attempt=attempt, options=self.options,
                                                incremental=bool(self.incremental))
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            await here.close()
        # The coordinator also drains DCP's metadata file, the last one, which it writes in `finish`.
        collective.drain_when_committed(self.local_tier, prefix, table, rank=shard_id, world_size=num_shards,
                                        extra=[num_shards - 1] if self.is_coordinator else [], save_id=job,
                                        overwrite=self.overwrite, storage_options=self.storage_options,
                                        options=self.options, future=future)
        return None, table

    async def _commit(self, tables: list[bytes], identities: list[DataIdentity], blob: bytes) -> None:
        """The coordinator's metadata file (data file N of N + 1), the fence, then the merged
        index, committed; then the claim released, whatever happened."""
        held = self._claim
        if held is None:
            raise RuntimeError("remoteckpt.torch.StorageWriter.finish without a claim "
                               "(prepare_global_plan did not run on this coordinator)")
        if self._per_host:
            return await self._commit_on_host(held, tables, blob)
        async with self._opened() as (store, name):
            try:
                n = len(tables)
                layout = SaveLayout(name, 0, n + 1)
                identity, table = await write_part(store, SaveLayout(name, n, n + 1),
                                                   {METADATA_TENSOR: np.array(blob, dtype=object)},
                                                   options=self.options, attempt=held.lease.attempt)
                await held.lease.fresh()
                await fence.check_data_files(store, layout.data_prefix, [*identities, identity])
                held.lease.check()
                await commit_tables(store, layout, [*tables, table], commit=self.commit)
            finally:
                await self._release_claim()
        if self.local_tier is not None:
            assert self.prefix is not None
            await tiered.finish(self.local_tier, for_writing(self.prefix), overwrite=self.overwrite,
                                storage_options=self.storage_options, options=self.options)

    async def _commit_on_host(self, held: _Held, tables: list[bytes], blob: bytes) -> None:
        """Per-host tiers: the metadata file (data file N of N + 1) on the coordinator's tier and
        named for its drain, the merged index committed as the local commit
        (``.tiers/NAME.index``), the claim released; the index handed to this rank's drain, or
        the failure."""
        assert self.prefix is not None and self.local_tier is not None
        prefix = for_writing(self.prefix)
        n = len(tables)
        tier_dir, local_name = split_prefix(local_prefix(self.local_tier, prefix))
        here = LocalStore(tier_dir)
        try:
            async with self._opened() as (store, name):
                try:
                    table = await hosts.write_host_part(
                        here, SaveLayout(local_name, n, n + 1, _job_id(held.lease.attempt)),
                        {METADATA_TENSOR: np.array(blob, dtype=object)}, attempt=held.lease.attempt,
                        options=self.options)
                    await collective.name_extra(self.local_tier, prefix, rank=self._shard, extra=[n])
                    await held.lease.fresh()
                    merged = await commit_tables(store, SaveLayout(name, 0, n + 1), [*tables, table],
                                                 commit=self.commit)
                finally:
                    await self._release_claim()
        except BaseException as exc:
            collective.abandon(prefix, exc)
            raise
        finally:
            await here.close()
        collective.handover(prefix, merged)


def _job_id(attempt: str) -> str:
    """The save id every rank's drain of a per-host save shares: each rank's writer has a save
    id of its own, the attempt of the coordinator's claim is the job's."""
    return f"dcp-{attempt}"


async def _let_go(held: _Held) -> None:
    held.forget.detach()
    try:
        await claims.release(held.lease)
    except Exception:  # left for the next save of this process (taken over at once), or for `gc`
        log.warning("could not release %s", held.store.describe(held.lease.key), exc_info=True)
    finally:
        await held.store.close()
