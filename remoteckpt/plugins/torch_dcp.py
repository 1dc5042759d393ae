"""PyTorch Distributed Checkpoint (`torch.distributed.checkpoint`, "DCP") storage on remoteckpt.

`StorageWriter` and `StorageReader` implement DCP's storage interfaces so that

    dcp.save(state_dict, storage_writer=StorageWriter("s3://bucket/run/step-100"))
    dcp.load(state_dict, storage_reader=StorageReader("s3://bucket/run/step-100"))

write and read a TensorFlow tensor bundle at that prefix (``step-100.index`` +
``step-100.data-SSSSS-of-NNNNN``), readable by `tf.train.load_checkpoint` and
`remoteckpt.CheckpointReader`, with tensor names equal to the state_dict's FQNs.

How DCP's save sequence maps onto the bundle (N ranks, N + 1 data files):

    prepare_global_plan  (coordinator)  claim the prefix (`protocol.claim`: of two jobs
                                        racing for it, one goes on); refuse an existing
                                        checkpoint (unless overwrite); give rank r data
                                        file r of N + 1
    write_data           (every rank)   stream the rank's items into PREFIX.data-r-of-(N+1)
                                        (final name, durable on return); its index table
                                        rides back to the coordinator in the WriteResults
    finish               (coordinator)  DCP's Metadata, as JSON, into the string tensor
                                        ``_DCP_METADATA`` of data file N; merge the N + 1
                                        tables; commit PREFIX.index (create-only);
                                        release the claim

The process group does the meeting that `remoteckpt.save` does through storage, so there is
no staging, no polling, and the index (the commit) covers DCP's metadata too: a checkpoint
exists for TensorFlow and for DCP at the same instant, or for neither.

Chunks of sharded tensors (DTensor, ShardedTensor, FSDP) become TensorFlow slices of one
tensor; byte items (non-tensor objects DCP serializes) become string scalars
``_DCP_BYTES/<fqn>``.  Loading reads, for each of DCP's read items, just its box of the
stored tensor (ranged reads), straight into the destination tensor when it is a CPU tensor
of the stored dtype, so any world size and sharding can load any checkpoint.  A bundle
without ``_DCP_METADATA`` (written by TensorFlow or `remoteckpt.save`) loads too: its
metadata is derived from the index.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import os
import uuid
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

import ml_dtypes
import numpy as np
import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader as _DCPStorageReader
from torch.distributed.checkpoint.storage import StorageWriter as _DCPStorageWriter
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from ..engine import loop
from ..errors import (
    CheckpointBusyError,
    CheckpointError,
    CheckpointExistsError,
    CorruptCheckpointError,
    InvalidTensorsError,
    ShapeMismatchError,
    UnsupportedDTypeError,
)
from ..format.bundle import encode_index, index_filename, make_header
from ..format.slices import Box
from ..options import DEFAULT_OPTIONS, IOOptions
from ..protocol import claim as claims
from ..protocol.commit import DEFAULT_COMMIT, CommitProtocol
from ..protocol.layout import SaveLayout
from ..protocol.save import commit_tables, write_part
from ..reader import CheckpointReader
from ..storage import open_store, split_prefix
from ..storage.url import holds_credentials
from ..writer import Slice
from .torch_metadata import FORMAT, decode_metadata, encode_metadata

__all__ = ["StorageWriter", "StorageReader", "METADATA_TENSOR", "BYTES_PREFIX"]

log = logging.getLogger("remoteckpt")

METADATA_TENSOR = "_DCP_METADATA"
"""The string scalar holding DCP's `Metadata` as JSON (see `torch_metadata`)."""

BYTES_PREFIX = "_DCP_BYTES/"
"""Byte items (objects DCP serializes itself) are string scalars named BYTES_PREFIX + FQN."""

try:
    from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION as _DCP_VERSION
except ImportError:  # pragma: no cover - older torch
    _DCP_VERSION = "1.0.0"


# --- dtypes --------------------------------------------------------------------------------

_PLAIN = [torch.float32, torch.float64, torch.float16, torch.int8, torch.int16, torch.int32, torch.int64,
          torch.uint8, torch.bool, torch.complex64, torch.complex128]
