"""The SSTable that a `.index` file is: TF's private copy of LevelDB's table format.

    [data block][trailer] ... [data block][trailer]
    [metaindex block][trailer]            always empty in TF
    [index block][trailer]                one entry per data block: separator key -> handle
    [footer: 48 bytes]

    trailer  = type (1 byte: 0 none, 1 snappy) + fixed32 masked crc32c(block ++ type)
    handle   = varint64 offset, varint64 size (size excludes the trailer)
    footer   = metaindex handle, index handle, zero padding to byte 40,
               magic 57 fb 80 8b 24 75 47 db

`TableBuilder` reproduces TF's builder decision for decision (block cut after the entry that
reaches 256 KiB, pre-flush before an entry of >= 2 blocks, shortest separators), so that a
table of the same entries is byte-identical to the one TF writes.  `read_table` accepts any
valid table, whatever its block size or restart interval.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from ..errors import CorruptCheckpointError
from .block import INDEX_RESTART_INTERVAL, BlockBuilder, iter_block
from .coding import crc32c, decode_varint, encode_fixed32, encode_varint, mask_crc, unmask_crc

BLOCK_SIZE = 256 * 1024
"""TF's `TableBuilderOptions.block_size`: bigger than LevelDB's 4 KiB because an index is
read whole, once, so fewer blocks mean fewer trailers and index entries."""

TABLE_MAGIC = bytes.fromhex("57fb808b247547db")
"""0xdb4775248b80fb57 little-endian: LevelDB's magic, which TF kept."""

FOOTER_SIZE = 48
"""Two handles of at most 20 bytes each (2 varint64s), padded to 40, plus the 8-byte magic."""

BLOCK_TRAILER_SIZE = 5
NO_COMPRESSION = 0
SNAPPY_COMPRESSION = 1

ReadAt = Callable[[int, int], "bytes | memoryview"]
"""read_at(offset, length) -> exactly `length` bytes of the file starting at `offset`."""


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


def shortest_separator(start: bytes, limit: bytes) -> bytes:
    """A short key k with start <= k < limit (LevelDB's BytewiseComparator rule)."""
    n = min(len(start), len(limit))
    i = 0
    while i < n and start[i] == limit[i]:
        i += 1
    if i < n:
        byte = start[i]
        if byte < 0xFF and byte + 1 < limit[i]:
            return start[:i] + bytes((byte + 1,))
    return start


def short_successor(key: bytes) -> bytes:
    """A short key k >= `key`: the first non-0xff byte incremented, the rest dropped."""
    for i, byte in enumerate(key):
        if byte != 0xFF:
            return key[:i] + bytes((byte + 1,))
    return key


def _encode_handle(offset: int, size: int) -> bytes:
    return encode_varint(offset) + encode_varint(size)


class TableBuilder:
    """Writes a table to `sink` as entries are added in strictly increasing key order.

    Call `add` for every entry, then `finish` once.  The sink receives each block as it is
    cut, so memory stays at one block.
    """

    def __init__(self, sink: Sink, *, block_size: int = BLOCK_SIZE) -> None:
        self._sink = sink
        self._block_size = block_size
        self._offset = 0
        self._data = BlockBuilder()
        self._index = BlockBuilder(INDEX_RESTART_INTERVAL)
        self._pending_handle: bytes | None = None
        self._last_key: bytes | None = None
        self._finished = False

    def add(self, key: bytes, value: bytes) -> None:
        if self._last_key is not None and key <= self._last_key:
            raise ValueError(f"table keys must be strictly increasing: {key!r} after {self._last_key!r}")
        if self._last_key is not None and len(key) + len(value) >= 2 * self._block_size:
            self._flush()  # TF cuts before an overly large entry so it gets a block of its own
        if self._pending_handle is not None:
            assert self._last_key is not None
            self._index.add(shortest_separator(self._last_key, key), self._pending_handle)
            self._pending_handle = None
        self._data.add(key, value)
        self._last_key = key
        if self._data.size_estimate() >= self._block_size:
            self._flush()

    def finish(self) -> int:
        """Write the metaindex, index and footer; return the table's total size."""
        assert not self._finished, "finish() called twice"
        self._finished = True
        self._flush()
        meta_handle = self._write_block(BlockBuilder().finish())
        if self._pending_handle is not None:
            assert self._last_key is not None
            self._index.add(short_successor(self._last_key), self._pending_handle)
            self._pending_handle = None
        index_handle = self._write_block(self._index.finish())
        footer = meta_handle + index_handle
        footer += bytes(40 - len(footer)) + TABLE_MAGIC
        self._sink.write(footer)
        self._offset += len(footer)
        return self._offset

    def _flush(self) -> None:
        if self._data.empty:
            return
        self._pending_handle = self._write_block(self._data.finish())

    def _write_block(self, block: bytes) -> bytes:
        trailer_type = bytes((NO_COMPRESSION,))
        crc = mask_crc(crc32c(trailer_type, crc32c(block)))
        handle = _encode_handle(self._offset, len(block))
        self._sink.write(block)
        self._sink.write(trailer_type + encode_fixed32(crc))
        self._offset += len(block) + BLOCK_TRAILER_SIZE
        return handle


