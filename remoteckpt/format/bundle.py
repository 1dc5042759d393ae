"""A tensor bundle's metadata: file names, the header, entries, the whole `.index`.

    PREFIX.index                     table: "" -> BundleHeaderProto, name -> BundleEntryProto
    PREFIX.data-SSSSS-of-NNNNN       tensor payloads, concatenated, no header or footer

Header as TF writes it: ``num_shards``, endianness LITTLE (omitted: 0), ``version {producer: 1}``
= bytes ``08 01 1a 02 08 01`` for one shard.  An entry names its dtype, shape (always present,
``12 00`` for a scalar), shard, offset, size and masked crc32c; a tensor stored in boxes has a
full-tensor entry with a ``slices`` list and no data of its own, and one entry per box under
its slice key (see `slices`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from google.protobuf.unknown_fields import UnknownFieldSet

from .._proto import tensor_bundle_pb2
from ..errors import CorruptCheckpointError
from .coding import decode_varint
from .slices import Box, Boxes, boxes_from_protos, boxes_from_wire, slice_keys
from .table import ReadAt, Sink, TableBuilder, read_table

BundleEntry = tensor_bundle_pb2.BundleEntryProto
BundleHeader = tensor_bundle_pb2.BundleHeaderProto

HEADER_KEY = b""
"""The header sorts first: the empty key is reserved for it."""

FORMAT_VERSION = 1
"""TF's kTensorBundleVersion: what we write as `producer`."""

CONSUMER_VERSION = 1
"""What we are as a consumer: refuse files whose min_consumer is newer, or that ban us."""

MAX_ELEMENTS = 1 << 62
"""No tensor has more elements than this (TF's limit is int64); beyond it a shape is hostile."""

MAX_SHARDS = 1 << 24
"""Sanity bound on a header's num_shards: a hostile header must not make us iterate 2**31."""

SLICES_TAG = 0x3A
"""`BundleEntryProto.slices` on the wire: field 7, length-delimited."""

DECODE_SLICES_WHOLE_FROM = 32
"""From this many slices on, an entry's slices are decoded from its bytes in one vectorised
pass (`boxes_from_wire`); below it, one by one (cheaper than setting up the arrays)."""


def index_filename(prefix: str) -> str:
    return prefix + ".index"


def data_filename(prefix: str, shard_id: int, num_shards: int) -> str:
    return f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}"


def make_header(num_shards: int = 1) -> BundleHeader:
    header = BundleHeader(num_shards=num_shards)
    header.version.producer = FORMAT_VERSION
    return header


def entry_shape(entry: BundleEntry) -> tuple[int, ...]:
    return tuple(d.size for d in entry.shape.dim)


def encode_index(header: BundleHeader, entries: Mapping[bytes, BundleEntry], sink: Sink) -> int:
    """Write a `.index` table for `entries` (any order; sorted here as unsigned bytes) to
    `sink`, exactly as TF would.  Returns the number of bytes written."""
    builder = TableBuilder(sink)
    builder.add(HEADER_KEY, header.SerializeToString(deterministic=True))
    for key in sorted(entries):
        if key == HEADER_KEY:
            raise ValueError("the empty key is reserved for the bundle header")
        builder.add(key, entries[key].SerializeToString(deterministic=True))
    return builder.finish()


@dataclass
class BundleIndex:
    """A decoded `.index`: the header and every entry by key (slice entries included)."""

    header: BundleHeader
    entries: dict[bytes, BundleEntry] = field(default_factory=dict)

    @property
    def num_shards(self) -> int:
        return self.header.num_shards

    @property
    def big_endian(self) -> bool:
        return self.header.endianness == BundleHeader.BIG

    def slice_boxes(self, key: bytes) -> list[tuple[Box, bytes]]:
        """(box, slice key) of every stored box of a sliced tensor."""
        boxes = entry_boxes(self.entries[key])
        return [(boxes.box(i), k) for i, k in enumerate(slice_keys(key, boxes))]

    def tensor_keys(self, boxes: Callable[[bytes], Boxes] | None = None) -> Iterator[bytes]:
        """Keys of tensors a user sees: every entry but the slice entries that full-tensor
        entries reference (an orphan slice entry is listed under its raw key, as TF does).
        `boxes(key)`, if given, stands for ``entry_boxes(entries[key])`` (a caller's cache)."""
        hidden: set[bytes] = set()
        for key, entry in self.entries.items():
            if entry.slices:
                hidden.update(slice_keys(key, boxes(key) if boxes is not None else entry_boxes(entry)))
        return (k for k in self.entries if k not in hidden)


