"""One LevelDB block: the unit of an SSTable, holding sorted key/value pairs.

    entry*:
        shared      varint32   bytes shared with the previous key (0 at a restart point)
        unshared    varint32
        value_len   varint32
        key_delta   unshared bytes
        value       value_len bytes
    restarts        fixed32 * num_restarts   offsets of entries stored with shared == 0
    num_restarts    fixed32

Keys are compared as unsigned bytes.  Every `restart_interval` entries the full key is
stored again so that a reader can binary-search the restart array.  An empty block is the
8 bytes ``00000000 01000000`` (one restart at offset 0).
"""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import CorruptCheckpointError
from .coding import decode_fixed32, decode_varint, encode_fixed32, encode_varint

DATA_RESTART_INTERVAL = 16
"""TF's (and LevelDB's) default: a full key every 16 entries bounds a seek's linear scan."""

INDEX_RESTART_INTERVAL = 1
"""The index block stores every separator key in full, so lookups are a pure binary search."""


class BlockBuilder:
    """Accumulates sorted entries into one block's bytes."""

    def __init__(self, restart_interval: int = DATA_RESTART_INTERVAL) -> None:
        self._restart_interval = restart_interval
        self._buf = bytearray()
        self._restarts = [0]
        self._counter = 0
        self._last_key = b""
        self._num_entries = 0

    @property
    def empty(self) -> bool:
        return self._num_entries == 0

    @property
    def last_key(self) -> bytes:
        return self._last_key

    def add(self, key: bytes, value: bytes) -> None:
        """Append one entry; `key` must sort after every key added before."""
        shared = 0
        if self._counter < self._restart_interval:
            last = self._last_key
            limit = min(len(last), len(key))
            while shared < limit and last[shared] == key[shared]:
                shared += 1
        else:
            self._restarts.append(len(self._buf))
            self._counter = 0
        buf = self._buf
        buf += encode_varint(shared)
        buf += encode_varint(len(key) - shared)
        buf += encode_varint(len(value))
        buf += key[shared:]
        buf += value
        self._last_key = key
        self._counter += 1
        self._num_entries += 1

    def size_estimate(self) -> int:
        """Bytes `finish()` would return now (entries + restart array + count)."""
        return len(self._buf) + 4 * len(self._restarts) + 4

    def finish(self) -> bytes:
        """The block's bytes; the builder is reset for the next block."""
        out = bytes(self._buf) + b"".join(encode_fixed32(r) for r in self._restarts)
        out += encode_fixed32(len(self._restarts))
        self.__init__(self._restart_interval)  # type: ignore[misc]
        return out


def iter_block(block: bytes | memoryview) -> Iterator[tuple[bytes, memoryview]]:
    """Yield every (key, value) of a block in order; values are views into `block`.

    Raises `CorruptCheckpointError` on any structural inconsistency.
    """
    view = memoryview(block)
    data = bytes(view)  # indexing bytes is several times faster than indexing a memoryview
    size = len(data)
    if size < 4:
        raise CorruptCheckpointError("block too short for its restart count")
    num_restarts = decode_fixed32(data, size - 4)
    if num_restarts > (size - 4) // 4:
        raise CorruptCheckpointError("bad block: restart array larger than the block")
    limit = size - 4 - 4 * num_restarts
    restarts = {decode_fixed32(data, limit + 4 * i) for i in range(num_restarts)}
    pos = 0
    key = b""
    while pos < limit:
        entry_start = pos
        if pos + 3 <= limit and data[pos] < 0x80 and data[pos + 1] < 0x80 and data[pos + 2] < 0x80:
            shared, unshared, value_len = data[pos], data[pos + 1], data[pos + 2]
            pos += 3  # TF's fast path: all three lengths fit one byte each
        else:
            shared, pos = decode_varint(data, pos, limit)
            unshared, pos = decode_varint(data, pos, limit)
            value_len, pos = decode_varint(data, pos, limit)
        if shared > len(key) or pos + unshared + value_len > limit:
            raise CorruptCheckpointError("bad entry in block")
        if shared and entry_start in restarts:
            raise CorruptCheckpointError("bad entry in block: restart point shares a prefix")
        key = key[:shared] + data[pos : pos + unshared]
        pos += unshared
        yield key, view[pos : pos + value_len]
        pos += value_len
