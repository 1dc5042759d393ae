"""Interoperability with TensorFlow itself (skipped where TensorFlow is not installed).

1. Byte identity: `tf.raw_ops.SaveV2` and `remoteckpt.save` given the same tensors in the same
   order write the same `.index` and `.data-00000-of-00001` bytes.  (A partitioned tensor goes to
   remoteckpt as ``{name: [Slice, ...]}``, so its boxes are written together; SaveV2 gets them
   in that order too.  Numeric payloads over `IOOptions.crc_chunk` (1 MiB) carry remoteckpt's
   per-chunk CRC extension in the index unless ``crc_chunk=0``: tested separately.)
2. remoteckpt writes, TensorFlow reads (`tf.train.load_checkpoint`, `tf.raw_ops.RestoreV2`).
3. TensorFlow writes (`SaveV2`, `MergeV2Checkpoints`, `tf.train.Checkpoint.write`, sharded or
   not), remoteckpt reads (`CheckpointReader`, `load`, `list_variables`, `get_slice`).
4. TensorFlow assembles partitioned tensors remoteckpt wrote, whole and in sub-boxes.

Values are compared exactly: fixed-width tensors by their raw bytes (so NaN payloads, -0.0 and
signalling NaNs count), string tensors element by element as `bytes`.

TensorFlow behaviours these tests rely on (TF 2.21, checked when writing them):
* One SaveV2 call takes several slices of one name (same name repeated in `tensor_names`, each
  with its own `shape_and_slices` spec) and writes one partitioned tensor.
* SaveV2 rejects a slice extent of length 0 ("Expected non-negative start and positive length").
* TF assembles a partitioned tensor (whole read, or a box that is not exactly one stored slice)
  only for float, double, int8/16/32/64, uint8, bool, complex64/128, bfloat16, int4, uint4 (and
  the quantized types); for every other dtype it reads only a box equal to one stored slice,
  spelled exactly as stored ("2,2:-" and "2,2:0,3" differ), and fails with
  "Dtype half not supported." otherwise, even for a variable it sharded itself.
* `tf.train.experimental.MaxShardSizePolicy` (TF's own sharded saves) has traps the strategies
  keep clear of: it needs a CPU `Slice` kernel for the dtype (none for float8 fnuz/b11,
  int4/uint4/int2/uint2, float4); it never finishes, allocating without bound, when the
  thinnest slab of a tensor (or one string element) is larger than `max_shard_size`; it
  silently leaves zero-size variables out of the checkpoint (which then cannot be restored);
  it fails on string variables of rank >= 2.
* tf.Variable cannot hold float8 e4m3fnuz/e4m3b11fnuz/e5m2fnuz on CPU (no AssignVariableOp).
* TF's `CheckpointReader` maps fail on names that are not UTF-8; remoteckpt decodes them with
  surrogateescape.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import itertools
import math
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tf.get_logger().setLevel("ERROR")  # MaxShardSizePolicy warns about every scalar larger than a shard

import ml_dtypes  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import remoteckpt  # noqa: E402
from remoteckpt import Slice  # noqa: E402

pytestmark = pytest.mark.tensorflow

DATA = ".data-00000-of-00001"
TABLE_MAGIC = bytes.fromhex("57fb808b247547db")

# --- dtypes ------------------------------------------------------------------------------

STRING = np.dtype(object)
NUMERIC_DTYPES = [np.dtype(d) for d in (
    np.float16, np.float32, np.float64, ml_dtypes.bfloat16, np.complex64, np.complex128,
    np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_,
    ml_dtypes.float8_e5m2, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz,
    ml_dtypes.float8_e4m3b11fnuz, ml_dtypes.float8_e5m2fnuz,
    ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2, ml_dtypes.float4_e2m1fn,
)]
ALL_DTYPES = [*NUMERIC_DTYPES, STRING]

ASSEMBLABLE = {np.dtype(d) for d in (
    np.float32, np.float64, np.int32, np.uint8, np.int16, np.int8, np.complex64, np.complex128,
    np.int64, np.bool_, ml_dtypes.bfloat16, ml_dtypes.int4, ml_dtypes.uint4)}
"""Dtypes TF's RestoreV2 copies out of stored slices (whole reads and arbitrary boxes)."""

NOT_ASSEMBLABLE = [d for d in ALL_DTYPES if d not in ASSEMBLABLE]

SHARDABLE = [d for d in ALL_DTYPES if d not in {np.dtype(x) for x in (
    ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e4m3b11fnuz, ml_dtypes.float8_e5m2fnuz,
    ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2, ml_dtypes.float4_e2m1fn)}]
"""Dtypes TF's MaxShardSizePolicy can split (it needs a CPU Slice kernel)."""

VARIABLE_DTYPES = [d for d in ALL_DTYPES if d not in {np.dtype(x) for x in (
    ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e4m3b11fnuz, ml_dtypes.float8_e5m2fnuz)}]
"""Dtypes a tf.Variable can hold on CPU (the fnuz/b11 float8 types have no AssignVariableOp)."""

_INT_RANGES = {np.dtype(ml_dtypes.int4): (-8, 7), np.dtype(ml_dtypes.uint4): (0, 15),
               np.dtype(ml_dtypes.int2): (-2, 1), np.dtype(ml_dtypes.uint2): (0, 3)}
_FLOAT4 = np.dtype(ml_dtypes.float4_e2m1fn)


def tf_dtype(dtype: np.dtype) -> Any:
    return tf.string if dtype == STRING else tf.as_dtype(dtype)


def numpy_dtype(dtype: Any) -> np.dtype:
    """TF's DType as the numpy dtype remoteckpt uses (strings: object)."""
    return STRING if dtype == tf.string else np.dtype(dtype.as_numpy_dtype)


# --- tensors, pieces, and writing them both ways ---------------------------------------------


def object_array(elements: Sequence[bytes], shape: Sequence[int]) -> np.ndarray:
    out = np.empty(len(elements), dtype=object)
    for i, e in enumerate(elements):
        out[i] = e
    return out.reshape(tuple(shape))


