"""Every tensor of every checkpoint TensorFlow 2.21 wrote in tests/fixtures/tf-2.21 matches the
manifest (what TensorFlow was given), through every reading API.

The fixtures and their manifest are written by tests/fixtures/make_tf_fixtures.py."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import remoteckpt
from remoteckpt import dtypes

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tf-2.21"
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "manifest.json").read_text())
CHECKPOINTS: dict[str, dict[str, Any]] = MANIFEST["checkpoints"]


def check_tensor(name: str, spec: dict[str, Any], array: np.ndarray) -> None:
    """`array` is exactly the tensor the manifest describes."""
    assert list(array.shape) == spec["shape"], name
    if "values_b64" in spec:
        assert array.dtype == object, name
        assert list(array.reshape(-1)) == [base64.b64decode(v) for v in spec["values_b64"]], name
    elif "sha256s" in spec:
        values = list(array.reshape(-1))
        assert [len(v) for v in values] == spec["lengths"], name
        assert [hashlib.sha256(v).hexdigest() for v in values] == spec["sha256s"], name
    else:
        raw = np.ascontiguousarray(array).tobytes()
        assert len(raw) == spec["nbytes"], name
        if "raw_b64" in spec:
            assert raw == base64.b64decode(spec["raw_b64"]), name
        assert hashlib.sha256(raw).hexdigest() == spec["sha256"], name


def prefix_of(checkpoint: str) -> Path:
    return FIXTURES / CHECKPOINTS[checkpoint]["prefix"]


def test_manifest_covers_what_the_tests_rely_on() -> None:
    assert MANIFEST["tensorflow_version"].startswith("2.21.")
    assert set(CHECKPOINTS) >= {"dtypes", "quantized", "blocks", "sharded", "sliced", "v1_saver", "tf2_object"}
    names = {spec["dtype"] for spec in CHECKPOINTS["dtypes"]["tensors"].values()}
    assert names >= {"bfloat16", "float16", "float32", "float64", "complex64", "complex128", "bool", "string",
                     "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert total < 2 * 2**20, "keep the golden files small"


@pytest.mark.parametrize("checkpoint", sorted(CHECKPOINTS))
def test_every_tensor_matches_manifest(checkpoint: str) -> None:
    spec = CHECKPOINTS[checkpoint]
    prefix = prefix_of(checkpoint)
    reader = remoteckpt.CheckpointReader(prefix)
    shapes = reader.get_variable_to_shape_map()
    dtype_map = reader.get_variable_to_dtype_map()
    for name, tensor in spec["tensors"].items():
        assert reader.has_tensor(name)
        assert shapes[name] == tensor["shape"], name
        expected_dtype = "object" if tensor["dtype"] == "string" else tensor.get("reads_as", tensor["dtype"])
        assert str(dtype_map[name]) == expected_dtype, name
        check_tensor(name, tensor, reader.get_tensor(name))
    loaded = remoteckpt.load(prefix, list(spec["tensors"]))
    for name, tensor in spec["tensors"].items():
        check_tensor(name, tensor, loaded[name])
    for name in spec.get("also", []):
        assert reader.has_tensor(name)


def test_dtype_names_match_tensorflows() -> None:
    spec = CHECKPOINTS["dtypes"]
    reader = remoteckpt.CheckpointReader(prefix_of("dtypes"))
    for name, tensor in spec["tensors"].items():
        assert dtypes.dtype_name(reader.index.entries[name.encode()].dtype) == tensor["dtype"], name


def test_small_read_pieces_are_verified_and_joined() -> None:
    """A 300 KiB tensor TF wrote (no chunk CRCs) read in 64 KiB pieces: the pieces' CRCs are
    combined into the entry's, and every byte lands where it belongs."""
    spec = CHECKPOINTS["dtypes"]["tensors"]
    options = remoteckpt.IOOptions(read_chunk=64 * 1024, coalesce_gap=0)
    reader = remoteckpt.CheckpointReader(prefix_of("dtypes"), options=options)
    check_tensor("big/float32", spec["big/float32"], reader.get_tensor("big/float32"))
    whole = reader.get_tensor("big/float32")
    np.testing.assert_array_equal(reader.get_slice("big/float32", (slice(100, 201), slice(7, 9))), whole[100:201, 7:9])
    loaded = remoteckpt.load(prefix_of("dtypes"), options=options)
    for name, tensor in spec.items():
        check_tensor(name, tensor, loaded[name])


