"""save / load / CheckpointReader round trips on every kind of storage, and the errors a
user meets: missing files, corruption, bad arguments, each naming tensor and file."""

from __future__ import annotations

import uuid
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import remoteckpt
from remoteckpt import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    InvalidTensorsError,
    ShapeMismatchError,
    Slice,
    TensorNotFoundError,
    UnsupportedDTypeError,
)

STORES = ["local", "file", "memory", "s3"]


@pytest.fixture(params=STORES)
def base_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    kind = request.param
    if kind == "local":
        return str(tmp_path)
    if kind == "file":
        return f"file://{tmp_path}"
    if kind == "memory":
        return f"memory://remoteckpt-tests/{uuid.uuid4().hex}"
    return request.getfixturevalue("s3_prefix")


def _tensors() -> dict[str, object]:
    rng = np.random.default_rng(0)
    return {
        "dense/kernel": rng.standard_normal((64, 33)).astype(np.float32),
        "dense/bias": np.arange(33, dtype=np.float64),
        "step": np.int64(1000),
        "bf16": rng.standard_normal(10).astype(ml_dtypes.bfloat16),
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 5), np.float32),
        "vocab": np.array([b"", "héllo".encode(), bytes(range(256)), b"x" * 5000], dtype=object),
        "text": np.array(["a", "bc"]),
        "c128": np.array([1 + 2j, -3j], np.complex128),
    }


def _assert_same(expected: object, got: np.ndarray) -> None:
    want = np.asarray(expected)
    if want.dtype.kind in "SU":
        want = np.array([v.encode() if isinstance(v, str) else v for v in want.reshape(-1)], object).reshape(want.shape)
    assert got.shape == want.shape
    if want.dtype == object:
        assert list(got.reshape(-1)) == list(want.reshape(-1))
    else:
        assert got.dtype == want.dtype
        assert got.tobytes() == want.tobytes()


def test_round_trip(base_url: str) -> None:
    tensors = _tensors()
    prefix = remoteckpt.save(tensors, f"{base_url}/model.ckpt-1000")
    assert prefix == f"{base_url}/model.ckpt-1000"
    reader = remoteckpt.CheckpointReader(prefix)
    assert reader.get_variable_to_shape_map() == {k: list(np.shape(v)) for k, v in tensors.items()}
    assert reader.get_variable_to_dtype_map()["bf16"] == np.dtype(ml_dtypes.bfloat16)
    assert reader.get_variable_to_dtype_map()["vocab"] == np.dtype(object)
    for name, value in tensors.items():
        _assert_same(value, reader.get_tensor(name))
    loaded = remoteckpt.load(prefix)
    assert set(loaded) == set(tensors)
    _assert_same(tensors["dense/kernel"], loaded["dense/kernel"])
    assert remoteckpt.list_variables(prefix)[0] == ("bf16", [10])
    assert remoteckpt.load(prefix, ["step"]) == {"step": np.int64(1000)}


def test_slices_round_trip(base_url: str) -> None:
    full = np.arange(60, dtype=np.int32).reshape(10, 6)
    parts = {"w": Slice(full[:4], (10, 6), (0, 0))}
    prefix = f"{base_url}/sliced"
    remoteckpt.save({"w": parts["w"], "other": np.ones(3)}, prefix + "-a")  # one box only
    remoteckpt.save({"w": [Slice(full[:4], (10, 6), (0, 0)), Slice(full[4:], (10, 6), (4, 0))]}, prefix)
    reader = remoteckpt.CheckpointReader(prefix)
    assert reader.get_variable_to_shape_map() == {"w": [10, 6]}
    np.testing.assert_array_equal(reader.get_tensor("w"), full)
    np.testing.assert_array_equal(reader.get_slice("w", (slice(2, 7), slice(1, 3))), full[2:7, 1:3])
    with pytest.raises(CorruptCheckpointError, match="do not cover"):
        remoteckpt.CheckpointReader(prefix + "-a").get_tensor("w")
    np.testing.assert_array_equal(remoteckpt.CheckpointReader(prefix + "-a").get_slice("w", ((0, 0), (4, 6))), full[:4])


