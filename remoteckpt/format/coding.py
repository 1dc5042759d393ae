"""Primitive encodings shared by the table and the bundle layers.

    varint32/64   LEB128: 7 bits a byte, least significant group first, high bit = more
    fixed32       4 bytes little-endian
    fixed64       8 bytes little-endian
    masked crc    rotr(crc32c, 15) + 0xa282ead8: TF stores CRCs masked so that a CRC of
                  data that itself holds CRCs does not degenerate
"""

from __future__ import annotations

import functools
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
    return _crc32c.crc32c(data, crc)  # positional: crc32c 2.4 takes no keyword arguments


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


_CASTAGNOLI_REFLECTED = 0x82F63B78


def _gf2_times(matrix: list[int], vector: int) -> int:
    out = 0
    i = 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, matrix[n]) for n in range(32)]


@functools.lru_cache(maxsize=64)
def _zeros_operator(length: int) -> list[int]:
    """The GF(2) matrix that advances a CRC register over `length` zero bytes."""
    odd = [_CASTAGNOLI_REFLECTED] + [1 << n for n in range(31)]  # one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    result = [1 << n for n in range(32)]  # identity
    while True:
        even = _gf2_square(odd)  # first pass: one zero byte
        if length & 1:
            result = [_gf2_times(even, row) for row in result]
        length >>= 1
        if not length:
            return result
        odd = _gf2_square(even)
        if length & 1:
            result = [_gf2_times(odd, row) for row in result]
        length >>= 1
        if not length:
            return result


def crc32c_combine(crc_a: int, crc_b: int, length_b: int) -> int:
    """crc32c(a ++ b) from crc32c(a), crc32c(b) and len(b) (zlib's crc32_combine method),
    so that chunks of one tensor read in parallel are verified without a second pass.
    Chunks mostly share one length, whose operator is cached: a combine is then ~32 XORs."""
    if length_b == 0:
        return crc_a
    return _gf2_times(_zeros_operator(length_b), crc_a) ^ crc_b
