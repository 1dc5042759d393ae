"""The committed generated code is exactly what protoc makes of protos/, and the messages
carry TensorFlow's field numbers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from remoteckpt._proto import (
    checkpoint_state_pb2,
    saved_model_pb2,
    struct_pb2,
    tensor_bundle_pb2,
    tensor_shape_pb2,
    tensor_slice_pb2,
)

ROOT = Path(__file__).resolve().parents[1]
PIN = ROOT / "protos" / "protoc-requirements.txt"
GENERATOR = ROOT / "build" / "protoc"


def pinned_generator() -> Path:
    """The directory holding the pinned grpcio-tools (protos/protoc-requirements.txt), installed
    there once as `make protos` does: apart from the environment, whose protobuf may be newer
    than the one that grpcio-tools release asks for."""
    stamp = GENERATOR / ".requirements"
    if not stamp.exists() or stamp.read_text() != PIN.read_text():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade",
                        "--target", str(GENERATOR), "-r", str(PIN)], check=True)
        stamp.write_text(PIN.read_text())
    return GENERATOR


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    protos = sorted((ROOT / "protos").rglob("*.proto"))
    assert protos
    env = {**os.environ, "PYTHONPATH": str(pinned_generator())}
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", *map(str, protos)],
        check=True, env=env,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2.py*"))
    committed = sorted(p.relative_to(ROOT) for p in (ROOT / "remoteckpt" / "_proto").glob("*_pb2.py*"))
    assert generated == committed
    for rel in generated:
        assert (tmp_path / rel).read_text() == (ROOT / rel).read_text(), f"{rel} is stale: run `make protos`"


def test_field_numbers_are_tensorflows() -> None:
    entry = tensor_bundle_pb2.BundleEntryProto.DESCRIPTOR.fields_by_name
    assert {n: f.number for n, f in entry.items()} == {
        "dtype": 1, "shape": 2, "shard_id": 3, "offset": 4, "size": 5, "crc32c": 6, "slices": 7,
        # remoteckpt's extension, far from TF's numbers; TF keeps it as an unknown field
        "chunk_size": 1000, "chunk_crc32c": 1001, "content_sha256": 1002, "content_blake3": 1003}
    header = tensor_bundle_pb2.BundleHeaderProto.DESCRIPTOR.fields_by_name
    assert {n: f.number for n, f in header.items()} == {"num_shards": 1, "endianness": 2, "version": 3}
    assert tensor_shape_pb2.TensorShapeProto.DESCRIPTOR.fields_by_name["dim"].number == 2
    extent = tensor_slice_pb2.TensorSliceProto.Extent.DESCRIPTOR.fields_by_name
    assert (extent["start"].number, extent["length"].number) == (1, 2)
    state = checkpoint_state_pb2.CheckpointState.DESCRIPTOR.fields_by_name
    assert [state[n].number for n in ("model_checkpoint_path", "all_model_checkpoint_paths",
                                      "all_model_checkpoint_timestamps", "last_preserved_timestamp")] == [1, 2, 3, 4]


@pytest.mark.tensorflow
def test_same_wire_bytes_as_tensorflow() -> None:
    tf_bundle = pytest.importorskip("tensorflow.core.protobuf.tensor_bundle_pb2")
    ours = tensor_bundle_pb2.BundleEntryProto(dtype=7, shard_id=2, offset=9, size=4, crc32c=123)
    ours.shape.dim.add(size=3)
    ours.slices.add().extent.add(start=1, length=2)
    theirs = tf_bundle.BundleEntryProto.FromString(ours.SerializeToString())
    assert theirs.SerializeToString(deterministic=True) == ours.SerializeToString(deterministic=True)
    assert theirs.shape.dim[0].size == 3 and theirs.slices[0].extent[0].length == 2


def _same_fields(ours: Any, theirs: Any, seen: set[str]) -> None:
    """Every field `ours` (a message descriptor) declares is `theirs`' of the same name, number,
    type and cardinality, recursively through the messages and enums they hold."""
    if ours.full_name in seen:
        return
    seen.add(ours.full_name)
    for field in ours.fields:
        other = theirs.fields_by_name.get(field.name)
        where = f"{ours.full_name}.{field.name}"
        assert other is not None, f"{where}: not in {theirs.full_name}"
        assert (field.number, field.type, field.is_repeated) == (other.number, other.type, other.is_repeated), where
        if field.message_type is not None:
            _same_fields(field.message_type, other.message_type, seen)
        if field.enum_type is not None:
            values = {v.name: v.number for v in field.enum_type.values}
            assert values.items() <= {v.name: v.number for v in other.enum_type.values}.items(), where


@pytest.mark.tensorflow
def test_saved_model_subset_is_tensorflows() -> None:
    """The subset SavedModel and StructuredValue protos: each field as TensorFlow declares it,
    down to the signatures' tensors, the graph's nodes and functions, and the object graph's
    concrete functions and their input signatures."""
    tf_saved_model = pytest.importorskip("tensorflow.core.protobuf.saved_model_pb2")
    tf_struct = pytest.importorskip("tensorflow.core.protobuf.struct_pb2")
    seen: set[str] = set()
    _same_fields(saved_model_pb2.SavedModel.DESCRIPTOR, tf_saved_model.SavedModel.DESCRIPTOR, seen)
    _same_fields(struct_pb2.StructuredValue.DESCRIPTOR, tf_struct.StructuredValue.DESCRIPTOR, seen)
    assert {"remoteckpt.proto.SavedObjectGraph", "remoteckpt.proto.NodeDef", "remoteckpt.proto.TypeSpecProto",
            "remoteckpt.proto.NamedTupleValue", "remoteckpt.proto.TensorProto"} <= seen


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["5.26.1", "6.31.1"])
def test_generated_code_loads_on_older_protobuf_runtimes(runtime: str, tmp_path: Path) -> None:
    """pyproject.toml declares protobuf 5.26.1 to 7.x: the committed code loads on the oldest
    5.x and on the 6.x TensorFlow 2.21 asks for, without a warning (this environment's runtime
    is checked by every other test)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(tmp_path),
                    f"protobuf=={runtime}"], check=True, timeout=600)
    code = ("import google.protobuf as pb, sys; assert pb.__version__ == sys.argv[1], pb.__version__\n"
            "from remoteckpt._proto import checkpoint_state_pb2, tensor_bundle_pb2\n"
            "entry = tensor_bundle_pb2.BundleEntryProto(dtype=1, chunk_size=4, chunk_crc32c=[7])\n"
            "assert tensor_bundle_pb2.BundleEntryProto.FromString(entry.SerializeToString()) == entry\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    result = subprocess.run([sys.executable, "-W", "error", "-c", code, runtime], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
