"""Primitive encodings shared by the table and the bundle layers.

    varint32/64   LEB128: 7 bits a byte, least significant group first, high bit = more
    fixed32       4 bytes little-endian
    fixed64       8 bytes little-endian
    masked crc    rotr(crc32c, 15) + 0xa282ead8: TF stores CRCs masked so that a CRC of
                  data that itself holds CRCs does not degenerate
"""

from __future__ import annotations

import struct

import crc32c as _crc32c

from ..errors import CorruptCheckpointError

MASK_DELTA = 0xA282EAD8
"""Added after rotating; TF's `kMaskDelta` (tsl/lib/hash/crc32c.h)."""

MAX_VARINT64_LEN = 10
"""ceil(64 / 7): the longest legal varint64."""

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of `data`, continuing from `crc` (0 to start).  Hardware speed."""
    return _crc32c.crc32c(data, value=crc)


def mask_crc(crc: int) -> int:
    """TF's stored form of a CRC: rotate right by 15, add `MASK_DELTA`."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    """Inverse of `mask_crc`."""
    rot = (masked - MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def encode_fixed32(value: int) -> bytes:
    return _U32.pack(value)


def decode_fixed32(data: bytes | memoryview, pos: int = 0) -> int:
    return _U32.unpack_from(data, pos)[0]


def encode_fixed64(value: int) -> bytes:
    return _U64.pack(value)


def decode_fixed64(data: bytes | memoryview, pos: int = 0) -> int:
    return _U64.unpack_from(data, pos)[0]


def encode_varint(value: int) -> bytes:
    """LEB128 encoding of a non-negative integer below 2**64."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes | memoryview, pos: int, limit: int | None = None) -> tuple[int, int]:
    """Decode a varint64 at `pos`; return (value, position after it).

    Raises `CorruptCheckpointError` if it runs past `limit` (default: end of data) or is
    longer than 10 bytes.
    """
    end = len(data) if limit is None else limit
    result = 0
    shift = 0
    for i in range(pos, min(end, pos + MAX_VARINT64_LEN)):
        byte = data[i]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result >= 1 << 64:
                break
            return result, i + 1
        shift += 7
    raise CorruptCheckpointError("malformed or truncated varint")