def test_index_spanning_two_blocks_reads_every_tensor() -> None:
    spec = CHECKPOINTS["blocks"]
    reader = remoteckpt.CheckpointReader(prefix_of("blocks"))
    count = spec["count"]
    names = sorted(reader.get_variable_to_shape_map())
    assert names == [f"layer{i:05d}/scale" for i in range(count)]
    loaded = remoteckpt.load(prefix_of("blocks"))
    got = np.array([loaded[n] for n in names], np.float32)
    np.testing.assert_array_equal(got, np.arange(count, dtype=np.float32) * np.float32(0.25) - 7)
    for name, tensor in spec["tensors"].items():
        check_tensor(name, tensor, loaded[name])


def test_sliced_fixture_reads_whole_and_in_boxes() -> None:
    spec = CHECKPOINTS["sliced"]
    reader = remoteckpt.CheckpointReader(prefix_of("sliced"))
    assert sorted(reader.get_variable_to_shape_map()) == ["part/c", "part/sparse", "part/w", "part/wide"]
    assert reader.index.num_shards == spec["num_shards"]
    for name, specs in spec["slices"].items():
        assert [b.spec() for b, _ in reader.index.slice_boxes(name.encode())] == specs
    whole = reader.get_tensor("part/w")
    check_tensor("part/w", spec["tensors"]["part/w"], whole)
    np.testing.assert_array_equal(reader.get_slice("part/w", (slice(3, 7), slice(1, 5))), whole[3:7, 1:5])
    np.testing.assert_array_equal(reader.get_slice("part/w", ((4, 0), (6, 6))), whole[4:10])
    np.testing.assert_array_equal(reader.get_slice("part/w", (slice(9, 10),)), whole[9:10])
    c = reader.get_tensor("part/c")
    np.testing.assert_array_equal(reader.get_slice("part/c", (slice(1, 3), slice(0, 2))), c[1:3, 0:2])


def test_list_variables_matches_tf_sorting() -> None:
    names = [n for n, _ in remoteckpt.list_variables(prefix_of("tf2_object"))]
    assert names == sorted(names)
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" in names and "save_counter/.ATTRIBUTES/VARIABLE_VALUE" in names


@pytest.mark.parametrize("checkpoint", ["v1_saver", "tf2_object"])
def test_state_files_name_the_manifests_checkpoints(checkpoint: str) -> None:
    spec = CHECKPOINTS[checkpoint]
    directory = prefix_of(checkpoint).parent
    state = remoteckpt.get_checkpoint_state(directory)
    assert state is not None
    assert state.model_checkpoint_path == spec["state"]["model_checkpoint_path"]
    assert list(state.all_model_checkpoint_paths) == spec["state"]["all_model_checkpoint_paths"]
    assert remoteckpt.latest_checkpoint(directory) == str(prefix_of(checkpoint))


@pytest.mark.parametrize("checkpoint", sorted(CHECKPOINTS))
def test_every_golden_index_re_encodes_to_its_bytes(checkpoint: str) -> None:
    """Decoding TF's index and encoding it again gives TF's bytes: block layout, restarts,
    separators, trailers' masked CRCs and footer, all as TensorFlow writes them."""
    import io

    from remoteckpt.format.bundle import decode_index, encode_index

    data = Path(f"{prefix_of(checkpoint)}.index").read_bytes()
    index = decode_index(lambda offset, size: data[offset : offset + size], len(data))
    out = io.BytesIO()
    assert encode_index(index.header, index.entries, out) == len(data)
    assert out.getvalue() == data


@pytest.mark.parametrize("name", ["part/sparse", "part/wide"])
def test_boxes_with_large_starts_and_lengths_are_found(name: str) -> None:
    """Tensors TF saved only in boxes (starts up to 2**33, lengths up to 8192): each box is
    found under the slice key remoteckpt computes, and reads back as TF was given it."""
    spec = CHECKPOINTS["sliced"]["partial"][name]
    reader = remoteckpt.CheckpointReader(prefix_of("sliced"))
    assert reader.get_variable_to_shape_map()[name] == spec["full_shape"]
    for box in spec["boxes"]:
        got = reader.get_slice(name, (box["start"], box["shape"]))
        check_tensor(f"{name}{box['start']}", box, got)
    with pytest.raises(remoteckpt.CorruptCheckpointError, match="do not cover"):
        reader.get_slice(name, ([0] * len(spec["full_shape"]), [1] * len(spec["full_shape"])))