def _decode_handle(data: bytes | memoryview, pos: int, limit: int) -> tuple[int, int, int]:
    offset, pos = decode_varint(data, pos, limit)
    size, pos = decode_varint(data, pos, limit)
    return offset, size, pos


def _read_block(read_at: ReadAt, file_size: int, offset: int, size: int) -> memoryview:
    if offset + size + BLOCK_TRAILER_SIZE > file_size - FOOTER_SIZE:
        raise CorruptCheckpointError(
            f"block handle (offset {offset}, size {size}) points past the end of the file ({file_size} bytes)"
        )
    raw = memoryview(read_at(offset, size + BLOCK_TRAILER_SIZE))
    if len(raw) != size + BLOCK_TRAILER_SIZE:
        raise CorruptCheckpointError("truncated block")
    block, block_type = raw[:size], raw[size]
    stored = int.from_bytes(raw[size + 1 :], "little")
    if unmask_crc(stored) != crc32c(raw[: size + 1]):
        raise CorruptCheckpointError("block checksum mismatch")
    if block_type == SNAPPY_COMPRESSION:
        raise CorruptCheckpointError(
            "Snappy-compressed table block (written by TensorFlow < 1.2) is not supported"
        )
    if block_type != NO_COMPRESSION:
        raise CorruptCheckpointError(f"unknown block compression type {block_type}")
    return block


def read_table(read_at: ReadAt, file_size: int) -> Iterator[tuple[bytes, memoryview]]:
    """Yield every (key, value) of the table in key order, verifying every block's CRC.

    `read_at(offset, length)` reads from the table file, which is `file_size` bytes long.
    Raises `CorruptCheckpointError` (the caller adds the file name) on any inconsistency.
    """
    if file_size < FOOTER_SIZE:
        raise CorruptCheckpointError(f"file is too short ({file_size} bytes) to be an sstable")
    footer = memoryview(read_at(file_size - FOOTER_SIZE, FOOTER_SIZE))
    if bytes(footer[40:]) != TABLE_MAGIC:
        raise CorruptCheckpointError("not an sstable (bad magic number)")
    meta_offset, meta_size, pos = _decode_handle(footer, 0, 40)
    index_offset, index_size, _ = _decode_handle(footer, pos, 40)
    # TF never reads the metaindex; checking its CRC anyway means no byte of the file goes
    # unverified except the footer's padding.
    _read_block(read_at, file_size, meta_offset, meta_size)
    index = _read_block(read_at, file_size, index_offset, index_size)
    last_key: bytes | None = None
    for _, handle in iter_block(index):
        offset, size, _ = _decode_handle(handle, 0, len(handle))
        for key, value in iter_block(_read_block(read_at, file_size, offset, size)):
            if last_key is not None and key <= last_key:
                raise CorruptCheckpointError("table keys out of order")
            last_key = key
            yield key, value
