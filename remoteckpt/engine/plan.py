"""Planning a save: from the tensors a caller passes to the entries and payloads of one data file.

`plan_bundle` is pure: it turns the user's mapping into entries and the payloads of the data
file, in the order given (what `tf.raw_ops.SaveV2` does with its inputs, so the bytes are
identical).  Numeric payloads are byte views of the caller's arrays; an array whose memory is
not laid out as its payload (strided, transposed, big-endian) is kept as it is and converted a
block at a time while it streams, so a save never holds a second copy of it.  Their CRC32C is
filled in by `engine.write` as they stream out.  String payloads are encoded here, CRC
included.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import dtypes
from ..errors import InvalidTensorsError
from ..format.bundle import BundleEntry
from ..format.coding import crc32c, mask_crc
from ..format.overlap import find_overlap
from ..format.payload import encode_strings, is_payload_layout, payload_dtype, payload_elements, string_elements
from ..format.slices import Box, box_in, box_to_proto, slice_key
from ..storage.base import Buffer


@dataclass(frozen=True)
class Slice:
    """One box of a larger tensor: `array` holds the elements of the tensor of `full_shape`
    starting at `offset` (one index per dimension).  Several `Slice`s saved under one name
    make a partitioned tensor, which TensorFlow restores whole or in any box."""

    array: Any
    full_shape: tuple[int, ...]
    offset: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "full_shape", tuple(int(d) for d in self.full_shape))
        object.__setattr__(self, "offset", tuple(int(o) for o in self.offset))


@dataclass
class Payload:
    """The bytes of one entry, in data-file order.  `checksummed` is False for numeric
    payloads, whose CRC is computed while they stream out.  A numeric payload is one byte
    view in `chunks`, or, for an array whose memory is not laid out as its payload, that
    array as `source` (and no chunks): `piece` makes its bytes a range at a time."""

    entry: BundleEntry
    chunks: list[Buffer]
    size: int
    checksummed: bool
    source: np.ndarray | None = None

    def piece(self, start: int, stop: int, buffer: np.ndarray | None = None) -> memoryview:
        """Bytes ``[start, stop)`` of a numeric payload: a view of the caller's array, or for a
        `source` a little-endian copy of just the elements holding them, made in `buffer`
        (from `piece_buffer`) or in new memory."""
        if self.source is None:
            return memoryview(self.chunks[0]).cast("B")[start:stop]
        item = self.source.dtype.itemsize
        first = start // item
        elements = payload_elements(self.source, first, -(-stop // item), buffer)
        return elements.reshape(-1).view(np.uint8).data[start - first * item : stop - first * item]

    def piece_buffer(self, start: int, stop: int) -> np.ndarray | None:
        """Memory for `piece` of a `source` (None for a view): allocated by the caller's
        thread, so that blocks made in worker threads all come from one malloc arena and
        reuse each other's freed memory instead of each thread keeping its own."""
        if self.source is None:
            return None
        item = self.source.dtype.itemsize
        return np.empty(-(-stop // item) - start // item, payload_dtype(self.source))


@dataclass
class BundlePlan:
    """What one data file holds and the entries that describe it."""

    entries: dict[bytes, BundleEntry] = field(default_factory=dict)
    payloads: list[Payload] = field(default_factory=list)
    size: int = 0

    @property
    def chunks(self) -> list[Buffer]:
        """Every payload's bytes in order (a converted payload made whole: for small plans)."""
        return [c for p in self.payloads for c in (p.chunks if p.source is None else [p.piece(0, p.size)])]


CHECKSUM_BLOCK = 8 * 2**20
"""Bytes of a converted payload made at a time when its CRC is computed at plan time."""


def _payload(array: np.ndarray, name: str) -> tuple[Any, list[Buffer], int, int | None]:
    """(dtype enum, chunks, size, masked crc or None if computed while streaming); no chunks
    for an array to convert while streaming (see `Payload.source`)."""
    if array.dtype.kind in "OSU":
        try:
            elements = string_elements(array)
        except TypeError as exc:
            raise InvalidTensorsError(f"tensor {name!r}: {exc}") from None
        encoded, crc = encode_strings(elements)
        chunks: list[Buffer] = list(encoded)
        return dtypes.DT_STRING, chunks, sum(len(c) for c in encoded), crc
    try:
        dtype_enum = dtypes.from_numpy(array.dtype)
    except Exception as exc:
        raise type(exc)(f"tensor {name!r}: {exc}") from None
    if not array.nbytes:
        return dtype_enum, [], 0, mask_crc(0)
    if not is_payload_layout(array):
        return dtype_enum, [], array.nbytes, None
    return dtype_enum, [array.reshape(-1).view(np.uint8).data], array.nbytes, None


def _flatten(tensors: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """(name, value) pairs; a list or tuple of `Slice`s is several boxes of one tensor."""
    for name, value in tensors.items():
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, Slice) for v in value):
            for part in value:
                yield name, part
        else:
            yield name, value


def _entry(dtype_enum: Any, shape: tuple[int, ...]) -> BundleEntry:
    entry = BundleEntry(dtype=dtype_enum)
    entry.shape.SetInParent()  # TF always serializes the shape, even a scalar's
    for d in shape:
        entry.shape.dim.add(size=d)
    return entry


def plan_bundle(tensors: Mapping[str, Any], *, shard_id: int = 0, checksum: bool = False) -> BundlePlan:
    """Entries and payload chunks for `tensors` (name -> array-like, `Slice`, or a list of
    `Slice`s: the boxes of one partitioned tensor), in order.

    Raises `InvalidTensorsError` for empty names, overlapping boxes, or boxes of one name
    that disagree on dtype or full shape; `UnsupportedDTypeError` for dtypes TF cannot store.
    With `checksum`, numeric CRCs are computed here too (for callers that do not stream).
    """
    plan = BundlePlan()
    boxes: dict[bytes, list[Box]] = {}
    for name, value in _flatten(tensors):
        key = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else bytes(name)
        if not key:
            raise InvalidTensorsError("tensor names must not be empty")
        box = None
        if isinstance(value, Slice):
            array = np.asarray(value.array)
            try:
                box = box_in(value.full_shape, value.offset, array.shape)
            except Exception as exc:
                raise InvalidTensorsError(f"tensor {name!r}: {exc}") from None
            if box.covers(value.full_shape):
                box = None  # TF stores a box that covers everything as a plain tensor
        else:
            array = np.asarray(value)
        dtype_enum, chunks, size, crc = _payload(array, name)
        entry = _entry(dtype_enum, tuple(array.shape))
        if size:
            entry.shard_id, entry.offset, entry.size = shard_id, plan.size, size
        else:
            entry.shard_id, entry.offset = shard_id, plan.size
        source = array if size and not chunks and crc is None else None
        if crc is None and checksum:
            payload = Payload(entry, chunks, size, False, source)
            running = 0
            for start in range(0, size, CHECKSUM_BLOCK):
                running = crc32c(payload.piece(start, min(size, start + CHECKSUM_BLOCK)), running)
            crc = mask_crc(running)
        if crc is not None:
            entry.crc32c = crc
        if box is None:
            if key in plan.entries:
                raise InvalidTensorsError(f"tensor {name!r} is given more than once")
            plan.entries[key] = entry
        else:
            assert isinstance(value, Slice)
            full = plan.entries.get(key)
            if full is None:
                full = plan.entries[key] = _entry(dtype_enum, value.full_shape)
                boxes[key] = []
            elif key not in boxes:
                raise InvalidTensorsError(f"tensor {name!r} is given both whole and as slices")
            elif full.dtype != dtype_enum or tuple(d.size for d in full.shape.dim) != value.full_shape:
                raise InvalidTensorsError(f"slices of tensor {name!r} disagree on dtype or full shape")
            boxes[key].append(box)
            full.slices.append(box_to_proto(box))
            plan.entries[slice_key(key, box)] = entry
        plan.payloads.append(Payload(entry, chunks, size, crc is not None, source))
        plan.size += size
    for key, parts in boxes.items():
        _check_disjoint(key, parts)
    return plan


def _check_disjoint(key: bytes, boxes: list[Box]) -> None:
    if len(boxes) < 2:
        return
    shape = (len(boxes), boxes[0].rank)
    start = np.array([b.start for b in boxes], np.int64).reshape(shape)
    found = find_overlap(start, start + np.array([b.size for b in boxes], np.int64).reshape(shape))
    if found is not None:
        a, b = (boxes[i] for i in found)
        name = key.decode("utf-8", "surrogateescape")
        raise InvalidTensorsError(f"slices of tensor {name!r} overlap: {a.spec()} and {b.spec()}")
