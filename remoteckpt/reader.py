"""Reading a checkpoint: `CheckpointReader`, the API of `tf.train.load_checkpoint`.

The `.index` is fetched in one request and validated whole when the reader opens.  A tensor
is read only when asked for: its entry is checked against the data file's size before
anything is allocated, the bytes land straight in the result array, and the CRC32C is
verified.  Tensors stored in boxes are assembled from the boxes that intersect the request.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from . import dtypes
from .engine import loop
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    ShapeMismatchError,
    TensorNotFoundError,
)
from .format.bundle import (
    BundleEntry,
    BundleIndex,
    check_shape,
    data_filename,
    decode_index,
    entry_shape,
    index_filename,
)
from .format.coding import crc32c, unmask_crc
from .format.payload import decode_strings
from .format.slices import Box, box_in
from .storage import Store, open_store, split_prefix

BoxLike = tuple[Sequence[int], Sequence[int]] | tuple[slice, ...] | Box
"""A box: ``(start, size)`` per dimension, a tuple of Python slices, or a `Box`."""

MAX_CONCURRENT_READS = 16
"""Tensors fetched at once by `load`: enough to keep an object store's pipe full."""


def _decode_name(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def _encode_name(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _byteswap(array: np.ndarray) -> None:
    size = array.dtype.itemsize // (2 if array.dtype.kind == "c" else 1)
    if size > 1:
        array.reshape(-1).view(f"u{size}").byteswap(inplace=True)


class CheckpointReader:
    """Reads the checkpoint at `prefix` (``PREFIX.index`` + ``PREFIX.data-*``) on local disk or
    any fsspec URL.  Raises `CheckpointNotFoundError` if there is no ``PREFIX.index`` and
    `CorruptCheckpointError` if the index is invalid.  Safe to use from several threads."""

    def __init__(self, prefix: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None) -> None:
        self._prefix = os.fspath(prefix)
        directory, self._name = split_prefix(self._prefix)
        self._store, self._index = loop.run(self._open(directory, storage_options))
        self._finalizer = weakref.finalize(self, _close_soon, self._store)
        self._names = {_decode_name(k): k for k in self._index.tensor_keys()}
        self._data_sizes: dict[int, int] = {}

    async def _open(self, directory: str, options: dict[str, Any] | None) -> tuple[Store, BundleIndex]:
        store = open_store(directory, options)
        key = index_filename(self._name)
        try:
            data = await store.get(key)
        except CheckpointNotFoundError:
            await store.close()
            raise CheckpointNotFoundError(
                f"checkpoint not found: {store.describe(key)} does not exist") from None
        view = memoryview(data)
        try:
            return store, decode_index(lambda o, n: view[o : o + n], len(view))
        except CorruptCheckpointError as exc:
            raise CorruptCheckpointError(f"{store.describe(key)}: {exc}") from None

    # --- what is in it -------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def index(self) -> BundleIndex:
        """The decoded index (header and raw entries), for tools that inspect the layout."""
        return self._index

    def has_tensor(self, name: str) -> bool:
        return name in self._names

    def get_variable_to_shape_map(self) -> dict[str, list[int]]:
        return {n: list(entry_shape(self._index.entries[k])) for n, k in self._names.items()}

    def get_variable_to_dtype_map(self) -> dict[str, np.dtype]:
        """Numpy dtypes (bfloat16 & co from ml_dtypes, ``object`` for strings).  A tensor whose
        dtype numpy cannot hold raises `UnsupportedDTypeError` here and on read."""
        return {n: dtypes.to_numpy(self._index.entries[k].dtype) for n, k in self._names.items()}

    def _entry(self, name: str) -> tuple[bytes, BundleEntry]:
        key = self._names.get(name)
        if key is None:
            raise TensorNotFoundError(f"tensor {name!r} not found in checkpoint {self._prefix}")
        return key, self._index.entries[key]

    # --- reading -------------------------------------------------------------------------

    def get_tensor(self, name: str) -> np.ndarray:
        """The whole tensor `name` as a numpy array (strings: ``object`` array of bytes)."""
        return loop.run(self.read(name))

    def get_slice(self, name: str, box: BoxLike) -> np.ndarray:
        """The part of tensor `name` inside `box`: ``(start, size)`` per dimension, a tuple
        of slices (step 1), or a `Box`."""
        return loop.run(self.read(name, box))

    async def read(self, name: str, box: BoxLike | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Coroutine behind `get_tensor`/`get_slice`: run it on remoteckpt's loop."""
        key, entry = self._entry(name)
        try:
            shape = check_shape(key, entry)
        except CorruptCheckpointError as exc:
            raise CorruptCheckpointError(f"{self._prefix}: {exc}") from None
        try:
            dtype = dtypes.to_numpy(entry.dtype)
        except CheckpointError as exc:
            raise type(exc)(f"tensor {name!r} in {self._prefix}: {exc}") from None
        request = Box.whole(shape) if box is None else self._resolve_box(name, shape, box)
        stored = self._index.slice_boxes(key) if entry.slices else [(Box.whole(shape), key)]
        _check_disjoint(name, [b for b, _ in stored])
        parts = [(b, k, p) for b, k in stored if request.num_elements and (p := b.intersect(request)) is not None]
        if sum(p.num_elements for _, _, p in parts) != request.num_elements:
            raise CorruptCheckpointError(
                f"tensor {name!r} in {self._prefix}: the stored slices do not cover box {request.spec() or 'scalar'}")
        # Every entry is checked against its data file before anything is allocated.
        checked = [await self._checked_entry(name, k, b, dtype) for b, k, _ in parts]
        if out is None:
            out = np.empty(request.size, dtype=dtype)
        elif out.shape != tuple(request.size) or out.dtype != dtype:
            raise ShapeMismatchError(
                f"tensor {name!r}: output array is {out.dtype}{list(out.shape)}, "
                f"the checkpoint holds {dtype}{list(request.size)}")
        for (stored_box, _, part), (stored_entry, data_key) in zip(parts, checked):
            if stored_box.size == tuple(request.size):
                await self._read_entry(name, stored_entry, data_key, out)
            else:
                src = np.empty(stored_box.size, dtype=dtype)
                await self._read_entry(name, stored_entry, data_key, src)
                out[part.relative_to(request)] = src[part.relative_to(stored_box)]
        return out

    def _resolve_box(self, name: str, shape: tuple[int, ...], box: BoxLike) -> Box:
        if isinstance(box, Box):
            start, size = box.start, box.size
        elif box and all(isinstance(s, slice) for s in box):
            if len(box) > len(shape):
                raise ShapeMismatchError(f"tensor {name!r} has rank {len(shape)}, got {len(box)} slices")
            ranges = [s.indices(d) for s, d in zip(box, shape)]  # type: ignore[union-attr]
            if any(step != 1 for _, _, step in ranges):
                raise ShapeMismatchError(f"tensor {name!r}: only slices with step 1 are supported")
            start = [a for a, _, _ in ranges] + [0] * (len(shape) - len(box))
            size = [max(0, b - a) for a, b, _ in ranges] + list(shape[len(box):])
        else:
            start, size = box  # type: ignore[misc]
        try:
            return box_in(shape, list(start), list(size))
        except ShapeMismatchError as exc:
            raise ShapeMismatchError(f"tensor {name!r}: {exc}") from None

    async def _data_size(self, shard_id: int) -> tuple[str, int]:
        key = data_filename(self._name, shard_id, self._index.num_shards)
        if shard_id not in self._data_sizes:
            self._data_sizes[shard_id] = await self._store.size(key)
        return key, self._data_sizes[shard_id]

    async def _checked_entry(self, name: str, key: bytes, box: Box, dtype: np.dtype) -> tuple[BundleEntry, str]:
        """Entry `key` (holding `box` of tensor `name`) and its data file's key, after checking
        that it agrees with the tensor and lies inside its data file."""
        entry = self._index.entries.get(key)
        where = f"tensor {name!r} in {self._prefix}"
        if entry is None:
            raise CorruptCheckpointError(f"{where}: slice {box.spec()} has no entry")
        if entry.slices or dtypes.to_numpy(entry.dtype) != dtype or entry_shape(entry) != tuple(box.size):
            raise CorruptCheckpointError(f"{where}: slice entry {box.spec()} disagrees with the tensor")
        try:
            data_key, file_size = await self._data_size(entry.shard_id)
        except CheckpointNotFoundError as exc:
            raise CheckpointNotFoundError(f"{where}: data file missing: {exc}") from None
        file = self._store.describe(data_key)
        if entry.offset + entry.size > file_size:
            raise CorruptCheckpointError(
                f"{where}: bytes {entry.offset}..{entry.offset + entry.size} lie outside {file} ({file_size} bytes)")
        count = box.num_elements
        if dtype.kind == "O":
            if entry.size < count + 4:  # a varint and the length checksum at the least
                raise CorruptCheckpointError(f"{where}: {entry.size} bytes cannot hold {count} strings ({file})")
        elif entry.size != count * dtype.itemsize:
            raise CorruptCheckpointError(
                f"{where}: entry size {entry.size} does not match {count} x {dtype.itemsize}-byte elements ({file})")
        return entry, data_key

    async def _read_entry(self, name: str, entry: BundleEntry, data_key: str, out: np.ndarray) -> None:
        """Read a checked entry into `out` (its exact shape), verifying the checksum."""
        where = f"tensor {name!r} in {self._prefix}"
        file = self._store.describe(data_key)
        if out.dtype.kind == "O":
            payload = bytearray(entry.size)
            await self._fill(data_key, file, where, entry.offset, memoryview(payload))
            try:
                values, crc = decode_strings(payload, out.size, big_endian=self._index.big_endian)
            except CorruptCheckpointError as exc:
                raise CorruptCheckpointError(f"{where}, {file}: {exc}") from None
            flat = out.reshape(-1)
            for i, v in enumerate(values):
                flat[i] = v
        else:
            view = memoryview(out.reshape(-1).view(np.uint8)) if out.flags.c_contiguous else None
            target = view if view is not None else memoryview(bytearray(entry.size))
            await self._fill(data_key, file, where, entry.offset, target)
            crc = crc32c(target)
            if view is None:
                np.copyto(out, np.frombuffer(target, dtype=out.dtype).reshape(out.shape))
        if crc != unmask_crc(entry.crc32c):
            raise CorruptCheckpointError(
                f"{where}: checksum mismatch in {file} (bytes {entry.offset}..{entry.offset + entry.size}): "
                f"stored {unmask_crc(entry.crc32c):#010x}, computed {crc:#010x}")
        if self._index.big_endian and out.dtype.kind != "O":
            _byteswap(out)

    async def _fill(self, data_key: str, file: str, where: str, offset: int, target: memoryview) -> None:
        got = await self._store.read_into(data_key, offset, target)
        if got != len(target):
            raise CorruptCheckpointError(f"{where}: {file} is truncated (read {got} of {len(target)} bytes at {offset})")

    async def read_many(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        """Read several whole tensors concurrently."""
        slots = asyncio.Semaphore(MAX_CONCURRENT_READS)

        async def one(name: str) -> np.ndarray:
            async with slots:
                return await self.read(name)

        names = list(names)
        for name in names:
            self._entry(name)  # fail fast on unknown names
        arrays = await asyncio.gather(*(one(n) for n in names))
        return dict(zip(names, arrays))

    def close(self) -> None:
        """Release the store's connections (also done when the reader is garbage-collected)."""
        if self._finalizer.detach():
            loop.run(self._store.close())

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CheckpointReader({self._prefix!r}, {len(self._names)} tensors)"


def _close_soon(store: Store) -> None:
    try:
        loop.submit(store.close())
    except RuntimeError:  # interpreter shutting down
        pass


def _check_disjoint(name: str, boxes: list[Box]) -> None:
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            if a.intersect(b) is not None:
                raise CorruptCheckpointError(f"tensor {name!r}: stored slices overlap: {a.spec()} and {b.spec()}")