_PLAIN += [d for d in (getattr(torch, n, None) for n in ("uint16", "uint32", "uint64")) if d is not None]
_TO_NUMPY: dict[torch.dtype, np.dtype] = {d: torch.empty(0, dtype=d).numpy().dtype for d in _PLAIN}
# Types numpy lacks: the same bytes, viewed through an integer type of their size, as ml_dtypes.
_VIA: dict[torch.dtype, tuple[torch.dtype, np.dtype]] = {torch.bfloat16: (torch.int16, np.dtype(ml_dtypes.bfloat16))}
for _t, _m in [("float8_e4m3fn", "float8_e4m3fn"), ("float8_e5m2", "float8_e5m2"),
               ("float8_e4m3fnuz", "float8_e4m3fnuz"), ("float8_e5m2fnuz", "float8_e5m2fnuz")]:
    if hasattr(torch, _t) and hasattr(ml_dtypes, _m):
        _VIA[getattr(torch, _t)] = (torch.uint8, np.dtype(getattr(ml_dtypes, _m)))
_TO_NUMPY.update({t: m for t, (_, m) in _VIA.items()})
_TO_TORCH: dict[np.dtype, torch.dtype] = {m: t for t, m in _TO_NUMPY.items()}


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype (ml_dtypes for bfloat16 and float8) holding `dtype`'s bytes."""
    try:
        return _TO_NUMPY[dtype]
    except KeyError:
        raise UnsupportedDTypeError(f"torch dtype {dtype} has no TensorFlow checkpoint equivalent") from None


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy array of `tensor`'s elements: a view of its memory for CPU tensors."""
    t = tensor.detach()
    if t.layout != torch.strided:
        raise InvalidTensorsError(f"{t.layout} tensors cannot be stored (convert to dense first)")
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    via = _VIA.get(t.dtype)
    if via is not None:
        return t.view(via[0]).numpy().view(via[1])
    if t.dtype not in _TO_NUMPY:
        numpy_dtype(t.dtype)  # raises UnsupportedDTypeError
    return t.numpy()


def numpy_to_tensor(array: np.ndarray) -> torch.Tensor:
    dtype = _TO_TORCH.get(array.dtype)
    if dtype is None:
        raise UnsupportedDTypeError(f"a {array.dtype} tensor cannot be loaded into torch")
    via = _VIA.get(dtype)
    if via is not None:
        return torch.from_numpy(array.view(_TO_NUMPY[via[0]])).view(dtype)
    return torch.from_numpy(array)


def _writable_view(target: torch.Tensor, dtype: np.dtype) -> np.ndarray | None:
    """`target`'s memory as a numpy array of `dtype`, if reading straight into it is safe."""
    if (target.device.type != "cpu" or target.layout != torch.strided or target.is_conj() or target.is_neg()
            or _TO_NUMPY.get(target.dtype) != dtype
            or any(st == 0 and sz > 1 for st, sz in zip(target.stride(), target.shape))):
        return None
    via = _VIA.get(target.dtype)
    return target.view(via[0]).numpy().view(via[1]) if via is not None else target.numpy()


def _numel(sizes: Sequence[int]) -> int:
    return math.prod(int(s) for s in sizes)


def _check_name(fqn: str) -> None:
    if fqn == METADATA_TENSOR or fqn.startswith(BYTES_PREFIX):
        raise InvalidTensorsError(f"state_dict key {fqn!r} is reserved by remoteckpt's DCP storage")


class _AtPrefix:
    """DCP's checkpoint id, for both storage classes: the prefix (any non-empty path or URL)."""

    prefix: str | None

    @property
    def checkpoint_id(self) -> str | None:
        return self.prefix

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return isinstance(checkpoint_id, (str, os.PathLike)) and bool(os.fspath(checkpoint_id))


# --- save ----------------------------------------------------------------------------------

def _refuse_credentials(obj: Any) -> None:
    if holds_credentials(obj.storage_options):
        raise TypeError(f"{type(obj).__qualname__} with credentials in storage_options cannot be pickled (they "
                        "would travel in the pickle): give them through the environment or an AWS profile")


@dataclasses.dataclass(frozen=True)
class _Written:
    """`WriteResult.storage_data`: where an item went.  `table` (the rank's index table, one
    object shared by all of the rank's results, so sent once) is how the coordinator learns
    each data file's entries."""

    tensor: str
    shard_id: int
    table: bytes


