"""Tensor bytes in a data file, and the masked CRC32C that the index stores for them.

Fixed-width dtypes: the elements, row-major, in the writer's byte order (always little-endian
here), ``size = elements * itemsize``, crc over exactly those bytes.

DT_STRING, n elements:

    varint64 len[0] .. len[n-1]      one per element, row-major
    fixed32  Mask(L)                 L = crc32c over each length as a 4-byte LE uint32
                                     (8 bytes for a length > 0xffffffff)
    bytes    elem[0] ++ .. ++ elem[n-1]

    entry crc = crc32c(elements, crc32c(Mask(L) bytes, L))   (the varints are not covered)

A zero-element string tensor still stores the 4-byte Mask(0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import CorruptCheckpointError
from .coding import crc32c, decode_varint, encode_fixed32, encode_varint, mask_crc, unmask_crc

_U32_MAX = 0xFFFFFFFF


def is_payload_layout(array: np.ndarray) -> bool:
    """Whether a fixed-width array's memory already is its payload: C-contiguous and
    little-endian (or byte-order free)."""
    return array.flags.c_contiguous and array.dtype.byteorder != ">"


def payload_dtype(array: np.ndarray) -> np.dtype:
    """The dtype of `array`'s elements as its payload holds them: little-endian."""
    return array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype


def payload_elements(array: np.ndarray, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
    """Elements ``[start, stop)`` of `array` in row-major order, in a contiguous little-endian
    array (`out`, of ``stop - start`` elements of `payload_dtype`, or a new one): part of the
    payload of an array whose memory is laid out otherwise (strided, transposed, big-endian),
    made without copying the rest.  Whole rows are copied by numpy at once; only the partial
    rows at either end are cut out one level down."""
    if out is None:
        out = np.empty(stop - start, payload_dtype(array))
    _copy_elements(array, start, stop, out)
    return out


def _copy_elements(array: np.ndarray, start: int, stop: int, out: np.ndarray) -> None:
    if not len(out):
        return
    if array.ndim <= 1:
        out[...] = array.reshape(-1)[start:stop]  # a 1-d array is its own row-major order
        return
    row = math.prod(array.shape[1:])
    first, skip = divmod(start, row)
    done = 0
    while done < len(out):
        if skip == 0 and len(out) - done >= row:  # whole rows, in one copy
            rows = (len(out) - done) // row
            out[done : done + rows * row].reshape((rows, *array.shape[1:]))[...] = array[first : first + rows]
            done += rows * row
            first += rows
            continue
        take = min(row - skip, len(out) - done)
        _copy_elements(array[first], skip, skip + take, out[done : done + take])
        done += take
        first += 1
        skip = 0


def _length_checksum(lengths: Sequence[int]) -> int:
    if all(n <= _U32_MAX for n in lengths):
        return crc32c(np.asarray(lengths, dtype="<u4").tobytes())
    crc = 0
    for n in lengths:
        crc = crc32c(n.to_bytes(8 if n > _U32_MAX else 4, "little"), crc)
    return crc


def encode_strings(elements: Sequence[bytes]) -> tuple[list[bytes | memoryview], int]:
    """Payload chunks of a string tensor (row-major elements) and its masked crc."""
    lengths = [len(e) for e in elements]
    header = b"".join(encode_varint(n) for n in lengths)
    length_crc = _length_checksum(lengths)
    lc_bytes = encode_fixed32(mask_crc(length_crc))
    crc = crc32c(lc_bytes, length_crc)
    for element in elements:
        crc = crc32c(element, crc)
    return [header, lc_bytes, *elements], mask_crc(crc)


def decode_strings(payload: bytes | bytearray | memoryview, count: int, *,
                   big_endian: bool = False) -> tuple[list[bytes], int]:
    """Parse a string payload of `count` elements; return (elements, unmasked crc).

    The length checksum is verified here; the caller compares the returned crc with the
    entry's.  Raises `CorruptCheckpointError` if the payload is inconsistent.
    """
    view = memoryview(payload)
    limit = len(view)
    if limit < count + 4:
        raise CorruptCheckpointError(f"string payload of {limit} bytes is too small for {count} elements")
    lengths = []
    pos = 0
    total = 0
    for _ in range(count):
        n, pos = decode_varint(view, pos, limit)
        lengths.append(n)
        total += n
    if pos + 4 + total > limit:
        raise CorruptCheckpointError("string lengths run past the end of the payload")
    stored = int.from_bytes(view[pos : pos + 4], "big" if big_endian else "little")
    if big_endian:
        expected = 0
        for n in lengths:
            expected = crc32c(n.to_bytes(8 if n > _U32_MAX else 4, "big"), expected)
    else:
        expected = _length_checksum(lengths)
    if unmask_crc(stored) != expected:
        raise CorruptCheckpointError("the length checksum of a string tensor does not match")
    crc = crc32c(view[pos : pos + 4], expected)
    pos += 4
    elements = []
    for n in lengths:
        chunk = view[pos : pos + n]
        crc = crc32c(chunk, crc)
        elements.append(bytes(chunk))
        pos += n
    return elements, crc


def string_elements(array: np.ndarray) -> list[bytes]:
    """Row-major elements of a str/bytes/object array as bytes (str encoded as UTF-8)."""
    out = []
    for item in array.reshape(-1).tolist() if array.dtype.kind != "O" else array.reshape(-1):
        if isinstance(item, bytes):
            out.append(item)
        elif isinstance(item, str):
            out.append(item.encode("utf-8"))
        elif isinstance(item, (bytearray, memoryview, np.bytes_)):
            out.append(bytes(item))
        else:
            raise TypeError(f"string tensor element of type {type(item).__name__} is neither bytes nor str")
    return out


__all__ = ["decode_strings", "encode_strings", "is_payload_layout", "payload_dtype", "payload_elements",
           "string_elements"]