def test_big_endian_arrays_are_saved_as_their_values(tmp_path: Path) -> None:
    """Arrays in big-endian byte order are stored as TF stores their values (little-endian):
    the same bytes as their native-order copies, read back equal."""
    values = {"f": np.array([1.5, -2.0, 3.25], ">f4"), "i": np.arange(-3, 3, dtype=">i8").reshape(2, 3),
              "c": np.array([1 + 2j, -3j], ">c16"), "h": np.array([0.5, 65504], ">f2")}
    remoteckpt.save(values, tmp_path / "be")
    remoteckpt.save({k: v.astype(v.dtype.newbyteorder("=")) for k, v in values.items()}, tmp_path / "native")
    assert (tmp_path / "be.index").read_bytes() == (tmp_path / "native.index").read_bytes()
    assert (tmp_path / "be.data-00000-of-00001").read_bytes() == (tmp_path / "native.data-00000-of-00001").read_bytes()
    loaded = remoteckpt.load(tmp_path / "be")
    for name, value in values.items():
        np.testing.assert_array_equal(loaded[name], value)
        assert loaded[name].dtype == value.dtype.newbyteorder("=")


def test_missing_checkpoint_is_not_found(base_url: str) -> None:
    with pytest.raises(CheckpointNotFoundError, match=r"model\.ckpt-404\.index") as info:
        remoteckpt.CheckpointReader(f"{base_url}/model.ckpt-404")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, CheckpointError)


def test_unknown_tensor(tmp_path: Path) -> None:
    prefix = remoteckpt.save({"a": np.ones(2)}, tmp_path / "ck")
    reader = remoteckpt.CheckpointReader(prefix)
    with pytest.raises(TensorNotFoundError, match="'nope'") as info:
        reader.get_tensor("nope")
    assert isinstance(info.value, KeyError)
    assert not reader.has_tensor("nope")


def test_missing_data_file_names_tensor_and_file(tmp_path: Path) -> None:
    prefix = remoteckpt.save({"a": np.ones(2)}, tmp_path / "ck")
    (tmp_path / "ck.data-00000-of-00001").unlink()
    reader = remoteckpt.CheckpointReader(prefix)  # the index alone opens, as in TF
    with pytest.raises(CheckpointNotFoundError, match=r"'a'.*ck\.data-00000-of-00001"):
        reader.get_tensor("a")


def test_bit_flip_in_data_is_detected_per_tensor(tmp_path: Path) -> None:
    prefix = remoteckpt.save({"a": np.arange(4, dtype=np.float32), "b": np.arange(4.0)}, tmp_path / "ck")
    data = tmp_path / "ck.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[3] ^= 0x10
    data.write_bytes(bytes(raw))
    reader = remoteckpt.CheckpointReader(prefix)
    with pytest.raises(CorruptCheckpointError, match=r"'a'.*checksum mismatch.*ck\.data-00000-of-00001"):
        reader.get_tensor("a")
    np.testing.assert_array_equal(reader.get_tensor("b"), np.arange(4.0))  # others still read


def test_truncated_data_file(tmp_path: Path) -> None:
    prefix = remoteckpt.save({"a": np.arange(100, dtype=np.float32)}, tmp_path / "ck")
    data = tmp_path / "ck.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:50])
    with pytest.raises(CorruptCheckpointError, match="outside"):
        remoteckpt.CheckpointReader(prefix).get_tensor("a")


@pytest.mark.parametrize("cut", [0, 20, 100])
def test_truncated_or_garbage_index(tmp_path: Path, cut: int) -> None:
    prefix = remoteckpt.save({"a": np.ones(3)}, tmp_path / "ck")
    index = tmp_path / "ck.index"
    index.write_bytes(index.read_bytes()[:cut])
    with pytest.raises(CorruptCheckpointError, match=r"ck\.index"):
        remoteckpt.CheckpointReader(prefix)


