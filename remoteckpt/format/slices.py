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

import numpy as np

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
        raise ShapeMismatchError(
            f"box start {list(start)} / size {list(size)} does not match rank of shape {list(shape)}")
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


@dataclass(frozen=True, eq=False)
class Boxes:
    """Many boxes of one tensor as ``[count, rank]`` arrays: what a tensor stored as a
    million slices is checked and searched with (a `Box` object per slice would cost more
    than the check).  `full` marks dimensions declared full, as `Box.full_dims` does."""

    start: np.ndarray
    size: np.ndarray
    full: np.ndarray

    def __len__(self) -> int:
        return len(self.start)

    @property
    def stop(self) -> np.ndarray:
        return self.start + self.size

    def box(self, i: int) -> Box:
        return Box(tuple(int(v) for v in self.start[i]), tuple(int(v) for v in self.size[i]),
                   tuple(bool(v) for v in self.full[i]))

    def take(self, rows: np.ndarray) -> "Boxes":
        return Boxes(self.start[rows], self.size[rows], self.full[rows])

    def intersecting(self, box: Box) -> np.ndarray:
        """Rows of the boxes that share an element with `box` (none if `box` is empty)."""
        if not box.num_elements:
            return np.zeros(0, np.int64)
        lo = np.maximum(self.start, np.asarray(box.start, np.int64))
        hi = np.minimum(self.stop, np.asarray(box.stop, np.int64))
        return np.flatnonzero((hi > lo).all(axis=1))


def boxes_from_protos(protos: Sequence[tensor_slice_pb2.TensorSliceProto], shape: Sequence[int]) -> Boxes:
    """`box_from_proto` of every slice, as arrays (raises as it does, for the first bad one)."""
    resolved = [box_from_proto(p, shape) for p in protos]
    rank = len(shape)
    return Boxes(np.array([b.start for b in resolved], np.int64).reshape(len(resolved), rank),
                 np.array([b.size for b in resolved], np.int64).reshape(len(resolved), rank),
                 np.array([b.full_dims for b in resolved], bool).reshape(len(resolved), rank))


_EXTENT, _START, _LENGTH = 0x0A, 0x08, 0x10
"""Tags inside a TensorSliceProto: extent (field 1, a message), start and length (fields 1
and 2 of Extent, varints)."""


def boxes_from_wire(data: bytes | memoryview, tag: int, shape: Sequence[int], count: int) -> Boxes | None:
    """The boxes of `count` slices serialized back to back as fields `tag` (their canonical
    encoding, as protobuf writes it), decoded without a Python step per slice.

    Every field involved is a varint or a message of varints, so the bytes are a sequence of
    varints, pairs of (tag, value or length) in order: a `tag` pair opens a slice, an extent
    pair opens an extent of it, start and length pairs fill that extent.  Returns None for
    anything else (unknown fields, repeated fields) and for slices that do not fit `shape`:
    the caller then decodes slice by slice (`boxes_from_protos`), which names the bad one."""
    raw = np.frombuffer(data, np.uint8)
    rank = len(shape)
    if not len(raw):
        return _empty_boxes(rank) if count == 0 else None
    last = raw < 0x80  # the last byte of each varint
    if not last[-1]:
        return None
    ends = np.flatnonzero(last)
    del last
    width = np.empty_like(ends)
    width[0] = ends[0] + 1
    np.subtract(ends[1:], ends[:-1], out=width[1:])
    longest = int(width.max())
    if len(ends) % 2 or longest > MAX_VARINT_BYTES or (width[0::2] != 1).any():
        return None  # not (one-byte tag, value) pairs
    # from the last (most significant) group of 7 bits down; most varints here are one byte
    values = raw[ends].astype(np.uint64)
    for k in range(1, longest):
        longer = np.flatnonzero(width > k)
        values[longer] = (values[longer] << np.uint64(7)) | (raw[ends[longer] - k] & 0x7F)
    tags, values = values[0::2], values[1::2].view(np.int64)
    pair_begin = ends[0::2]  # the tag's byte
    pair_end = ends[1::2] + 1
    del ends, width
    opens_slice, opens_extent = tags == tag, tags == _EXTENT
    is_start, is_length = tags == _START, tags == _LENGTH
    if not opens_slice[0] or not (opens_slice | opens_extent | is_start | is_length).all():
        return None
    del tags
    # Nesting from the lengths: a slice's bytes end where the next slice begins (the last at
    # the end), an extent's where the next slice or extent begins.  So every start and
    # length belongs to the extent before it, and that extent to the slice before it.
    slices = np.flatnonzero(opens_slice)
    if len(slices) != count or (pair_end[slices] + values[slices] != np.append(pair_begin[slices[1:]], len(raw))).any():
        return None
    nested = np.flatnonzero(opens_slice | opens_extent)
    inner = opens_extent[nested]
    next_begin = np.append(pair_begin[nested[1:]], len(raw))[inner]
    extents = nested[inner]
    if (pair_end[extents] + values[extents] != next_begin).any():
        return None
    del nested, inner, next_begin, pair_begin, pair_end
    slice_of = np.cumsum(opens_slice, dtype=np.int32) - 1
    extent_of = np.cumsum(opens_extent, dtype=np.int32) - 1
    fields = np.flatnonzero(is_start | is_length)
    stray = len(fields) and ((extent_of[fields] < 0).any()
                             or (slice_of[extents][extent_of[fields]] != slice_of[fields]).any())
    if stray:
        return None  # a start or length directly in a slice, outside any extent
    per_slice = np.bincount(slice_of[extents], minlength=count)
    if (per_slice != rank).any():
        return None
    if (np.bincount(extent_of[is_start], minlength=len(extents)) > 1).any() or \
            (np.bincount(extent_of[is_length], minlength=len(extents)) > 1).any():
        return None  # repeated fields: not a canonical encoding
    start: np.ndarray = np.zeros(len(extents), np.int64)
    start[extent_of[is_start]] = values[is_start]
    length: np.ndarray = np.full(len(extents), FULL, np.int64)
    length[extent_of[is_length]] = values[is_length]
    start, length = start.reshape(count, rank), length.reshape(count, rank)
    dims = np.asarray(shape, np.int64).reshape(1, rank)
    full = length == FULL
    bad = np.where(full, start != 0,
                   (start < 0) | (length < 0) | (start > dims) | (length > dims - start)).any(axis=1)
    if bad.any():
        return None
    full_dims = np.broadcast_to(dims, start.shape)
    return Boxes(np.where(full, 0, start), np.where(full, full_dims, length), full)