def entry_boxes(entry: BundleEntry, wire: bytes | memoryview | None = None) -> Boxes:
    """The boxes a sliced tensor's entry lists, resolved against its shape.  Raises
    `CorruptCheckpointError` for the first slice that does not fit (see `box_from_proto`).
    `wire`, if given, is `slices_wire(entry)` (a caller that has it saves encoding it again)."""
    shape = entry_shape(entry)
    if len(entry.slices) >= DECODE_SLICES_WHOLE_FROM:
        wire = slices_wire(entry) if wire is None else wire
        boxes = boxes_from_wire(wire, SLICES_TAG, shape, len(entry.slices)) if wire is not None else None
        if boxes is not None:
            return boxes
    return boxes_from_protos(entry.slices, shape)


def slices_wire(entry: BundleEntry) -> memoryview | None:
    """The encoded slices of `entry` (its field-7 records, back to back), cut from its
    serialization: after the fields numbered below 7, before the chunk CRC fields (protobuf
    writes fields in number order, unknown ones last).  None for an entry with unknown
    fields, or bytes laid out otherwise: the caller then reads the slices one by one."""
    if len(UnknownFieldSet(entry)):
        return None
    data = entry.SerializeToString(deterministic=True)
    pos = 0
    while pos < len(data):
        tag, after = decode_varint(data, pos)
        if tag == SLICES_TAG:
            break
        wire_type = tag & 7
        if wire_type == 0:
            pos = decode_varint(data, after)[1]
        elif wire_type == 2:
            length, after = decode_varint(data, after)
            pos = after + length
        elif wire_type in (1, 5):
            pos = after + (8 if wire_type == 1 else 4)
        else:
            return None
    else:
        return memoryview(b"") if not entry.slices else None
    extension = BundleEntry(chunk_size=entry.chunk_size, chunk_crc32c=entry.chunk_crc32c)
    tail = extension.SerializeToString(deterministic=True)
    end = len(data) - len(tail)
    if end < pos or data[end:] != tail:
        return None
    return memoryview(data)[pos:end]


def _check_header(header: BundleHeader) -> None:
    if not 0 <= header.num_shards <= MAX_SHARDS:
        raise CorruptCheckpointError(f"header claims {header.num_shards} shards")
    if header.endianness not in (BundleHeader.LITTLE, BundleHeader.BIG):
        raise CorruptCheckpointError(f"unknown endianness {header.endianness}")
    version = header.version
    if version.producer < 0 or version.min_consumer > CONSUMER_VERSION or CONSUMER_VERSION in version.bad_consumers:
        raise CorruptCheckpointError(
            f"bundle format version (producer {version.producer}, min_consumer {version.min_consumer}) "
            "is not supported: written by a newer TensorFlow?")


def _check_entry(key: bytes, entry: BundleEntry, num_shards: int) -> None:
    """Cheap checks of every entry at open; shapes and slices are checked by `check_shape` and
    `entry_boxes` before a tensor is read (listing a hostile shape is harmless, allocating it
    is not)."""
    if entry.slices:
        return
    if not 0 <= entry.shard_id < num_shards:
        raise CorruptCheckpointError(f"tensor {key!r} is in shard {entry.shard_id} of a {num_shards}-shard bundle")
    if entry.offset < 0 or entry.size < 0:
        raise CorruptCheckpointError(f"tensor {key!r} has a negative offset or size")


def check_shape(key: bytes, entry: BundleEntry) -> tuple[int, ...]:
    """The entry's shape, after checking it is one a tensor can have (its slices are
    checked by `entry_boxes`)."""
    shape = entry_shape(entry)
    if entry.shape.unknown_rank or any(d < 0 for d in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise CorruptCheckpointError(f"tensor {key!r} has an invalid shape {list(shape)}")
    return shape


def decode_index(read_at: ReadAt, file_size: int) -> BundleIndex:
    """Parse and validate a `.index` table (every block CRC, the header, every entry's
    shard id, offset, size, shape and slices).  Sizes against the data files are checked
    when a tensor is read.  Raises `CorruptCheckpointError` (the caller names the file)."""
    items: Iterable[tuple[bytes, memoryview]] = read_table(read_at, file_size)
    iterator = iter(items)
    first = next(iterator, None)
    if first is None or first[0] != HEADER_KEY:
        raise CorruptCheckpointError("the index has no bundle header")
    header = BundleHeader()
    try:
        header.ParseFromString(first[1])
    except Exception as exc:  # protobuf raises DecodeError, or RuntimeWarning-ish errors
        raise CorruptCheckpointError(f"unable to parse the bundle header: {exc}") from exc
    _check_header(header)
    index = BundleIndex(header)
    for key, value in iterator:
        entry = BundleEntry()
        try:
            entry.ParseFromString(value)
        except Exception as exc:
            raise CorruptCheckpointError(f"unable to parse the entry of {key!r}: {exc}") from exc
        _check_entry(key, entry, header.num_shards)
        index.entries[key] = entry
    return index


def decode_index_bytes(data: bytes | bytearray | memoryview) -> BundleIndex:
    """`decode_index` of a whole `.index` held in memory."""
    view = memoryview(data)
    return decode_index(lambda offset, size: view[offset : offset + size], len(view))