def slice_spec(full_shape: Sequence[int], start: Sequence[int], size: Sequence[int],
               explicit: bool = False) -> str:
    """SaveV2/RestoreV2 shape_and_slice string, e.g. "4 3 0,2:-".  A dimension the box spans
    entirely is "-" (what remoteckpt writes) unless `explicit` spells it "0,n"."""
    extents = ["-" if s == 0 and n == d and not explicit else f"{s},{n}"
               for d, s, n in zip(full_shape, start, size)]
    return " ".join(str(d) for d in full_shape) + " " + ":".join(extents)


def box_index(start: Sequence[int], size: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(s, s + n) for s, n in zip(start, size))


@dataclass(frozen=True)
class Piece:
    """One input of a save: a whole tensor, or one box of a partitioned tensor."""

    name: str | bytes
    array: np.ndarray
    full_shape: tuple[int, ...] | None = None
    offset: tuple[int, ...] | None = None
    explicit: bool = False  # TF only: full dimensions spelled "0,n" (TF1 partitioner style)
    rc_array: Any = None  # what remoteckpt gets instead of `array` (same values, other layout)

    @property
    def spec(self) -> str:
        if self.full_shape is None:
            return ""
        assert self.offset is not None
        return slice_spec(self.full_shape, self.offset, self.array.shape, self.explicit)

    def rc_value(self) -> Any:
        array = self.array if self.rc_array is None else self.rc_array
        if self.full_shape is None:
            return array
        assert not self.explicit, "remoteckpt always writes a full-span dimension as '-'"
        return Slice(array, self.full_shape, self.offset)


@dataclass(frozen=True)
class Tensor:
    """A tensor of a generated set: its full value and how it is stored."""

    name: str
    value: np.ndarray
    boxes: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] | None = None  # (start, size)
    explicit: bool = False

    @property
    def stored_in_slices(self) -> bool:
        """Whether the checkpoint holds it as slices (a lone box covering all is stored plain)."""
        return self.boxes is not None and len(self.boxes) > 1

    @property
    def tf_reads_whole(self) -> bool:
        return not self.stored_in_slices or self.value.dtype in ASSEMBLABLE

    def pieces(self) -> list[Piece]:
        if self.boxes is None:
            return [Piece(self.name, self.value)]
        return [Piece(self.name, self.value[box_index(start, size)], self.value.shape, start, self.explicit)
                for start, size in self.boxes]


def _name_bytes(name: str | bytes) -> bytes:
    return name.encode("utf-8") if isinstance(name, str) else name


def to_tf(array: np.ndarray) -> Any:
    return tf.constant(array, dtype=tf_dtype(array.dtype))


def tf_save(prefix: str | Path, pieces: Sequence[Piece]) -> None:
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=tf.constant([_name_bytes(p.name) for p in pieces], dtype=tf.string),
        shape_and_slices=tf.constant([p.spec for p in pieces], dtype=tf.string),
        tensors=[to_tf(p.array) for p in pieces])


def grouped(pieces: Sequence[Piece]) -> list[Piece]:
    """The pieces with every tensor's boxes together, tensors in order of first appearance:
    the data order `remoteckpt.save` produces from ``{name: [Slice, ...]}``."""
    by_name: dict[str | bytes, list[Piece]] = {}
    for p in pieces:
        by_name.setdefault(p.name, []).append(p)
    return [p for group in by_name.values() for p in group]


def rc_save(prefix: str | Path, pieces: Sequence[Piece], options: Any = None) -> None:
    """`remoteckpt.save` through its public API: a partitioned tensor as a list of `Slice`s."""
    tensors: dict[str | bytes, Any] = {}
    for p in grouped(pieces):
        if p.full_shape is None:
            tensors[p.name] = p.rc_value()
        else:
            tensors.setdefault(p.name, []).append(p.rc_value())
    kwargs = {} if options is None else {"options": options}
    assert remoteckpt.save(tensors, prefix, **kwargs) == os.fspath(prefix)


# --- reading and comparing -----------------------------------------------------------------


def normalize(value: Any, dtype: np.dtype) -> np.ndarray:
    """TF hands back bytes / numpy scalars for 0-d tensors: make them arrays."""
    return np.asarray(value, dtype=object) if dtype == STRING else np.asarray(value)