def _empty_boxes(rank: int) -> Boxes:
    return Boxes(np.zeros((0, rank), np.int64), np.zeros((0, rank), np.int64), np.zeros((0, rank), bool))


MAX_VARINT_BYTES = 10
"""ceil(64 / 7): the longest varint an int64 takes."""

_CODE_LIMITS = np.array([1 << (7 * n - 1) for n in range(2, 10)], np.uint64)
"""An n-byte SignedNumIncreasing code holds magnitudes below 2**(7n-1) (7 payload bits a
byte, one of them the sign): the code length is 2 + the limits a magnitude reaches."""

_HEADERS = np.zeros((11, 2), np.uint8)
for _n, (_h0, _h1) in _SIGNED_HEADERS.items():
    _HEADERS[_n] = (_h0, _h1)


def slice_keys(name: bytes, boxes: Boxes) -> list[bytes]:
    """`slice_key` of every box, computed for all of them at once."""
    count, rank = boxes.start.shape
    prefix = np.frombuffer(b"\x00" + _ordered_string(name) + _num_increasing(rank), np.uint8)
    if count == 0:
        return []
    # the 2*rank numbers of each key, in order: start (0 if full) and length (-1 if full)
    numbers: np.ndarray = np.empty((count, rank, 2), np.int64)
    numbers[:, :, 0] = np.where(boxes.full, 0, boxes.start)
    numbers[:, :, 1] = np.where(boxes.full, FULL, boxes.size)
    numbers = numbers.reshape(-1)
    magnitude = np.where(numbers < 0, ~numbers, numbers).astype(np.uint64)
    width = np.where(magnitude < 64, 1, 2 + np.searchsorted(_CODE_LIMITS, magnitude, side="right"))
    # the low 10 bytes of each number, big-endian, two's complement (as _signed_num_increasing)
    code = np.empty((len(numbers), 10), np.uint8)
    code[:, :2] = np.where(numbers < 0, 0xFF, 0)[:, None]
    code[:, 2:] = numbers.astype(">i8").view(np.uint8).reshape(-1, 8)
    rows = np.arange(len(numbers))
    first = 10 - width
    one = width == 1
    code[rows[one], 9] ^= 0x80
    wide = rows[~one]
    code[wide, first[wide]] ^= _HEADERS[width[wide], 0]
    code[wide, first[wide] + 1] ^= _HEADERS[width[wide], 1]
    used = np.arange(10)[None, :] >= first[:, None]
    key_len = len(prefix) + width.reshape(count, 2 * rank).sum(axis=1)
    key_end = np.cumsum(key_len)
    key_start = key_end - key_len
    out = np.empty(int(key_end[-1]), np.uint8)
    out[(key_start[:, None] + np.arange(len(prefix))).reshape(-1)] = np.tile(prefix, count)
    body = np.ones(len(out), bool)
    body[(key_start[:, None] + np.arange(len(prefix))).reshape(-1)] = False
    out[body] = code[used]
    data = out.tobytes()
    return [data[a:b] for a, b in zip(key_start.tolist(), key_end.tolist())]
