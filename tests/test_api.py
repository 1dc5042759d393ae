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