def assert_identical(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    assert isinstance(actual, np.ndarray), f"{what}: got {type(actual).__name__}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if expected.dtype == STRING:
        got = list(actual.reshape(-1))
        assert all(type(x) is bytes for x in got), f"{what}: string elements must be bytes"
        assert got == list(expected.reshape(-1)), f"{what}: string elements differ"
    else:
        got_bytes = np.ascontiguousarray(actual).tobytes()
        want_bytes = np.ascontiguousarray(expected).tobytes()
        assert got_bytes == want_bytes, f"{what}: bytes differ:\n {got_bytes.hex()}\n {want_bytes.hex()}"


def tf_get(reader: Any, name: str) -> np.ndarray:
    dtype = numpy_dtype(reader.get_variable_to_dtype_map()[name])
    return normalize(reader.get_tensor(name), dtype)


def tf_restore(prefix: str | Path, requests: Sequence[tuple[str, str, np.dtype]]) -> list[np.ndarray]:
    """RestoreV2 of (name, shape_and_slice, dtype) requests, in one op."""
    if not requests:
        return []
    out = tf.raw_ops.RestoreV2(
        prefix=str(prefix),
        tensor_names=tf.constant([_name_bytes(n) for n, _, _ in requests], dtype=tf.string),
        shape_and_slices=tf.constant([s for _, s, _ in requests], dtype=tf.string),
        dtypes=[tf_dtype(d) for _, _, d in requests])
    return [normalize(t.numpy(), d) for t, (_, _, d) in zip(out, requests)]


def checkpoint_files(prefix: Path) -> list[str]:
    return sorted(p.name for p in prefix.parent.iterdir() if p.name.startswith(prefix.name))


def assert_same_bytes(tf_file: Path, rc_file: Path) -> None:
    want, got = tf_file.read_bytes(), rc_file.read_bytes()
    if want == got:
        return
    at = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    lo = max(0, at - 16)
    pytest.fail(f"{rc_file.name} differs from TF's ({len(got)} vs {len(want)} bytes), first at byte {at}:\n"
                f"  TF         {want[lo:at + 32].hex(' ')}\n  remoteckpt {got[lo:at + 32].hex(' ')}")


def assert_byte_identical(tmp_path: Path, pieces: Sequence[Piece], options: Any = None) -> tuple[Path, Path]:
    """SaveV2 and remoteckpt.save, given the same tensors in the same order, write the same bytes."""
    (tmp_path / "tf").mkdir()
    (tmp_path / "rc").mkdir()
    tf_prefix, rc_prefix = tmp_path / "tf" / "ckpt", tmp_path / "rc" / "ckpt"
    tf_save(tf_prefix, grouped(pieces))
    rc_save(rc_prefix, pieces, options)
    assert checkpoint_files(rc_prefix) == ["ckpt" + DATA, "ckpt.index"], "remoteckpt left other files behind"
    assert checkpoint_files(tf_prefix) == checkpoint_files(rc_prefix)
    assert_same_bytes(Path(str(tf_prefix) + ".index"), Path(str(rc_prefix) + ".index"))
    assert_same_bytes(Path(str(tf_prefix) + DATA), Path(str(rc_prefix) + DATA))
    return tf_prefix, rc_prefix


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def data_block_count(index: bytes) -> int:
    """Data blocks of a TF index table: entries of its index block (restart interval 1, so the
    restart count is the entry count).  Parsed here independently of remoteckpt."""
    footer = index[-48:]
    assert footer[40:] == TABLE_MAGIC
    pos = 0
    for _ in range(2):  # metaindex handle
        _, pos = _varint(footer, pos)
    offset, pos = _varint(footer, pos)
    size, pos = _varint(footer, pos)
    block = index[offset : offset + size]
    return int.from_bytes(block[-4:], "little")


_counter = itertools.count()


@contextmanager
def fresh_prefix(tmp_path: Path) -> Iterator[Path]:
    """A new prefix under the test's tmp_path for one hypothesis example, removed afterwards."""
    directory = tmp_path / f"ex{next(_counter)}"
    directory.mkdir()
    try:
        yield directory / "ckpt"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --- deterministic values ---------------------------------------------------------------------


def sample(dtype: Any, shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """Arbitrary but fixed values of `dtype` and `shape` (every bit pattern where all are valid)."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    n = math.prod(shape)
    if dtype == STRING:
        pool = [b"", b"\x00", b"\xff", b"\x00\xff", "h\u00e9llo".encode(), b"x" * 130, bytes(range(256))]
        return object_array([pool[i] for i in rng.integers(0, len(pool), n)], shape)
    if dtype == np.bool_:
        return rng.integers(0, 2, n).astype(np.bool_).reshape(shape)
    if dtype in _INT_RANGES:
        lo, hi = _INT_RANGES[dtype]
        return rng.integers(lo, hi + 1, n).astype(np.int8).astype(dtype).reshape(shape)
    if dtype == _FLOAT4:
        return rng.integers(0, 16, n).astype(np.uint8).view(dtype).reshape(shape)
    return np.frombuffer(rng.bytes(n * dtype.itemsize), dtype=dtype).reshape(shape).copy()


# --- hypothesis strategies ------------------------------------------------------------------

HYPOTHESIS = settings(
    max_examples=int(os.environ.get("REMOTECKPT_INTEROP_EXAMPLES", "25")),  # raise it for a bug hunt
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large, HealthCheck.large_base_example])

SHORT_ELEMENTS = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([b"", b"\x00", b"\xff", b"\x00\xff", b"\x80\x7f"]),
)
STRING_ELEMENTS = st.one_of(
    SHORT_ELEMENTS,
    st.text(max_size=6).map(lambda s: s.encode("utf-8")),  # non-ASCII, multi-byte UTF-8
    st.builds(lambda b, n: bytes([b]) * n, st.integers(0, 255), st.integers(100, 3000)),  # 2-byte varints
)

NAMES = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=10),
    st.sampled_from(["\x00", "\x00p", "\x7f", "\u00ff", "\U0010ffff", "a.b/c", "n" * 300]),
)
"""Tensor names: any non-empty Unicode without lone surrogates (not UTF-8), NUL included (a
plain name starting with NUL sits among the slice keys; TF and remoteckpt both list it)."""


def values(dtype: np.dtype, shape: Sequence[int], elements: st.SearchStrategy[bytes] = STRING_ELEMENTS
           ) -> st.SearchStrategy[np.ndarray]:
    shape = tuple(shape)
    n = math.prod(shape)
    if dtype == STRING:
        return st.lists(elements, min_size=n, max_size=n).map(lambda xs: object_array(xs, shape))
    if dtype == np.bool_:
        return st.lists(st.booleans(), min_size=n, max_size=n).map(
            lambda xs: np.array(xs, dtype=np.bool_).reshape(shape))
    if dtype in _INT_RANGES:
        lo, hi = _INT_RANGES[dtype]
        return st.lists(st.integers(lo, hi), min_size=n, max_size=n).map(
            lambda xs: np.array(xs, dtype=np.int8).astype(dtype).reshape(shape))
    if dtype == _FLOAT4:
        return st.lists(st.integers(0, 15), min_size=n, max_size=n).map(
            lambda xs: np.array(xs, dtype=np.uint8).view(dtype).reshape(shape))
    # Raw bytes: every bit pattern, NaN payloads and signalling NaNs included.
    return st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize).map(
        lambda b: np.frombuffer(b, dtype=dtype).reshape(shape).copy())


@st.composite
def tensors(draw: st.DrawFn, name: str, dtypes: Sequence[np.dtype] = ALL_DTYPES, sliced: bool = True,
            explicit: bool = False, elements: st.SearchStrategy[bytes] = STRING_ELEMENTS,
            min_side: int = 0) -> Tensor:
    """A whole tensor (any rank 0..3, zero-size unless `min_side`) or one stored as boxes that tile it."""
    # Strings are one dtype of many but have the most format to get wrong: draw them more often.
    dtype = draw(st.sampled_from([*dtypes, *([STRING] * 5 if STRING in dtypes else [])]))
    if not (sliced and draw(st.booleans())):
        sides = [0, 1, 2, 3, 4, 1, 2, 3] if min_side == 0 else [1, 2, 3, 4]  # zero-size often
        shape = draw(st.lists(st.sampled_from(sides), max_size=3))
        return Tensor(name, draw(values(dtype, shape, elements)))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
    value = draw(values(dtype, shape, elements))
    intervals = []
    for dim in shape:
        cuts = sorted(draw(st.sets(st.integers(1, dim - 1), max_size=2))) if dim > 1 else []
        bounds = [0, *cuts, dim]
        intervals.append([(a, b - a) for a, b in zip(bounds, bounds[1:])])
    boxes = [(tuple(s for s, _ in combo), tuple(n for _, n in combo)) for combo in itertools.product(*intervals)]
    boxes = draw(st.permutations(boxes))
    return Tensor(name, value, tuple(boxes), explicit=explicit and draw(st.booleans()))


@st.composite
def tensor_sets(draw: st.DrawFn, dtypes: Sequence[np.dtype] = ALL_DTYPES, sliced: bool = True,
                explicit: bool = False, max_size: int = 5) -> tuple[list[Tensor], list[Piece]]:
    """Tensors with distinct names, and their pieces in a random order (boxes of different
    tensors interleaved, as SaveV2 allows)."""
    names = draw(st.lists(NAMES, min_size=1, max_size=max_size, unique=True))
    ts = [draw(tensors(n, dtypes, sliced, explicit)) for n in names]
    pieces = draw(st.permutations([p for t in ts for p in t.pieces()]))
    return ts, list(pieces)


@st.composite
def boxes_in(draw: st.DrawFn, shape: Sequence[int], nonempty: bool = False) -> tuple[tuple[int, ...], tuple[int, ...]]:
    start, size = [], []
    for dim in shape:
        if nonempty:
            s = draw(st.integers(0, dim - 1))
            n = draw(st.integers(1, dim - s))
        else:
            s = draw(st.integers(0, dim))
            n = draw(st.integers(0, dim - s))
        start.append(s)
        size.append(n)
    return tuple(start), tuple(size)


# === 1. byte identity ========================================================================


def _float_grid(seed: int = 0) -> np.ndarray:
    return sample(np.float32, (4, 3), seed)


def _byte_cases() -> dict[str, list[Piece]]:
    grid = _float_grid()
    long_strings = object_array([b"a" * n for n in (127, 128, 16383, 16384, 70000)], (5,))
    wide = sample(np.float32, (10000, 2), 3)
    cube = sample(np.int32, (3, 4, 5), 4)
    strings_2d = sample(STRING, (4, 2), 5)
    halves = sample(np.float16, (6,), 6)
    cases: dict[str, list[Piece]] = {
        "float32_2d": [Piece("w", sample(np.float32, (3, 4)))],
        "int64_scalar": [Piece("step", np.array(-7, dtype=np.int64))],
        "zero_size_float": [Piece("empty", np.zeros((0,), np.float32)), Piece("empty_2x0", np.zeros((2, 0), np.float32)),
                            Piece("after", np.array([1.0, 2.0], np.float32))],
        "string_vector": [Piece("s", object_array([b"hi", b"", b"\x00\xff", b"\xff\x00", "h\u00e9".encode()], (5,)))],
        "empty_string_vector": [Piece("e", object_array([], (0,))), Piece("e2x0", object_array([], (2, 0)))],
        "string_scalar": [Piece("z", np.array(b"scalar\x00", dtype=object)), Piece("z_empty", np.array(b"", dtype=object))],
        "long_strings": [Piece("long", long_strings)],
        "every_numeric_dtype": [Piece(f"t_{d.name}", sample(d, (2, 3), i)) for i, d in enumerate(NUMERIC_DTYPES)],
        "every_dtype_scalar_and_empty": [
            p for i, d in enumerate(ALL_DTYPES)
            for p in (Piece(f"s_{d.name}", sample(d, (), i)), Piece(f"e_{d.name}", sample(d, (0, 2), i)))],
        "partitioned_float": [Piece("p", grid[:2], (4, 3), (0, 0)), Piece("p", grid[2:], (4, 3), (2, 0))],
        "partitioned_among_others": [
            Piece("a", np.float64(1.5) * np.ones(2)), Piece("q", grid[:, 1:], (4, 3), (0, 1)),
            Piece("q", grid[:, :1], (4, 3), (0, 0)), Piece("z", np.array(3, np.int32))],
        "partitioned_grid_3d": [
            Piece("cube", cube[box_index(s, n)], cube.shape, s)
            for s, n in [((0, 0, 0), (2, 4, 2)), ((2, 0, 0), (1, 4, 2)), ((0, 0, 2), (3, 4, 3))]],
        "partitioned_large_offsets": [  # starts 64 and 8192 take 2- and 3-byte signed codes
            Piece("wide", wide[8192:], wide.shape, (8192, 0)), Piece("wide", wide[:64], wide.shape, (0, 0)),
            Piece("wide", wide[64:8192], wide.shape, (64, 0))],
        "partitioned_strings_and_half": [
            Piece("ps", strings_2d[:1], (4, 2), (0, 0)), Piece("ps", strings_2d[1:], (4, 2), (1, 0)),
            Piece("ph", halves[3:], (6,), (3,)), Piece("ph", halves[:3], (6,), (0,))],
        "partitioned_zero_size_columns": [
            Piece("cols0", np.zeros((2, 0), np.float32), (4, 0), (0, 0)),
            Piece("cols0", np.zeros((2, 0), np.float32), (4, 0), (2, 0))],
        "slice_covering_everything": [Piece("all", grid, (4, 3), (0, 0)), Piece("vec", grid[0], (3,), (0,))],
        "names_needing_escapes": [
            Piece(b"a\x00b\xffc", grid[:1], (4, 3), (0, 0)), Piece(b"a\x00b\xffc", grid[1:], (4, 3), (1, 0)),
            Piece(b"\x7f", np.ones(1, np.int8)), Piece(b"\x80", np.ones(1, np.int8)),
            Piece("\u00e9/\u00fc.x", np.ones(1, np.int8)), Piece(b"\xff\xff", np.ones(1, np.int8))],
        "huge_keys": [  # one key > block size, one > 2x block size (TF's pre-flush)
            Piece("a", np.ones(1, np.float32)), Piece("b" * 300_000, np.ones(1, np.float32)),
            Piece("c" * 600_000, np.ones(1, np.float32)), Piece("d", np.ones(1, np.float32))],
    }
    # remoteckpt given other layouts of the same values (big-endian, Fortran, strided, str):
    big = sample(np.float64, (3, 4), 7)
    cases["other_numpy_layouts"] = [
        Piece("big_endian", big, rc_array=big.astype(">f8")),
        Piece("fortran", big, rc_array=np.asfortranarray(big)),
        Piece("strided", big[:, ::2].copy(), rc_array=big[:, ::2]),
        Piece("complex_big_endian", sample(np.complex64, (3,), 8), rc_array=sample(np.complex64, (3,), 8).astype(">c8")),
        Piece("unicode", object_array(["h\u00e9llo".encode(), b"", "\u4e2d".encode()], (3,)),
              rc_array=np.array(["h\u00e9llo", "", "\u4e2d"])),
        Piece("str_objects", object_array([b"a", "\u00fc".encode()], (2,)), rc_array=np.array(["a", "\u00fc"], dtype=object)),
        Piece("slice_big_endian", big[:1], (3, 4), (0, 0), rc_array=big[:1].astype(">f8")),
        Piece("slice_big_endian", big[1:], (3, 4), (1, 0), rc_array=big[1:].astype(">f8")),
    ]
    return cases


BYTE_CASES = _byte_cases()


@pytest.mark.parametrize("case", sorted(BYTE_CASES))
def test_savev2_and_remoteckpt_write_identical_bytes(tmp_path: Path, case: str) -> None:
    pieces = BYTE_CASES[case]
    _, rc_prefix = assert_byte_identical(tmp_path, pieces)
    # remoteckpt reads back what the pieces make up (names that are not UTF-8 via surrogateescape).
    expected: dict[str, np.ndarray] = {}
    for p in pieces:
        name = p.name if isinstance(p.name, str) else p.name.decode("utf-8", "surrogateescape")
        if p.full_shape is None:
            expected[name] = p.array
        else:
            full = expected.setdefault(name, np.empty(p.full_shape, dtype=p.array.dtype))
            full[box_index(p.offset, p.array.shape)] = p.array
    loaded = remoteckpt.load(rc_prefix)
    assert set(loaded) == set(expected)
    for name, value in expected.items():
        assert_identical(loaded[name], value, repr(name))


MiB = 1 << 20


def _large_pieces() -> list[Piece]:
    return [
        Piece("exactly_one_chunk", sample(np.float32, (MiB // 4,), 9)),
        Piece("just_over", sample(np.uint8, (MiB + 1,), 10)),
        Piece("big_odd", sample(np.float64, (3, 131_075), 11)),
        Piece("big_slices", sample(np.int16, (MiB, 2), 12)[:MiB // 2], (MiB, 2), (0, 0)),
        Piece("big_slices", sample(np.int16, (MiB, 2), 12)[MiB // 2:], (MiB, 2), (MiB // 2, 0)),
        Piece("big_strings", object_array([b"\xab" * 1_000_003, b"", b"z" * 2_000_000], (3,))),
    ]


def test_large_tensors_are_identical_without_chunk_crcs(tmp_path: Path) -> None:
    """Multi-megabyte payloads: byte-identical once remoteckpt's per-chunk CRC extension is off."""
    assert_byte_identical(tmp_path, _large_pieces(), options=remoteckpt.IOOptions(crc_chunk=0))


def test_large_tensors_differ_only_by_chunk_crc_extension(tmp_path: Path) -> None:
    """By default numeric payloads over one CRC chunk (1 MiB) carry remoteckpt's extension
    fields: the data file is still TF's byte for byte, the index entries equal TF's once those
    fields are cleared, and TF reads it (unknown proto fields are ignored)."""
    pieces = _large_pieces()
    (tmp_path / "tf").mkdir()
    (tmp_path / "rc").mkdir()
    tf_prefix, rc_prefix = tmp_path / "tf" / "ckpt", tmp_path / "rc" / "ckpt"
    tf_save(tf_prefix, pieces)
    rc_save(rc_prefix, pieces)
    assert_same_bytes(Path(str(tf_prefix) + DATA), Path(str(rc_prefix) + DATA))
    tf_entries = remoteckpt.CheckpointReader(tf_prefix).index.entries
    rc_entries = remoteckpt.CheckpointReader(rc_prefix).index.entries
    assert tf_entries.keys() == rc_entries.keys()
    extended = set()
    for key, entry in rc_entries.items():
        stripped = type(entry)()
        stripped.CopyFrom(entry)
        if stripped.chunk_size:
            extended.add(key)
            assert len(stripped.chunk_crc32c) == -(-stripped.size // stripped.chunk_size)
        stripped.ClearField("chunk_size")
        stripped.ClearField("chunk_crc32c")
        assert stripped.SerializeToString() == tf_entries[key].SerializeToString(), key
    slice_keys = {k for k in rc_entries if k.startswith(b"\x00")}
    assert extended == {b"just_over", b"big_odd", *slice_keys}, "only numeric payloads over 1 MiB"
    # remoteckpt's ranged reads, with chunk CRCs (its file) and without (TF's file).
    big = pieces[2].array
    full = np.concatenate([pieces[3].array, pieces[4].array])
    for prefix in (rc_prefix, tf_prefix):
        with remoteckpt.CheckpointReader(prefix) as rc_reader:
            for box in [(slice(1, 3), slice(65_530, 131_075)), (slice(0, 1), slice(3, 4)), (slice(2, 3),)]:
                assert_identical(rc_reader.get_slice("big_odd", box), big[box], f"{prefix.parent.name} big_odd{box}")
            for box in [(slice(MiB // 2 - 3, MiB // 2 + 70_000), slice(1, 2)), (slice(MiB - 1, MiB),)]:
                assert_identical(rc_reader.get_slice("big_slices", box), full[box], f"{prefix.parent.name} big_slices{box}")
    reader = tf.train.load_checkpoint(str(rc_prefix))
    for p in pieces:
        if p.full_shape is None:
            assert_identical(tf_get(reader, p.name), p.array, p.name)
        else:
            got = tf_restore(rc_prefix, [(p.name, p.spec, p.array.dtype)])[0]
            assert_identical(got, p.array, p.spec)


def test_one_savev2_call_takes_several_slices_of_one_name(tmp_path: Path) -> None:
    """TF behaviour the partitioned cases rely on: the full entry lists both slices."""
    grid = _float_grid()
    prefix = tmp_path / "ckpt"
    tf_save(prefix, BYTE_CASES["partitioned_float"])
    assert tf.train.list_variables(str(prefix)) == [("p", [4, 3])]
    assert_identical(tf_get(tf.train.load_checkpoint(str(prefix)), "p"), grid)
    entry = remoteckpt.CheckpointReader(prefix).index.entries[b"p"]
    assert [(e.start, e.length) for s in entry.slices for e in s.extent[:1]] == [(0, 2), (2, 2)]


def test_index_spanning_several_blocks_is_identical(tmp_path: Path) -> None:
    count = 20_001
    values_ = (np.arange(2 * count, dtype=np.float32) * np.float32(0.5)).reshape(count, 2)
    names = [f"layer{i:05d}/kernel" for i in range(count)]
    tf_prefix, rc_prefix = tmp_path / "tf", tmp_path / "rc"
    tf.raw_ops.SaveV2(prefix=str(tf_prefix), tensor_names=names, shape_and_slices=[""] * count,
                      tensors=tf.unstack(tf.constant(values_)))
    remoteckpt.save({n: v for n, v in zip(names, values_)}, rc_prefix)
    index = Path(str(tf_prefix) + ".index").read_bytes()
    assert data_block_count(index) >= 3, "the index should span several 256 KiB blocks"
    assert_same_bytes(Path(str(tf_prefix) + ".index"), Path(str(rc_prefix) + ".index"))
    assert_same_bytes(Path(str(tf_prefix) + DATA), Path(str(rc_prefix) + DATA))
    reader = tf.train.load_checkpoint(str(rc_prefix))
    assert_identical(reader.get_tensor("layer20000/kernel"), values_[-1])
    assert_identical(reader.get_tensor("layer00000/kernel"), values_[0])


@HYPOTHESIS
@given(tset=tensor_sets())
def test_random_sets_are_byte_identical(tmp_path: Path, tset: tuple[list[Tensor], list[Piece]]) -> None:
    _, pieces = tset
    with fresh_prefix(tmp_path) as prefix:
        assert_byte_identical(prefix.parent, pieces)


# === 2. remoteckpt writes, TensorFlow reads =====================================================


def _check_tf_reads(prefix: Path, ts: Sequence[Tensor], data: st.DataObject) -> None:
    reader = tf.train.load_checkpoint(str(prefix))
    assert reader.get_variable_to_shape_map() == {t.name: list(t.value.shape) for t in ts}
    assert {n: numpy_dtype(d) for n, d in reader.get_variable_to_dtype_map().items()} == {t.name: t.value.dtype for t in ts}
    assert tf.train.list_variables(str(prefix)) == sorted((t.name, list(t.value.shape)) for t in ts)
    requests: list[tuple[str, str, np.dtype]] = []
    expected: list[np.ndarray] = []
    for t in ts:
        if t.tf_reads_whole:
            assert_identical(tf_get(reader, t.name), t.value, f"TF get_tensor({t.name!r})")
            requests.append((t.name, "", t.value.dtype))
            expected.append(t.value)
        else:  # TF reads these only slice by slice, each spelled exactly as stored
            for start, size in t.boxes or ():
                requests.append((t.name, slice_spec(t.value.shape, start, size), t.value.dtype))
                expected.append(t.value[box_index(start, size)])
        if t.value.dtype in ASSEMBLABLE and t.value.ndim and t.value.size:
            start, size = data.draw(boxes_in(t.value.shape, nonempty=True), label=f"box of {t.name!r}")
            requests.append((t.name, slice_spec(t.value.shape, start, size, data.draw(st.booleans())), t.value.dtype))
            expected.append(t.value[box_index(start, size)])
    for (name, spec, _), got, want in zip(requests, tf_restore(prefix, requests), expected):
        assert_identical(got, want, f"RestoreV2({name!r}, {spec!r})")


@HYPOTHESIS
@given(data=st.data(), tset=tensor_sets())
def test_tf_reads_what_remoteckpt_writes(tmp_path: Path, data: st.DataObject,
                                         tset: tuple[list[Tensor], list[Piece]]) -> None:
    ts, pieces = tset
    with fresh_prefix(tmp_path) as prefix:
        rc_save(prefix, pieces)
        _check_tf_reads(prefix, ts, data)


def test_tf_reads_unicode_and_str_elements_as_utf8(tmp_path: Path) -> None:
    prefix = tmp_path / "ckpt"
    remoteckpt.save({"u": np.array([["\u00e9", ""], ["\U0001f600", "a"]]), "o": np.array("\u4e2d", dtype=object)}, prefix)
    reader = tf.train.load_checkpoint(str(prefix))
    assert_identical(tf_get(reader, "u"), object_array(["\u00e9".encode(), b"", "\U0001f600".encode(), b"a"], (2, 2)))
    assert_identical(tf_get(reader, "o"), np.array("\u4e2d".encode(), dtype=object))


# === 3. TensorFlow writes, remoteckpt reads =====================================================


def python_slices() -> st.SearchStrategy[slice]:
    bound = st.none() | st.integers(-7, 7)
    return st.builds(slice, bound, bound, st.sampled_from([None, 1]))


def _check_remoteckpt_reads(prefix: Path, expected: Mapping[str, np.ndarray], data: st.DataObject) -> None:
    tf_reader = tf.train.load_checkpoint(str(prefix))
    with remoteckpt.CheckpointReader(prefix) as reader:
        assert reader.get_variable_to_shape_map() == tf_reader.get_variable_to_shape_map()
        assert reader.get_variable_to_dtype_map() == {
            n: numpy_dtype(d) for n, d in tf_reader.get_variable_to_dtype_map().items()}
        assert set(reader.get_variable_to_shape_map()) == set(expected)
        for name, value in expected.items():
            assert reader.has_tensor(name)
            assert_identical(reader.get_tensor(name), value, f"get_tensor({name!r})")
            if not value.ndim:
                continue
            form = data.draw(st.sampled_from(["start_size", "slices", "python_slices"]), label="box form")
            if form == "python_slices":  # any bounds (negative, None, past the end), fewer than rank
                box: Any = tuple(data.draw(st.lists(python_slices(), min_size=1, max_size=value.ndim),
                                           label=f"slices of {name!r}"))
                want = value[box]
            else:
                start, size = data.draw(boxes_in(value.shape), label=f"box of {name!r}")
                box = box_index(start, size) if form == "slices" else (start, size)
                want = value[box_index(start, size)]
            assert_identical(reader.get_slice(name, box), want, f"get_slice({name!r}, {box})")
        assert not reader.has_tensor("no such tensor \x00")
    assert remoteckpt.list_variables(prefix) == tf.train.list_variables(str(prefix))
    loaded = remoteckpt.load(prefix)
    assert set(loaded) == set(expected)
    for name, value in expected.items():
        assert_identical(loaded[name], value, f"load()[{name!r}]")


@HYPOTHESIS
@given(data=st.data(), tset=tensor_sets(explicit=True))
def test_remoteckpt_reads_what_savev2_writes(tmp_path: Path, data: st.DataObject,
                                            tset: tuple[list[Tensor], list[Piece]]) -> None:
    ts, pieces = tset
    with fresh_prefix(tmp_path) as prefix:
        tf_save(prefix, pieces)
        _check_remoteckpt_reads(prefix, {t.name: t.value for t in ts}, data)


@HYPOTHESIS
@given(data=st.data(), tset=tensor_sets(explicit=True, max_size=6), parts=st.integers(1, 3))
def test_remoteckpt_reads_merged_savev2_parts(tmp_path: Path, data: st.DataObject,
                                             tset: tuple[list[Tensor], list[Piece]], parts: int) -> None:
    """Pieces (slices of one tensor included) spread over several SaveV2 bundles, then
    MergeV2Checkpoints: several data files, renumbered shard ids, slice lists joined."""
    ts, pieces = tset
    parts = min(parts, len(pieces))
    cuts = sorted(data.draw(st.sets(st.integers(1, len(pieces) - 1), min_size=parts - 1, max_size=parts - 1),
                            label="cuts")) if parts > 1 else []
    bounds = [0, *cuts, len(pieces)]
    with fresh_prefix(tmp_path) as prefix:
        part_prefixes = [str(prefix.parent / "ckpt_temp" / f"part-{k:05d}-of-{parts:05d}") for k in range(parts)]
        for part, (a, b) in zip(part_prefixes, zip(bounds, bounds[1:])):
            tf_save(part, pieces[a:b])
        tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=part_prefixes, destination_prefix=str(prefix),
                                      delete_old_dirs=True)
        assert checkpoint_files(prefix) == sorted(
            ["ckpt.index", *(f"ckpt.data-{k:05d}-of-{parts:05d}" for k in range(parts))])
        _check_remoteckpt_reads(prefix, {t.name: t.value for t in ts}, data)


def _escape(name: str) -> str:
    return name.replace(".", "..").replace("/", ".S")


@st.composite
def checkpoint_variables(draw: st.DrawFn, sharded: bool) -> dict[str, np.ndarray]:
    names = draw(st.lists(st.text("ab./", min_size=1, max_size=4).map(lambda s: "v_" + s), min_size=1,
                          max_size=5, unique=True))
    if sharded:
        # TF drops zero-size variables from a sharded checkpoint (so it cannot restore it), and
        # fails on string variables of rank >= 2 ("truth value of an array ... is ambiguous").
        out = {n: draw(tensors(n, SHARDABLE, sliced=False, min_side=1)).value for n in names}
        return {n: v.reshape(-1) if v.dtype == STRING and v.ndim > 1 else v for n, v in out.items()}
    return {n: draw(tensors(n, VARIABLE_DTYPES, sliced=False)).value for n in names}


def smallest_safe_shard_size(variables: Mapping[str, np.ndarray]) -> int:
    """MaxShardSizePolicy loops forever, allocating, unless for every variable of rank >= 1 its
    thinnest slab (one index along its longest axis) fits in max_shard_size; string elements
    count as long as the longest one."""
    size = 1
    for value in variables.values():
        if value.ndim == 0:
            continue  # scalars too large for a shard get a shard of their own
        item = max(len(x) for x in value.reshape(-1)) if value.dtype == STRING else value.dtype.itemsize
        size = max(size, value.size // max(value.shape) * item)
    return size


@HYPOTHESIS
@given(data=st.data(), sharded=st.booleans())
def test_remoteckpt_reads_tf_checkpoint_write(tmp_path: Path, data: st.DataObject, sharded: bool) -> None:
    """Object-based keys, the TF2 temp-dir-and-merge path, and (with MaxShardSizePolicy) several
    data files with variables split into slices across them."""
    variables = data.draw(checkpoint_variables(sharded), label="variables")
    options = None
    if sharded:
        least = smallest_safe_shard_size(variables)
        max_shard_size = data.draw(st.integers(least, 4 * least), label="max_shard_size")
        options = tf.train.CheckpointOptions(
            experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(max_shard_size=max_shard_size))
    with fresh_prefix(tmp_path) as prefix:
        checkpoint = tf.train.Checkpoint(**{n: tf.Variable(to_tf(v)) for n, v in variables.items()})
        path = checkpoint.write(str(prefix), options=options)
        assert path == str(prefix)
        expected = {f"{_escape(n)}/.ATTRIBUTES/VARIABLE_VALUE": v for n, v in variables.items()}
        graph = tf.train.load_checkpoint(path).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")
        expected["_CHECKPOINTABLE_OBJECT_GRAPH"] = np.array(graph, dtype=object)
        _check_remoteckpt_reads(prefix, expected, data)


def test_remoteckpt_reads_a_variable_tf_cannot_reassemble(tmp_path: Path) -> None:
    """MaxShardSizePolicy splits a float16 variable into slices; TF then cannot read it whole
    (not even Checkpoint.read), remoteckpt can."""
    value = sample(np.float16, (40,), 1)
    prefix = tmp_path / "ckpt"
    tf.train.Checkpoint(v=tf.Variable(value)).write(str(prefix), options=tf.train.CheckpointOptions(
        experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(max_shard_size=16)))
    key = "v/.ATTRIBUTES/VARIABLE_VALUE"
    reader = remoteckpt.CheckpointReader(prefix)
    assert len(reader.index.entries[key.encode()].slices) > 1
    assert reader.index.num_shards > 1
    assert_identical(reader.get_tensor(key), value)
    with pytest.raises(ValueError, match="Dtype half not supported"):  # TF's reader's translation
        tf.train.load_checkpoint(str(prefix)).get_tensor(key)


def test_remoteckpt_reads_quantized_dtypes_as_integers(tmp_path: Path) -> None:
    """TF's quantized dtypes are read-only in remoteckpt, as their plain integer types."""
    prefix = tmp_path / "ckpt"
    raw = np.array([-3, 0, 5, 127], dtype=np.int32)
    quantized = {
        "qint8": (tf.qint8, np.int8), "quint8": (tf.quint8, np.uint8), "qint16": (tf.qint16, np.int16),
        "quint16": (tf.quint16, np.uint16), "qint32": (tf.qint32, np.int32)}
    tensors_ = [tf.bitcast(tf.constant(raw.astype(np_dt)), q) for q, np_dt in quantized.values()]
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=list(quantized), shape_and_slices=[""] * len(quantized),
                      tensors=tensors_)
    reader = remoteckpt.CheckpointReader(prefix)
    for name, (_, np_dt) in quantized.items():
        assert_identical(reader.get_tensor(name), raw.astype(np_dt), name)
        assert reader.get_variable_to_dtype_map()[name] == np.dtype(np_dt)


# === 4. TensorFlow assembles partitioned tensors remoteckpt wrote ===============================

LAYOUTS: dict[str, tuple[tuple[int, ...], list[tuple[tuple[int, ...], tuple[int, ...]]]]] = {
    "rows": ((6,), [((0,), (2,)), ((2,), (4,))]),
    "row_blocks": ((4, 3), [((2, 0), (2, 3)), ((0, 0), (2, 3))]),
    "column_blocks": ((4, 3), [((0, 0), (4, 1)), ((0, 1), (4, 2))]),
    "uneven_grid": ((5, 4), [((0, 0), (3, 1)), ((0, 1), (3, 3)), ((3, 0), (2, 2)), ((3, 2), (2, 2))]),
    "cube": ((3, 4, 2), [((0, 0, 0), (1, 4, 2)), ((1, 0, 0), (2, 4, 1)), ((1, 0, 1), (2, 4, 1))]),
}
SUB_BOXES = {  # boxes that straddle the stored slices
    "rows": [((1,), (3,)), ((2,), (4,)), ((5,), (1,))],
    "row_blocks": [((1, 0), (2, 3)), ((1, 1), (3, 2)), ((0, 2), (4, 1))],
    "column_blocks": [((0, 0), (2, 2)), ((1, 0), (3, 3)), ((3, 2), (1, 1))],
    "uneven_grid": [((2, 0), (2, 4)), ((1, 1), (4, 2)), ((0, 0), (5, 4)), ((4, 3), (1, 1))],
    "cube": [((0, 1, 0), (3, 2, 2)), ((1, 0, 1), (2, 4, 1)), ((0, 3, 1), (3, 1, 1))],
}


def _save_layouts(prefix: Path, dtype: np.dtype) -> dict[str, np.ndarray]:
    fulls = {name: sample(dtype, shape, seed) for seed, (name, (shape, _)) in enumerate(LAYOUTS.items())}
    pieces = [Piece(name, fulls[name][box_index(s, n)], shape, s)
              for name, (shape, boxes) in LAYOUTS.items() for s, n in boxes]
    rc_save(prefix, pieces)
    return fulls


def _dtype_id(dtype: np.dtype) -> str:
    return "string" if dtype == STRING else dtype.name


@pytest.mark.parametrize("dtype", sorted(ASSEMBLABLE, key=str), ids=_dtype_id)
def test_tf_assembles_sliced_tensors_remoteckpt_wrote(tmp_path: Path, dtype: np.dtype) -> None:
    prefix = tmp_path / "ckpt"
    fulls = _save_layouts(prefix, dtype)
    reader = tf.train.load_checkpoint(str(prefix))
    requests, expected = [], []
    for name, full in fulls.items():
        assert_identical(tf_get(reader, name), full, f"TF get_tensor({name!r})")
        requests.append((name, "", dtype))
        expected.append(full)
        for start, size in SUB_BOXES[name]:
            for explicit in (False, True):
                requests.append((name, slice_spec(full.shape, start, size, explicit), dtype))
                expected.append(full[box_index(start, size)])
    for (name, spec, _), got, want in zip(requests, tf_restore(prefix, requests), expected):
        assert_identical(got, want, f"RestoreV2({name!r}, {spec!r})")


@pytest.mark.parametrize("dtype", NOT_ASSEMBLABLE, ids=_dtype_id)
def test_tf_reads_exact_slices_of_other_dtypes_remoteckpt_wrote(tmp_path: Path, dtype: np.dtype) -> None:
    prefix = tmp_path / "ckpt"
    fulls = _save_layouts(prefix, dtype)
    requests, expected = [], []
    for name, full in fulls.items():
        for start, size in LAYOUTS[name][1]:
            requests.append((name, slice_spec(full.shape, start, size), dtype))
            expected.append(full[box_index(start, size)])
    for (name, spec, _), got, want in zip(requests, tf_restore(prefix, requests), expected):
        assert_identical(got, want, f"RestoreV2({name!r}, {spec!r})")
    with pytest.raises(ValueError, match="not supported"):
        tf.train.load_checkpoint(str(prefix)).get_tensor("rows")
    with pytest.raises(tf.errors.InvalidArgumentError, match="not supported"):
        tf_restore(prefix, [("rows", "", dtype)])
    # remoteckpt itself assembles them.
    for name, full in fulls.items():
        assert_identical(remoteckpt.CheckpointReader(prefix).get_tensor(name), full, name)
