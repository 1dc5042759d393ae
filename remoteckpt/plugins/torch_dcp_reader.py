"""PyTorch DCP loading from remoteckpt: `StorageReader` (re-exported by `torch_dcp`, whose
docstring describes the bundle a save writes).

Loading reads, for each of DCP's read items, just its box of the stored tensor (ranged
reads), straight into the destination tensor when it is a CPU tensor of the stored dtype, so
any world size and sharding can load any checkpoint.  A bundle without ``_DCP_METADATA``
(written by TensorFlow or `remoteckpt.save`) loads too: its metadata is derived from the index.

Every rank needs the whole index.  DCP calls `read_metadata` on every rank and offers no hook
to read it once, so with ``process_group=`` the reader does it itself: the group's rank 0
fetches the index and broadcasts its `Opening` (the index, its version, and the data files'
listing where its reader made one: `CheckpointReader.opening`), or its error, to the others,
which read nothing but their boxes, each pinning the data files' versions as its reads meet
them.  One index read per job instead of one per rank.  The data too is then read once per
group (`engine.group`): every byte range that any rank needs is fetched by one rank and sent
to the others that need it (data-parallel replicas restore one copy from storage).
"""

from __future__ import annotations

import io
import os
import uuid
from typing import Any

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
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.storage import StorageReader as _DCPStorageReader
from torch.futures import Future

from ..engine import loop
from ..errors import CorruptCheckpointError, ShapeMismatchError, UnsupportedDTypeError
from ..format.slices import Box
from ..options import DEFAULT_OPTIONS, IOOptions
from ..reader import CheckpointReader
from .torch_common import BYTES_PREFIX, DCP_VERSION, METADATA_TENSOR, AtPrefix, refuse_credentials
from .torch_metadata import FORMAT, decode_metadata
from .torch_tensors import TO_TORCH, numel, numpy_to_tensor, writable_view

__all__ = ["StorageReader", "stored_dtype", "metadata_from_index"]


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
            dtype = TO_TORCH.get(stored_dtype(reader, name))
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
                    version=DCP_VERSION)


class StorageReader(AtPrefix, _DCPStorageReader):
    """Reads a tensor bundle at `prefix` for `dcp.load`: a checkpoint written by
    `StorageWriter` (any world size), or any TensorFlow checkpoint (numeric tensors by name).
    Each read item fetches only its box of the stored tensor.  `reader` is the underlying
    `remoteckpt.CheckpointReader` (opened on first use).

    `process_group` (``torch.distributed.group.WORLD`` for the default group): the group's rank
    0 alone reads the index and broadcasts it to the others in `read_metadata`; every rank
    of the group must then load with such a reader, as ``dcp.load`` does (its collectives
    need every rank anyway).  Not for a load of one rank alone (``no_dist=True``) in a job
    whose group is up: it would wait for the others.
    With it, each byte range is also fetched by one rank of the group only and sent to the
    others that need it (`remoteckpt.engine.group`).

    `local_tier`: read remote `prefix` from its nearest tier (docs/tiered.md); each rank then
    reads on its own, `process_group` unused (what a host's tier holds is its own, not the
    group's)."""

    def __init__(self, prefix: str | os.PathLike[str] | None = None, *,
                 storage_options: dict[str, Any] | None = None, options: IOOptions = DEFAULT_OPTIONS,
                 process_group: Any = None, local_tier: Any = None) -> None:
        super().__init__()
        self.local_tier = local_tier
        self.prefix = None if prefix is None else os.fspath(prefix)
        self.storage_options = storage_options
        self.options = options
        self.process_group = process_group if local_tier is None else None  # a tier is per host: each rank reads
        self.load_id = uuid.uuid4().hex
        self._reader: CheckpointReader | None = None
        self._dtypes: dict[str, np.dtype] | None = None

    def __getstate__(self) -> dict[str, Any]:
        refuse_credentials(self)
        state = dict(self.__dict__)
        state["_reader"] = None
        state["_dtypes"] = None
        state["process_group"] = None  # a process group is this process's own
        return state

    @property
    def reader(self) -> CheckpointReader:
        if self._reader is None:
            if self.prefix is None:
                raise ValueError("remoteckpt.torch.StorageReader needs a checkpoint prefix "
                                 "(StorageReader(prefix) or dcp.load(..., checkpoint_id=prefix))")
            self._reader = CheckpointReader(self.prefix, storage_options=self.storage_options, options=self.options,
                                            local_tier=self.local_tier)
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

    def _open_shared(self) -> None:
        """Rank 0 of the process group reads what every reader needs and broadcasts it (or
        its error, which every rank then raises)."""
        if self.prefix is None:
            self.reader  # noqa: B018 - raises the error naming the missing prefix
        # rank 0 opens; the others open as it resolved the id (a directory names a checkpoint in it)
        self._reader = CheckpointReader.opened_once(str(self.prefix), self.process_group,
                                                    storage_options=self.storage_options, options=self.options)

    def read_metadata(self, *args: Any) -> Metadata:
        if self._reader is None and self.process_group is not None:
            self._open_shared()
        reader = self.reader
        if reader.has_tensor(METADATA_TENSOR):
            if self.process_group is not None:
                blob = reader.read_boxes_shared([(METADATA_TENSOR, None)], None, self.process_group)[0]
            else:
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
        batches = [batch]
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
            if not numel(lengths):
                planner.commit_tensor(item, target)
                continue
            base = item.storage_index.offset or [0] * len(lengths)
            start = [int(a) + int(b) for a, b in zip(base, item.storage_offsets)]
            batch.append((item, fqn, Box(tuple(start), tuple(lengths)), target))
            if writable_view(target, self._dtype(fqn)) is None:
                temp_bytes += target.numel() * target.element_size()
                if temp_bytes >= self.options.memory_budget:
                    batch, temp_bytes = [], 0
                    batches.append(batch)
        if self.process_group is None:
            for batch in batches:
                self._read_batch(batch, planner)
        else:  # every rank reads as many batches (some empty) together
            import torch.distributed as dist

            rounds: list[Any] = [0] * dist.get_world_size(self.process_group)
            dist.all_gather_object(rounds, len(batches), group=self.process_group)
            for i in range(max(rounds)):
                self._read_batch(batches[i] if i < len(batches) else [], planner, shared=True)
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
                    planner: LoadPlanner, shared: bool = False) -> None:
        if not batch and not shared:
            return
        outs = [None if target is None else writable_view(target, self._dtype(name))
                for _, name, _, target in batch]
        requests = [(name, box) for _, name, box, _ in batch]
        if shared:
            arrays = self.reader.read_boxes_shared(requests, outs, self.process_group)
        else:
            arrays = loop.run(self.reader.read_boxes(requests, outs))
        for (item, _, _, target), out, array in zip(batch, outs, arrays):
            if target is None:
                value = array.item() if isinstance(array, np.ndarray) else array
                planner.load_bytes(item, io.BytesIO(bytes(value)))
                continue
            if out is None:
                target.copy_(numpy_to_tensor(array))
            planner.commit_tensor(item, target)