def test_hostile_entry_is_rejected_before_allocation(tmp_path: Path) -> None:
    import io

    from remoteckpt.format.bundle import BundleEntry, encode_index, make_header

    (tmp_path / "ck.data-00000-of-00001").write_bytes(b"\0" * 16)
    huge = BundleEntry(dtype=1, size=1 << 40)
    huge.shape.dim.add(size=1 << 38)
    other_shard = BundleEntry(dtype=1, shard_id=7, size=4)
    other_shard.shape.dim.add(size=1)
    for entry, match in [(huge, "outside"), (other_shard, "shard 7")]:
        out = io.BytesIO()
        encode_index(make_header(1), {b"x": entry}, out)
        (tmp_path / "ck.index").write_bytes(out.getvalue())
        with pytest.raises(CorruptCheckpointError, match=match):
            remoteckpt.CheckpointReader(tmp_path / "ck").get_tensor("x")


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InvalidTensorsError, match="empty"):
        remoteckpt.save({"": np.ones(1)}, tmp_path / "a")
    with pytest.raises(UnsupportedDTypeError, match="'t'"):
        remoteckpt.save({"t": np.array([np.datetime64("2020-01-01")])}, tmp_path / "b")
    overlap = {"w": [Slice(np.ones((3, 2)), (4, 2), (0, 0)), Slice(np.ones((2, 2)), (4, 2), (2, 0))]}
    with pytest.raises(InvalidTensorsError, match="overlap"):
        remoteckpt.save(overlap, tmp_path / "c")
    with pytest.raises(InvalidTensorsError, match="outside"):
        remoteckpt.save({"w": Slice(np.ones((3, 2)), (2, 2), (0, 0))}, tmp_path / "d")
    assert not list(tmp_path.iterdir())  # nothing was written for any of them


def test_get_slice_validates_box(tmp_path: Path) -> None:
    prefix = remoteckpt.save({"a": np.arange(12).reshape(3, 4)}, tmp_path / "ck")
    reader = remoteckpt.CheckpointReader(prefix)
    np.testing.assert_array_equal(reader.get_slice("a", ((1, 1), (2, 2))), [[5, 6], [9, 10]])
    np.testing.assert_array_equal(reader.get_slice("a", (slice(None), slice(3, None))), [[3], [7], [11]])
    with pytest.raises(ShapeMismatchError, match="'a'"):
        reader.get_slice("a", ((2, 0), (2, 4)))
    with pytest.raises(ShapeMismatchError, match="step"):
        reader.get_slice("a", (slice(0, 3, 2),))
    np.testing.assert_array_equal(reader.get_slice("a", ()), reader.get_tensor("a"))
    scalar = remoteckpt.CheckpointReader(remoteckpt.save({"s": np.int64(4)}, tmp_path / "sc"))
    assert scalar.get_slice("s", ()) == 4 and scalar.get_slice("s", ((), ())) == 4


def test_never_overwrites_unless_asked(base_url: str) -> None:
    prefix = f"{base_url}/ck"
    remoteckpt.save({"a": np.zeros(3)}, prefix)
    with pytest.raises(remoteckpt.CheckpointExistsError, match=r"ck\.index already exists") as info:
        remoteckpt.save({"a": np.ones(3)}, prefix)
    assert isinstance(info.value, FileExistsError)
    np.testing.assert_array_equal(remoteckpt.load(prefix)["a"], np.zeros(3))  # untouched
    remoteckpt.save({"a": np.ones(3)}, prefix, overwrite=True)
    np.testing.assert_array_equal(remoteckpt.load(prefix)["a"], np.ones(3))


def test_local_save_leaves_only_final_files(tmp_path: Path) -> None:
    remoteckpt.save({"a": np.zeros(3)}, tmp_path / "ck")
    remoteckpt.save({"a": np.ones(3)}, tmp_path / "ck", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.data-00000-of-00001", "ck.index"]


# --- through TensorFlow's own bytes (tests/fixtures/tf-2.21) -------------------------------------
#
# A round trip through our own writer cannot see a mistake made the same way in the writer and
# the reader (a CRC masked differently, a string checksum over the wrong bytes, a chunk CRC
# nobody checks): TensorFlow's golden files can.  Reading them checks the reader against TF;
# writing the same tensors checks the writer byte for byte; damaging them checks that every
# checksum is really verified.

import json  # noqa: E402

import crc32c as crc32c_package  # noqa: E402
from test_fixtures import check_tensor  # noqa: E402

from remoteckpt.format.bundle import decode_index  # noqa: E402
from remoteckpt.format.coding import encode_varint  # noqa: E402
from remoteckpt.storage import on_store, split_prefix  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "tf-2.21"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())["checkpoints"]
SMALL_PIECES = remoteckpt.IOOptions(read_chunk=64 * 1024, coalesce_gap=0)


