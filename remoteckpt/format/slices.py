"""Boxes of a tensor and how TF names them.

A tensor saved in parts ("partitioned variable") is stored as one full-tensor entry listing
its boxes (`TensorSliceProto`, one extent per dimension; an extent without a length spans
its whole dimension) plus one ordinary entry per box under a key built with TF's
OrderedCode:

    00                            NumIncreasing(0): sorts every slice key before plain names
    String(name)                  00 -> 00 ff, ff -> ff 00, then 00 01
    NumIncreasing(rank)           length byte, then big-endian value without leading zeros
    SignedNumIncreasing(start_d)  per dimension; a full dimension is (0, -1)
    SignedNumIncreasing(len_d)

Example: tensor ``p``, rows 0..2 of a matrix: ``00 70 00 01 01 02 80 82 80 7f``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._proto import tensor_slice_pb2
from ..errors import CorruptCheckpointError, ShapeMismatchError

FULL = -1
"""Length of an extent that spans its whole dimension (TF's `kFullExtent`)."""

_SIGNED_HEADERS = {2: (0xC0, 0x00), 3: (0xE0, 0x00), 4: (0xF0, 0x00), 5: (0xF8, 0x00),
                   6: (0xFC, 0x00), 7: (0xFE, 0x00), 8: (0xFF, 0x00), 9: (0xFF, 0x80),
                   10: (0xFF, 0xC0)}
"""Bits XORed into the first two bytes of an n-byte SignedNumIncreasing code: n leading
ones (a one-byte code uses 0x80), so longer codes of positive numbers sort later."""


@dataclass(frozen=True)
class Box:
    """A hyper-rectangle of a tensor: `start[d]` and `size[d]` per dimension, resolved
    (no "full" markers).  `full_dims[d]` records that dimension d was declared full, which
    only matters for writing TF's exact bytes."""

    start: tuple[int, ...]
    size: tuple[int, ...]
    full_dims: tuple[bool, ...] = field(default=(), compare=False)  # how it is spelled, not where

    @staticmethod
    def whole(shape: Sequence[int]) -> "Box":
        return Box(tuple(0 for _ in shape), tuple(shape), tuple(True for _ in shape))

    @property
    def rank(self) -> int:
        return len(self.start)

    @property
    def stop(self) -> tuple[int, ...]:
        return tuple(s + n for s, n in zip(self.start, self.size))

    @property
    def num_elements(self) -> int:
        return math.prod(self.size)

    def covers(self, shape: Sequence[int]) -> bool:
        return all(s == 0 for s in self.start) and tuple(self.size) == tuple(shape)

    def intersect(self, other: "Box") -> "Box | None":
        start = tuple(max(a, b) for a, b in zip(self.start, other.start))
        stop = tuple(min(a, b) for a, b in zip(self.stop, other.stop))
        if any(hi <= lo for lo, hi in zip(start, stop)):
            return None
        return Box(start, tuple(hi - lo for lo, hi in zip(start, stop)))

    def relative_to(self, outer: "Box") -> tuple[Any, ...]:
        """Index expression selecting this box inside an array holding `outer`; it always
        yields a view (``(...,)`` for a scalar, where ``()`` would yield a copy)."""
        return tuple(slice(s - o, s - o + n) for s, o, n in zip(self.start, outer.start, self.size)) or (Ellipsis,)

    def spec(self) -> str:
        """TF's slice spec string, e.g. ``0,4:-``."""
        return ":".join("-" if full else f"{s},{n}"
                        for s, n, full in zip(self.start, self.size, self._full()))

    def _full(self) -> tuple[bool, ...]:
        return self.full_dims or tuple(False for _ in self.start)


def box_in(shape: Sequence[int], start: Sequence[int], size: Sequence[int]) -> Box:
    """A box of a tensor of `shape`; dimensions it spans entirely are marked full.

    Raises `ShapeMismatchError` if it does not fit inside `shape`.
    """
    if not (len(shape) == len(start) == len(size)):
        raise ShapeMismatchError(f"box start {list(start)} / size {list(size)} does not match rank of shape {list(shape)}")
    for dim, s, n in zip(shape, start, size):
        if s < 0 or n < 0 or s + n > dim:
            raise ShapeMismatchError(f"box start {list(start)} size {list(size)} is outside shape {list(shape)}")
    full = tuple(s == 0 and n == dim for dim, s, n in zip(shape, start, size))
    return Box(tuple(int(s) for s in start), tuple(int(n) for n in size), full)


def box_to_proto(box: Box) -> tensor_slice_pb2.TensorSliceProto:
    proto = tensor_slice_pb2.TensorSliceProto()
    for s, n, full in zip(box.start, box.size, box._full()):
        extent = proto.extent.add()
        if not full:
            extent.start = s
            extent.length = n
    return proto


def box_from_proto(proto: tensor_slice_pb2.TensorSliceProto, shape: Sequence[int]) -> Box:
    """Resolve a stored slice against the full `shape`; raise if it does not fit."""
    if len(proto.extent) != len(shape):
        raise CorruptCheckpointError(f"slice has {len(proto.extent)} extents for a rank-{len(shape)} tensor")
    start, size, full = [], [], []
    for extent, dim in zip(proto.extent, shape):
        has_length = extent.WhichOneof("has_length") is not None
        if not has_length or extent.length == FULL:
            if extent.start != 0:
                raise CorruptCheckpointError("full slice extent with non-zero start")
            start.append(0)
            size.append(dim)
            full.append(True)
            continue
        if extent.start < 0 or extent.length < 0 or extent.start + extent.length > dim:
            raise CorruptCheckpointError(
                f"slice extent {extent.start},{extent.length} outside dimension of size {dim}")
        start.append(extent.start)
        size.append(extent.length)
        full.append(False)
    return Box(tuple(start), tuple(size), tuple(full))


def _num_increasing(value: int) -> bytes:
    body = value.to_bytes(8, "big").lstrip(b"\0")
    return bytes((len(body),)) + body


def _signed_num_increasing(value: int) -> bytes:
    x = ~value if value < 0 else value
    if x < 64:
        return bytes(((0x80 ^ value) & 0xFF,))
    bits = x.bit_length() + 1  # one sign bit
    n = max(2, -(-bits // 7))  # each byte of the code carries 7 payload bits
    raw = bytearray((value & ((1 << 80) - 1)).to_bytes(10, "big")[-n:])
    h0, h1 = _SIGNED_HEADERS[n]
    raw[0] ^= h0
    raw[1] ^= h1
    return bytes(raw)


_ESCAPES = {b"\x00": b"\x00\xff", b"\xff": b"\xff\x00"}
_NEEDS_ESCAPE = re.compile(rb"[\x00\xff]")


def _ordered_string(data: bytes) -> bytes:
    return _NEEDS_ESCAPE.sub(lambda m: _ESCAPES[m.group()], data) + b"\x00\x01"


def slice_key(name: bytes, box: Box) -> bytes:
    """The index key of one stored box of tensor `name` (TF's EncodeTensorNameSlice)."""
    parts = [b"\x00", _ordered_string(name), _num_increasing(box.rank)]
    for s, n, full in zip(box.start, box.size, box._full()):
        parts.append(_signed_num_increasing(0 if full else s))
        parts.append(_signed_num_increasing(FULL if full else n))
    return b"".join(parts)