def _table_bytes(entries: dict[bytes, Any]) -> bytes:
    out = io.BytesIO()
    encode_index(make_header(1), entries, out)
    return out.getvalue()


async def _exists_or_unknown(store: Any, key: str) -> bool:
    """Whether `key` exists; False when that cannot be told (a failed check must not replace
    the error it was asked to refine)."""
    try:
        return await store.exists(key)
    except CheckpointError:
        return False


class StorageWriter(_AtPrefix, _DCPStorageWriter):
    """Writes a DCP checkpoint as a TensorFlow tensor bundle at `prefix` (``PREFIX.index`` +
    ``PREFIX.data-*``; local path, ``file://``, ``s3://`` or any fsspec URL).  A committed
    checkpoint at `prefix` is never replaced unless `overwrite`.  `storage_options` and
    `options` are as for `remoteckpt.save`.  Requires DCP's collectives (the default);
    ``use_collectives=False`` is refused."""

    def __init__(self, prefix: str | os.PathLike[str] | None = None, *, overwrite: bool = False,
                 storage_options: dict[str, Any] | None = None, options: IOOptions = DEFAULT_OPTIONS,
                 commit: CommitProtocol = DEFAULT_COMMIT) -> None:
        super().__init__()
        self.prefix = None if prefix is None else os.fspath(prefix)
        self.overwrite = overwrite
        self.storage_options = storage_options
        self.options = options
        self.commit = commit
        self.save_id = uuid.uuid4().hex
        self.is_coordinator = False
        self.rank: int | None = None
        self._claim: tuple[SaveLayout, claims.ClaimRecord, weakref.finalize] | None = None

    def __getstate__(self) -> dict[str, Any]:
        _refuse_credentials(self)
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
        loop.run(self._claim_unless_committed(shards))
        return [dataclasses.replace(plan, storage_data={"shard_id": r, "num_shards": shards})
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
        table = loop.run(self._write_shard(tensors, slot["shard_id"], slot["num_shards"]))
        results = [WriteResult(index=item.index, size_in_bytes=nbytes,
                               storage_data=_Written(name, slot["shard_id"], table))
                   for item, name, nbytes in placed]
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        n = len(results)
        tables: list[bytes | None] = [None] * n
        for rank_results in results:
            for result in rank_results:
                written = result.storage_data
                if isinstance(written, _Written) and tables[written.shard_id] is None:
                    tables[written.shard_id] = written.table
        if metadata.version is None:
            metadata.version = _DCP_VERSION
        metadata.storage_meta = self.storage_meta()
        metadata.storage_data = {"format": FORMAT, "metadata_tensor": METADATA_TENSOR,
                                 "bytes_prefix": BYTES_PREFIX, "num_shards": n + 1}
        blob = encode_metadata(metadata)
        empty = _table_bytes({})
        loop.run(self._commit([t if t is not None else empty for t in tables], blob))

    # --- the work --------------------------------------------------------------------------

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
        elif _numel(sizes):  # an empty chunk of a larger tensor holds nothing
            previous = tensors.setdefault(fqn, [])
            if not isinstance(previous, list):
                raise InvalidTensorsError(f"state_dict item {fqn!r} is written both whole and in chunks")
            previous.append(Slice(array, full, offset))
        return fqn, int(array.nbytes)

    @contextlib.asynccontextmanager
    async def _opened(self) -> AsyncIterator[tuple[Any, str]]:
        """(store of the prefix's directory, checkpoint name), closed on exit; on remoteckpt's loop."""
        assert self.prefix is not None
        directory, name = split_prefix(self.prefix)
        store = open_store(directory, self.storage_options, self.options)
        try:
            yield store, name
        finally:
            await store.close()

    async def _claim_unless_committed(self, shards: int) -> None:
        """Claim the prefix for this save before any rank writes, then refuse a committed
        checkpoint (unless overwriting), in this order as `remoteckpt.save` does: checked
        before the claim, the index of a racing save that commits and releases its claim in
        between would go unseen, and this save would take a claim that nobody releases (its
        ranks then fail in write_data, and DCP never calls `finish`).  A claim held by another
        save over a committed checkpoint is reported as that checkpoint (the holder lost to
        it, or is replacing it).  Should a rank's write_data fail, DCP never calls `finish`:
        the claim is released by this writer's next save, and forgotten (so a later save of
        this process takes it over) once the writer is gone."""
        async with self._opened() as (store, name):
            index = index_filename(name)
            layout = SaveLayout(name, 0, shards, save_id=self.save_id)
            try:
                record = await claims.acquire(store, layout, self.options)
            except CheckpointBusyError:
                if not self.overwrite and await _exists_or_unknown(store, index):
                    raise CheckpointExistsError.committed(store.describe(index)) from None
                raise
            self._claim = layout, record, weakref.finalize(self, claims.forget, record)
            try:
                if not self.overwrite and await store.exists(index):
                    raise CheckpointExistsError.committed(store.describe(index))
            except BaseException:
                await self._release_claim(store)
                raise

    async def _release_claim(self, store: Any = None) -> None:
        if self._claim is None:
            return
        layout, record, forget = self._claim
        self._claim = None
        forget.detach()
        async with contextlib.AsyncExitStack() as stack:
            if store is None:
                store, _ = await stack.enter_async_context(self._opened())
            try:
                await claims.release(store, layout, record)
            except Exception:  # left for the next save of this process, or for `gc`
                log.warning("could not release %s", store.describe(layout.claim), exc_info=True)

    async def _write_shard(self, tensors: dict[str, Any], shard_id: int, num_shards: int) -> bytes:
        async with self._opened() as (store, name):
            return await self._stream(store, name, tensors, shard_id, num_shards)

    async def _stream(self, store: Any, name: str, tensors: dict[str, Any], shard_id: int, num_shards: int) -> bytes:
        """Phase one of remoteckpt's save protocol for data file `shard_id` (durable on
        return, written create-only unless overwriting); its index table."""
        return await write_part(store, SaveLayout(name, shard_id, num_shards), tensors,
                                overwrite=self.overwrite, options=self.options)

    async def _commit(self, tables: list[bytes], blob: bytes) -> None:
        """The coordinator's metadata file (data file N of N + 1), then phase two: the merged
        index, committed; then the claim released, whatever happened."""
        async with self._opened() as (store, name):
            try:
                n = len(tables)
                table = await self._stream(store, name, {METADATA_TENSOR: np.array(blob, dtype=object)}, n, n + 1)
                await commit_tables(store, SaveLayout(name, 0, n + 1), [*tables, table],
                                    overwrite=self.overwrite, commit=self.commit)
            finally:
                await self._release_claim(store)


# --- load ----------------------------------------------------------------------------------

def stored_dtype(reader: CheckpointReader, name: str) -> np.dtype:
    """The numpy dtype of tensor `name` (`UnsupportedDTypeError` if numpy cannot hold it)."""
    return reader.get_dtype(name)


def metadata_from_index(reader: CheckpointReader) -> Metadata:
    """DCP metadata for a bundle written without DCP (by TensorFlow or `remoteckpt.save`):
    every numeric tensor, with its stored slices as chunks.  String tensors and dtypes torch
    lacks are left out."""
    items: dict[str, TensorStorageMetadata | BytesStorageMetadata] = {}
    for name, shape in reader.get_variable_to_shape_map().items():
        if name.startswith(BYTES_PREFIX):
            items[name[len(BYTES_PREFIX):]] = BytesStorageMetadata()
            continue
        try:
            dtype = _TO_TORCH.get(stored_dtype(reader, name))
        except UnsupportedDTypeError:
            continue
        if dtype is None:
            continue
        key = name.encode("utf-8", "surrogateescape")
        if reader.index.entries[key].slices:
            boxes = [box for box, _ in reader.index.slice_boxes(key)]
        else:
            boxes = [Box.whole(shape)]
        chunks = [ChunkStorageMetadata(offsets=torch.Size(b.start), sizes=torch.Size(b.size)) for b in boxes]
        items[name] = TensorStorageMetadata(properties=TensorProperties(dtype=dtype), size=torch.Size(shape),
                                            chunks=chunks)
    return Metadata(state_dict_metadata=items, storage_data={"format": FORMAT, "derived": True},
                    version=_DCP_VERSION)


class StorageReader(_AtPrefix, _DCPStorageReader):
    """Reads a tensor bundle at `prefix` for `dcp.load`: a checkpoint written by
    `StorageWriter` (any world size), or any TensorFlow checkpoint (numeric tensors by name).
    Each read item fetches only its box of the stored tensor.  `reader` is the underlying
    `remoteckpt.CheckpointReader` (opened on first use)."""

    def __init__(self, prefix: str | os.PathLike[str] | None = None, *,
                 storage_options: dict[str, Any] | None = None, options: IOOptions = DEFAULT_OPTIONS) -> None:
        super().__init__()
        self.prefix = None if prefix is None else os.fspath(prefix)
        self.storage_options = storage_options
        self.options = options
        self.load_id = uuid.uuid4().hex
        self._reader: CheckpointReader | None = None
        self._dtypes: dict[str, np.dtype] | None = None

    def __getstate__(self) -> dict[str, Any]:
        _refuse_credentials(self)
        state = dict(self.__dict__)
        state["_reader"] = None
        state["_dtypes"] = None
        return state

    @property
    def reader(self) -> CheckpointReader:
        if self._reader is None:
            if self.prefix is None:
                raise ValueError("remoteckpt.torch.StorageReader needs a checkpoint prefix "
                                 "(StorageReader(prefix) or dcp.load(..., checkpoint_id=prefix))")
            self._reader = CheckpointReader(self.prefix, storage_options=self.storage_options, options=self.options)
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
            self._dtypes = None

    # --- DCP's interface -------------------------------------------------------------------

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id:
            self.close()  # a new read: the index is fetched again
            self.prefix = os.fspath(checkpoint_id)
        self.load_id = uuid.uuid4().hex

    def read_metadata(self, *args: Any) -> Metadata:
        reader = self.reader
        if reader.has_tensor(METADATA_TENSOR):
            blob = reader.get_tensor(METADATA_TENSOR)
            try:
                metadata = decode_metadata(blob.item() if isinstance(blob, np.ndarray) else blob)
            except CorruptCheckpointError as exc:
                raise CorruptCheckpointError(f"{reader.prefix}, tensor {METADATA_TENSOR!r}: {exc}") from None
        else:
            metadata = metadata_from_index(reader)
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.metadata = metadata

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        if self._dtypes is None:
            self._dtypes = {}
        batch: list[tuple[ReadItem, str, Box | None, torch.Tensor | None]] = []
        temp_bytes = 0
        for item in plan.items:
            fqn = item.storage_index.fqn
            if item.type == LoadItemType.BYTE_IO:
                batch.append((item, BYTES_PREFIX + fqn, None, None))
                continue
            lengths = [int(x) for x in item.lengths]
            target = planner.resolve_tensor(item).detach()
            if list(target.shape) != lengths:
                raise ShapeMismatchError(f"{fqn!r}: the planner's target is {list(target.shape)}, "
                                         f"the read item {lengths}")
            if not _numel(lengths):
                planner.commit_tensor(item, target)
                continue
            base = item.storage_index.offset or [0] * len(lengths)
            start = [int(a) + int(b) for a, b in zip(base, item.storage_offsets)]
            batch.append((item, fqn, Box(tuple(start), tuple(lengths)), target))
            if _writable_view(target, self._dtype(fqn)) is None:
                temp_bytes += target.numel() * target.element_size()
                if temp_bytes >= self.options.memory_budget:
                    self._read_batch(batch, planner)
                    batch, temp_bytes = [], 0
        self._read_batch(batch, planner)
        future: Future[None] = Future()
        future.set_result(None)
        return future

    # --- the work --------------------------------------------------------------------------

    def _dtype(self, name: str) -> np.dtype:
        assert self._dtypes is not None
        found = self._dtypes.get(name)
        if found is None:
            found = self._dtypes[name] = stored_dtype(self.reader, name)
        return found

    def _read_batch(self, batch: list[tuple[ReadItem, str, Box | None, torch.Tensor | None]],
                    planner: LoadPlanner) -> None:
        if not batch:
            return
        outs = [None if target is None else _writable_view(target, self._dtype(name))
                for _, name, _, target in batch]
        arrays = loop.run(self.reader.read_boxes([(name, box) for _, name, box, _ in batch], outs))
        for (item, _, _, target), out, array in zip(batch, outs, arrays):
            if target is None:
                value = array.item() if isinstance(array, np.ndarray) else array
                planner.load_bytes(item, io.BytesIO(bytes(value)))
                continue
            if out is None:
                target.copy_(numpy_to_tensor(array))
            planner.commit_tensor(item, target)