def tf_mask(crc: int) -> int:
    """TF's masked CRC, spelled out here (not remoteckpt's): rotate right 15, add 0xa282ead8."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def golden_files(checkpoint: str) -> dict[str, bytes]:
    """The files of a golden checkpoint, by name (``ckpt.index``, ``ckpt.data-...``)."""
    prefix = GOLDEN / MANIFEST[checkpoint]["prefix"]
    return {p.name: p.read_bytes() for p in prefix.parent.iterdir() if p.name.startswith(prefix.name + ".")}


def put_files(directory: str, files: dict[str, bytes]) -> None:
    async def put(store: object) -> None:
        for name, data in files.items():
            await store.put(name, data)  # type: ignore[attr-defined]

    on_store(directory, put)


def get_file(prefix: str, suffix: str) -> bytes:
    directory, name = split_prefix(prefix)
    return on_store(directory, lambda store: store.get(name + suffix))


def golden_tensors(checkpoint: str) -> dict[str, np.ndarray]:
    """The golden checkpoint's tensors, in its order, each checked against the manifest."""
    spec = MANIFEST[checkpoint]["tensors"]
    partial = MANIFEST[checkpoint].get("partial")  # tensors only in boxes cannot load whole
    loaded = remoteckpt.load(GOLDEN / MANIFEST[checkpoint]["prefix"], list(spec) if partial else None)
    for name in spec:
        check_tensor(name, spec[name], loaded[name])
    return {name: loaded[name] for name in sorted(loaded)}


def golden_boxes(checkpoint: str, name: str) -> list[Slice]:
    """The boxes of a tensor the golden checkpoint holds only in parts, as `Slice`s."""
    spec = MANIFEST[checkpoint]["partial"][name]
    reader = remoteckpt.CheckpointReader(GOLDEN / MANIFEST[checkpoint]["prefix"])
    out = []
    for box in spec["boxes"]:
        value = reader.get_slice(name, (box["start"], box["shape"]))
        check_tensor(name, box, value)
        out.append(Slice(value, tuple(spec["full_shape"]), tuple(box["start"])))
    return out


def golden_entries(checkpoint: str) -> dict[bytes, object]:
    data = (GOLDEN / (MANIFEST[checkpoint]["prefix"] + ".index")).read_bytes()
    return decode_index(lambda o, n: data[o : o + n], len(data)).entries


def test_tensorflow_written_bytes_read_back_exactly(base_url: str) -> None:
    """TF's bytes on every store, through load and CheckpointReader, read in 64 KiB pieces (so a
    300 KiB tensor's CRC is joined from several), every tensor as TF was given it."""
    put_files(base_url, golden_files("dtypes"))
    prefix = f"{base_url}/ckpt"
    spec = MANIFEST["dtypes"]["tensors"]
    loaded = remoteckpt.load(prefix, options=SMALL_PIECES)
    assert set(loaded) == set(spec)
    for name, tensor in spec.items():
        check_tensor(name, tensor, loaded[name])
    reader = remoteckpt.CheckpointReader(prefix, options=SMALL_PIECES)
    check_tensor("strings/long", spec["strings/long"], reader.get_tensor("strings/long"))
    big = reader.get_tensor("big/float32")
    np.testing.assert_array_equal(reader.get_slice("big/float32", (slice(250, 300),)), big[250:])


def test_remoteckpt_writes_tensorflows_bytes(base_url: str) -> None:
    """The golden tensors saved by remoteckpt (chunk CRCs off) are TF's files, byte for byte."""
    tensors = golden_tensors("dtypes")
    prefix = remoteckpt.save(tensors, f"{base_url}/ckpt", options=remoteckpt.IOOptions(crc_chunk=0))
    tf_files = golden_files("dtypes")
    assert get_file(prefix, ".index") == tf_files["ckpt.index"]
    assert get_file(prefix, ".data-00000-of-00001") == tf_files["ckpt.data-00000-of-00001"]


