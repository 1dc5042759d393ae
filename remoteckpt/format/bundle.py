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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from .._proto import tensor_bundle_pb2
from ..errors import CorruptCheckpointError
from .slices import Box, box_from_proto, slice_key
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
        entry = self.entries[key]
        shape = entry_shape(entry)
        return [(box, slice_key(key, box)) for box in (box_from_proto(s, shape) for s in entry.slices)]

    def tensor_keys(self) -> Iterator[bytes]:
        """Keys of tensors a user sees: every entry but the slice entries that full-tensor
        entries reference (an orphan slice entry is listed under its raw key, as TF does)."""
        hidden: set[bytes] = set()
        for key, entry in self.entries.items():
            if entry.slices:
                hidden.update(k for _, k in self.slice_boxes(key))
        return (k for k in self.entries if k not in hidden)


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
    """Cheap checks of every entry at open; shapes and slices are checked by `check_shape`
    before a tensor is read (listing a hostile shape is harmless, allocating it is not)."""
    if entry.slices:
        return
    if not 0 <= entry.shard_id < num_shards:
        raise CorruptCheckpointError(f"tensor {key!r} is in shard {entry.shard_id} of a {num_shards}-shard bundle")
    if entry.offset < 0 or entry.size < 0:
        raise CorruptCheckpointError(f"tensor {key!r} has a negative offset or size")


def check_shape(key: bytes, entry: BundleEntry) -> tuple[int, ...]:
    """The entry's shape, after checking it is one a tensor can have (and its slices fit)."""
    shape = entry_shape(entry)
    if entry.shape.unknown_rank or any(d < 0 for d in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise CorruptCheckpointError(f"tensor {key!r} has an invalid shape {list(shape)}")
    for s in entry.slices:
        box_from_proto(s, shape)
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
