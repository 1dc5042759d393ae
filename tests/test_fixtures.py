"""Every tensor of every checkpoint TensorFlow 2.21 wrote in ../shared/fixtures matches the
manifest, through every reading API."""

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

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "tf-2.21"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text()) if FIXTURES.is_dir() else {"checkpoints": {}}
CHECKPOINTS = {k: v for k, v in MANIFEST["checkpoints"].items() if "prefix" in v}

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"fixtures not found at {FIXTURES}")


def _check(name: str, spec: dict[str, Any], array: np.ndarray) -> None:
    assert list(array.shape) == spec["shape"], name
    if "values_b64" in spec:
        assert list(array.reshape(-1)) == [base64.b64decode(v) for v in spec["values_b64"]], name
    elif "sha256s" in spec:
        values = list(array.reshape(-1))
        assert [len(v) for v in values] == spec["lengths"], name
        assert [hashlib.sha256(v).hexdigest() for v in values] == spec["sha256s"], name
    else:
        raw = np.ascontiguousarray(array).tobytes()
        assert len(raw) == spec["nbytes"], name
        assert hashlib.sha256(raw).hexdigest() == spec["sha256"], name
        if "raw_b64" in spec:
            assert raw == base64.b64decode(spec["raw_b64"]), name


@pytest.mark.parametrize("checkpoint", sorted(CHECKPOINTS))
def test_every_tensor_matches_manifest(checkpoint: str) -> None:
    spec = CHECKPOINTS[checkpoint]
    prefix = FIXTURES / spec["prefix"]
    reader = remoteckpt.CheckpointReader(prefix)
    shapes = reader.get_variable_to_shape_map()
    dtype_map = reader.get_variable_to_dtype_map()
    for name, tensor in spec["tensors"].items():
        assert reader.has_tensor(name)
        assert shapes[name] == tensor["shape"]
        expected_dtype = "object" if tensor["dtype"] == "string" else tensor["dtype"]
        assert str(dtype_map[name]) == expected_dtype, name
        _check(name, tensor, reader.get_tensor(name))
    loaded = remoteckpt.load(prefix, list(spec["tensors"]))
    for name, tensor in spec["tensors"].items():
        _check(name, tensor, loaded[name])


def test_sliced_fixture_reads_whole_and_in_boxes() -> None:
    prefix = FIXTURES / "sliced" / "ckpt"
    reader = remoteckpt.CheckpointReader(prefix)
    assert list(reader.get_variable_to_shape_map()) == ["part/w"]  # slice entries are hidden
    whole = reader.get_tensor("part/w")
    assert reader.index.entries[b"part/w"].slices  # really stored in boxes
    np.testing.assert_array_equal(reader.get_slice("part/w", (slice(3, 7), slice(1, 5))), whole[3:7, 1:5])
    np.testing.assert_array_equal(reader.get_slice("part/w", ((4, 0), (6, 6))), whole[4:10])
    np.testing.assert_array_equal(reader.get_slice("part/w", (slice(9, 10),)), whole[9:10])


def test_list_variables_matches_tf_sorting() -> None:
    prefix = FIXTURES / "tf2_object" / "ckpt-1"
    names = [n for n, _ in remoteckpt.list_variables(prefix)]
    assert names == sorted(names)
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" in names and "save_counter/.ATTRIBUTES/VARIABLE_VALUE" in names


def test_dtype_names_cover_manifest() -> None:
    spec = CHECKPOINTS["dtypes"]
    reader = remoteckpt.CheckpointReader(FIXTURES / spec["prefix"])
    for name, tensor in spec["tensors"].items():
        assert dtypes.dtype_name(reader.index.entries[name.encode()].dtype) == tensor["dtype"]