def test_an_index_of_two_blocks_is_written_as_tensorflow_writes_it(tmp_path: Path) -> None:
    tensors = golden_tensors("blocks")
    remoteckpt.save(tensors, tmp_path / "ckpt")
    tf_files = golden_files("blocks")
    assert (tmp_path / "ckpt.index").read_bytes() == tf_files["ckpt.index"]
    assert (tmp_path / "ckpt.data-00000-of-00001").read_bytes() == tf_files["ckpt.data-00000-of-00001"]


def test_chunk_crcs_extend_tensorflows_entries_and_are_verified(tmp_path: Path) -> None:
    """With chunk CRCs on, the data file is still TF's, every entry keeps TF's offset, size and
    whole CRC (which TF checks), and each chunk CRC is the masked CRC32C of TF's bytes of that
    chunk; a damaged chunk is refused by every read that needs it, and only by those."""
    chunk = 5000  # 300 KiB = 61 chunks and a short one
    tensors = golden_tensors("dtypes")
    prefix = remoteckpt.save(tensors, tmp_path / "ckpt", options=remoteckpt.IOOptions(crc_chunk=chunk))
    data = golden_files("dtypes")["ckpt.data-00000-of-00001"]
    assert (tmp_path / "ckpt.data-00000-of-00001").read_bytes() == data
    ours = remoteckpt.CheckpointReader(prefix).index.entries
    theirs = golden_entries("dtypes")
    for key, tf_entry in theirs.items():
        entry = ours[key]
        assert (entry.dtype, entry.offset, entry.size, entry.crc32c) == (
            tf_entry.dtype, tf_entry.offset, tf_entry.size, tf_entry.crc32c), key  # type: ignore[attr-defined]
        assert entry.crc32c == tf_mask(crc32c_package.crc32c(data[entry.offset : entry.offset + entry.size])) \
            or entry.dtype == 7, key  # strings: CRC over lengths, checksum and bytes (checked by TF's value)
        if entry.size > chunk and entry.dtype != 7:
            assert entry.chunk_size == chunk, key
            assert list(entry.chunk_crc32c) == [
                tf_mask(crc32c_package.crc32c(data[entry.offset + o : entry.offset + min(o + chunk, entry.size)]))
                for o in range(0, entry.size, chunk)], key
        else:
            assert not entry.chunk_crc32c and not entry.chunk_size, key
    big = ours[b"big/float32"]
    row_bytes = 256 * 4
    damaged_chunk = 10
    raw = bytearray(data)
    raw[big.offset + damaged_chunk * chunk + 5] ^= 0x01
    (tmp_path / "ckpt.data-00000-of-00001").write_bytes(bytes(raw))
    reader = remoteckpt.CheckpointReader(prefix)
    first_row = damaged_chunk * chunk // row_bytes
    with pytest.raises(CorruptCheckpointError, match=rf"'big/float32'.*chunk {damaged_chunk}\b"):
        reader.get_slice("big/float32", (slice(first_row, first_row + 1),))
    with pytest.raises(CorruptCheckpointError, match="'big/float32'"):
        reader.get_tensor("big/float32")
    np.testing.assert_array_equal(reader.get_slice("big/float32", (slice(0, first_row - 1),)),
                                  tensors["big/float32"][: first_row - 1])
    np.testing.assert_array_equal(reader.get_tensor("zz/last"), tensors["zz/last"])


def test_a_tensor_of_exactly_one_chunk_keeps_tensorflows_entry(tmp_path: Path) -> None:
    """Chunk CRCs start past one chunk: with `crc_chunk` equal to the largest tensor's size,
    the index is TF's byte for byte."""
    tensors = golden_tensors("dtypes")
    size = tensors["big/float32"].nbytes
    remoteckpt.save(tensors, tmp_path / "ckpt", options=remoteckpt.IOOptions(crc_chunk=size))
    assert (tmp_path / "ckpt.index").read_bytes() == golden_files("dtypes")["ckpt.index"]
    remoteckpt.save(tensors, tmp_path / "more", options=remoteckpt.IOOptions(crc_chunk=size - 4))
    entry = remoteckpt.CheckpointReader(tmp_path / "more").index.entries[b"big/float32"]
    assert entry.chunk_size == size - 4 and len(entry.chunk_crc32c) == 2


