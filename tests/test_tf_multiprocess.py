"""remoteckpt.tensorflow with real worker processes: two spawned processes hold the same Keras
model + Adam state and each calls `remoteckpt.tensorflow.save(ckpt, prefix, rank=r,
world_size=2)`; one checkpoint is committed (one index, one data file per rank, nothing else
left), its keys are those `tf.train.Checkpoint.write` writes, and it restores every value
exactly (TensorFlow's own `Checkpoint.restore` on local disk, `remoteckpt.tensorflow.restore`
on S3 and local disk).  The thread-based test in test_plugin_tensorflow.py shares one
process; this one does not."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("keras")
tf.get_logger().setLevel("ERROR")

from spawning import run_each  # noqa: E402
from tf_workers import SAVE_COUNTER, STEP, build_state, tf_save_worker  # noqa: E402

import remoteckpt  # noqa: E402
import remoteckpt.tensorflow as rtf  # noqa: E402
from remoteckpt.storage import on_store, split_prefix  # noqa: E402

pytestmark = [pytest.mark.tensorflow, pytest.mark.multiprocess]

WORLD = 2
TIMEOUT = 60.0
OBJECT_GRAPH = rtf.OBJECT_GRAPH_KEY


@pytest.fixture(params=["local", "s3"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path) if request.param == "local" else request.getfixturevalue("s3_prefix")


def run_workers(prefix: str) -> list[Any]:
    """Both ranks in their own spawned process (S3 settings reach them through the AWS_*
    environment the s3_server fixture installs); exceptions are returned, not raised."""
    save_id = uuid.uuid4().hex
    return run_each(tf_save_worker, [(prefix, r, WORLD, save_id, TIMEOUT) for r in range(WORLD)], TIMEOUT + 120)


def store_files(prefix: str) -> list[str]:
    directory, name = split_prefix(prefix)
    return sorted(on_store(directory, lambda store: store.list(name)))


def assert_values(variables: dict[str, Any], expected: dict[str, Any]) -> None:
    for key, value in variables.items():
        np.testing.assert_array_equal(np.asarray(value), expected[key], err_msg=key, strict=True)


def restored_values(ckpt: Any) -> dict[str, Any]:
    """Checkpoint key -> value of every tensor `ckpt` would save now (object graph excluded)."""
    tensors = rtf.checkpoint_tensors(ckpt)
    del tensors[OBJECT_GRAPH]
    return tensors


def test_two_processes_write_one_tensorflow_checkpoint(base: str, tmp_path: Path) -> None:
    prefix = f"{base}/tfmp-{uuid.uuid4().hex[:6]}"
    results = run_workers(prefix)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert [r["prefix"] for r in results] == [prefix] * WORLD
    assert results[0]["pid"] != results[1]["pid"]  # really two processes

    # Both workers held the same replicated state (the precondition of a multi-worker save) ...
    values = results[0]["values"]
    assert sorted(values) == sorted(results[1]["values"])
    for key, value in values.items():
        np.testing.assert_array_equal(results[1]["values"][key], value, err_msg=key)
    # ... and split it: disjoint shares covering every tensor, none of them empty.
    shares = [set(r["keys"]) for r in results]
    assert all(shares) and not shares[0] & shares[1]
    assert shares[0] | shares[1] == set(values)

    # One committed checkpoint: an index and one data file per rank, no staging left behind.
    name = prefix.rsplit("/", 1)[1]
    assert store_files(prefix) == sorted(
        [f"{name}.index"] + [f"{name}.data-{r:05d}-of-{WORLD:05d}" for r in range(WORLD)])
    reader = remoteckpt.CheckpointReader(prefix)
    assert reader.index.num_shards == WORLD
    by_shard = {k.decode(): e.shard_id for k, e in reader.index.entries.items() if k}
    for rank, share in enumerate(shares):
        assert {k for k, s in by_shard.items() if s == rank} == share, f"rank {rank}"
    assert bytes(reader.get_tensor(OBJECT_GRAPH)[()]) == values[OBJECT_GRAPH]
    for key, value in values.items():
        if key != OBJECT_GRAPH:
            np.testing.assert_array_equal(reader.get_tensor(key), value, err_msg=key, strict=True)

    # The keys (and shapes, dtypes) are those tf.train.Checkpoint.write writes for the same object.
    ref_ckpt, _, _ = build_state(trained=True)
    reference = ref_ckpt.write(str(tmp_path / "reference"))
    ref_keys = dict(tf.train.list_variables(reference))
    assert dict(remoteckpt.list_variables(prefix)) == ref_keys
    assert set(values) == set(ref_keys)
    ref_reader = tf.train.load_checkpoint(reference)
    ref_dtypes = ref_reader.get_variable_to_dtype_map()
    for key, dtype in reader.get_variable_to_dtype_map().items():
        assert tf.dtypes.as_dtype(dtype) == ref_dtypes[key], key
    assert any(k.startswith("optimizer/") for k in ref_keys)  # Adam's slots and iterations are in it

    # remoteckpt.tensorflow.restore (any store) into a freshly built identical object.
    ckpt, model, optimizer = build_state(trained=False)
    rtf.restore(ckpt, prefix).assert_consumed()
    assert int(ckpt.step) == STEP and int(ckpt.save_counter) == SAVE_COUNTER
    assert int(optimizer.iterations) == 2
    restored = restored_values(ckpt)
    assert set(restored) == set(values) - {OBJECT_GRAPH}
    assert_values(restored, values)

    if base.startswith("s3://"):
        return  # TensorFlow 2.21 has no S3 file system built in
    # TensorFlow's own Checkpoint.restore (and .read) of what the two processes wrote.
    for method in ("restore", "read"):
        ckpt, model, optimizer = build_state(trained=False)
        getattr(ckpt, method)(prefix).assert_consumed()
        assert int(ckpt.step) == STEP and int(ckpt.save_counter) == SAVE_COUNTER
        assert_values(restored_values(ckpt), values)
        assert all(np.any(np.asarray(v) != 0) for v in model.weights + optimizer.variables[:1])