@pytest.mark.parametrize("name,where", [("big/float32", 123_457), ("strings/vector", "element"),
                                        ("strings/long", "checksum"), ("strings/matrix", "length"),
                                        ("dtypes/bfloat16", 29), ("shapes/scalar_f64", 7)])
def test_damaged_tensorflow_bytes_are_refused(tmp_path: Path, name: str, where: object) -> None:
    """One flipped bit in a tensor of TF's file (a numeric payload read in pieces, a string
    element, a string tensor's length checksum or a length): that tensor is refused, naming
    it and the file; every other tensor still reads exactly."""
    files = golden_files("dtypes")
    entry = golden_entries("dtypes")[name.encode()]
    count = int(np.prod(MANIFEST["dtypes"]["tensors"][name]["shape"]))
    offset = entry.offset  # type: ignore[attr-defined]
    if where == "element":
        at = offset + entry.size - 3  # type: ignore[attr-defined]  # in the last element's bytes
    elif where == "checksum":  # after one varint length per element
        lengths = MANIFEST["dtypes"]["tensors"][name]["lengths"]
        at = offset + sum(len(encode_varint(n)) for n in lengths) + 1
    elif where == "length":
        at = offset  # the first varint length
    else:
        assert isinstance(where, int)
        at = offset + min(where, entry.size - 1)  # type: ignore[attr-defined]
    assert offset <= at < offset + entry.size and count >= 1  # type: ignore[attr-defined]
    raw = bytearray(files["ckpt.data-00000-of-00001"])
    raw[at] ^= 0x04
    files["ckpt.data-00000-of-00001"] = bytes(raw)
    put_files(str(tmp_path), files)
    reader = remoteckpt.CheckpointReader(tmp_path / "ckpt", options=SMALL_PIECES)
    with pytest.raises(CorruptCheckpointError, match=rf"'{name}'.*ckpt\.data-00000-of-00001"):
        reader.get_tensor(name)
    spec = MANIFEST["dtypes"]["tensors"]
    others = remoteckpt.load(tmp_path / "ckpt", [n for n in spec if n != name], options=SMALL_PIECES)
    for other, tensor in others.items():
        check_tensor(other, spec[other], tensor)


def _worker_shares(checkpoint: str) -> list[dict[str, object]]:
    """What each worker saves to reproduce a golden merged checkpoint: TF's part i as rank i."""
    tensors = golden_tensors(checkpoint)
    if checkpoint == "sharded":
        return [{f"layer{r}/kernel": tensors[f"layer{r}/kernel"], f"layer{r + 3}/kernel": tensors[f"layer{r + 3}/kernel"]}
                for r in range(3)]
    c, w = tensors["part/c"], tensors["part/w"]
    return [{"part/c": Slice(np.ascontiguousarray(c[:, :1]), (3, 4), (0, 0)), "part/w": Slice(w[:4], (10, 6), (0, 0))},
            {"part/c": Slice(np.ascontiguousarray(c[:, 1:]), (3, 4), (0, 1)), "part/w": Slice(w[4:], (10, 6), (4, 0)),
             "part/sparse": golden_boxes(checkpoint, "part/sparse"), "part/wide": golden_boxes(checkpoint, "part/wide")}]


@pytest.mark.parametrize("checkpoint", ["sharded", "sliced"])
def test_workers_write_tensorflows_merged_bytes(tmp_path: Path, checkpoint: str) -> None:
    """Workers each saving what one of TF's SaveV2 parts held commit TF's merged checkpoint
    (MergeV2Checkpoints of those parts): shard ids, joined slice lists, index and data files,
    byte for byte."""
    import asyncio

    from remoteckpt.api import save_checkpoint
    from remoteckpt.engine import loop

    shares = _worker_shares(checkpoint)
    prefix = str(tmp_path / Path(MANIFEST[checkpoint]["prefix"]).name)
    options = remoteckpt.IOOptions(commit_timeout=10, poll_interval=0.01)

    async def workers() -> list[object]:
        return await asyncio.gather(*(save_checkpoint(share, prefix, rank=r, world_size=len(shares), save_id="golden",
                                                      options=options) for r, share in enumerate(shares)))

    loop.run(workers())
    golden = golden_files(checkpoint)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(golden)
    for name, data in golden.items():
        assert (tmp_path / name).read_bytes() == data, name
