"""remoteckpt.tensorflow: tf.train.Checkpoint's object-based checkpoints, saved and restored by
remoteckpt on local disk and S3 (skipped where TensorFlow or Keras is not installed).

* `save` writes exactly what `Checkpoint.write` writes: same keys, same object graph, and for
  these small checkpoints the same bytes.
* TensorFlow (`Checkpoint.restore`) restores what `save` wrote, Keras 3 model and optimizer
  state included; `restore` restores what TensorFlow wrote (also from S3, and into an
  optimizer built after the restore call: TF's deferred restoration still works).
* `save_async` snapshots the values at call time; sharded variables reshard both ways;
  PythonState, plain trackables, two workers, errors.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
tf.get_logger().setLevel("ERROR")

import ml_dtypes  # noqa: E402

import remoteckpt  # noqa: E402
import remoteckpt.tensorflow as rtf  # noqa: E402
from remoteckpt import IOOptions  # noqa: E402
from remoteckpt.testing import SeaweedServer  # noqa: E402

pytestmark = pytest.mark.tensorflow

ROOT = Path(__file__).resolve().parent.parent
DATA = ".data-00000-of-00001"


@pytest.fixture(params=["local", "s3"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path) if request.param == "local" else request.getfixturevalue("s3_prefix")


# --- helpers -------------------------------------------------------------------------------

def make_model() -> tuple[Any, Any]:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1"), keras.layers.Dense(2, name="d2")])
    optimizer = keras.optimizers.Adam(0.01)
    model.compile(optimizer=optimizer, loss="mse")
    return model, optimizer


BATCH = (np.random.default_rng(0).random((8, 4), np.float32), np.random.default_rng(1).random((8, 2), np.float32))


def trained_model() -> tuple[Any, Any]:
    """A Keras 3 model after one training step: weights, Adam moments and iterations all set."""
    model, optimizer = make_model()
    model.train_on_batch(*BATCH)
    return model, optimizer


def state(model: Any, optimizer: Any, step: int = 0) -> Any:
    return tf.train.Checkpoint(model=model, optimizer=optimizer, step=tf.Variable(step, dtype=tf.int64))


def assert_same_variables(a: list[Any], b: list[Any]) -> None:
    assert len(a) == len(b) and a
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=getattr(x, "path", getattr(x, "name", "")))


def upload(local_prefix: str, remote_prefix: str, server: SeaweedServer) -> None:
    """Copy a checkpoint TensorFlow wrote to S3 (TF cannot write to S3 without extra plugins)."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **server.storage_options())
    directory = os.path.dirname(local_prefix)
    for name in os.listdir(directory):
        if name.startswith(os.path.basename(local_prefix) + "."):
            fs.put_file(os.path.join(directory, name), f"{os.path.dirname(remote_prefix)}/{name}".removeprefix("s3://"))


class Halves(tf.Module):
    """A [4, 3] table checkpointed as two slices of one tensor."""

    def __init__(self, value: np.ndarray) -> None:
        super().__init__()
        self.top, self.bottom = tf.Variable(value[:2]), tf.Variable(value[2:])

    def _trackable_children(self, save_type: str = "checkpoint", **kwargs: Any) -> dict[str, Any]:
        return {}

    def _serialize_to_tensors(self) -> dict[str, Any]:
        return {"table": {"4 3 0,2:-": self.top.read_value(), "4 3 2,2:-": self.bottom.read_value()}}


class Counter(tf.train.experimental.PythonState):
    def __init__(self, n: int = 0) -> None:
        self.n = n

    def serialize(self) -> str:
        return str(self.n)

    def deserialize(self, string_value: Any) -> None:
        self.n = int(string_value)


# --- tests ---------------------------------------------------------------------------------

def test_same_bytes_as_checkpoint_write(tmp_path: Path) -> None:
    model, optimizer = trained_model()
    ckpt = state(model, optimizer, step=7)
    ckpt.extra = tf.Module()
    ckpt.extra.words = tf.Variable([b"alpha", "ünï".encode(), b""])
    ckpt.extra.half = tf.Variable(np.arange(6, dtype=ml_dtypes.bfloat16).reshape(2, 3))
    ckpt.extra.flag = tf.Variable(True)
    ckpt.counter = Counter(42)
    ckpt.save_counter.assign(3)
    tf_prefix = ckpt.write(str(tmp_path / "tf"))
    ours = rtf.save(ckpt, tmp_path / "ours")
    assert ours == str(tmp_path / "ours")

    keys = dict(tf.train.list_variables(tf_prefix))
    assert keys == dict(remoteckpt.list_variables(ours))
    assert {"_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE",
            "step/.ATTRIBUTES/VARIABLE_VALUE", "counter/.ATTRIBUTES/py_state"} <= set(keys)
    assert any(k.startswith("optimizer/") for k in keys)
    assert (tmp_path / "tf.index").read_bytes() == (tmp_path / "ours.index").read_bytes()
    assert (tmp_path / f"tf{DATA}").read_bytes() == (tmp_path / f"ours{DATA}").read_bytes()
    assert set(rtf.checkpoint_tensors(ckpt)) == set(keys)


def test_tensorflow_restores_ours(tmp_path: Path) -> None:
    model, optimizer = trained_model()
    ckpt = state(model, optimizer, step=11)
    ckpt.save_counter.assign(5)
    prefix = rtf.save(ckpt, tmp_path / "ckpt-5")

    model2, optimizer2 = make_model()
    optimizer2.build(model2.trainable_variables)
    ckpt2 = state(model2, optimizer2)
    ckpt2.restore(prefix).assert_consumed()
    assert_same_variables(model.weights, model2.weights)
    assert_same_variables(optimizer.variables, optimizer2.variables)
    assert int(ckpt2.step) == 11 and int(ckpt2.save_counter) == 5 and int(optimizer2.iterations) == 1


def test_restore_what_tensorflow_wrote(base: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    model, optimizer = trained_model()
    ckpt = state(model, optimizer, step=3)
    tf_prefix = ckpt.save(str(tmp_path / "tf" / "ckpt"))  # ckpt-1, save_counter 1
    prefix = tf_prefix
    if base.startswith("s3://"):
        prefix = f"{base}/ckpt-1"
        upload(tf_prefix, prefix, request.getfixturevalue("s3_server"))

    model2, optimizer2 = make_model()
    optimizer2.build(model2.trainable_variables)
    ckpt2 = state(model2, optimizer2)
    rtf.restore(ckpt2, prefix).assert_consumed()
    assert_same_variables(model.weights, model2.weights)
    assert_same_variables(optimizer.variables, optimizer2.variables)
    assert int(ckpt2.step) == 3 and int(ckpt2.save_counter) == 1

    # Deferred: the optimizer's variables do not exist yet when restore is called.
    model3, optimizer3 = make_model()
    status = rtf.restore(state(model3, optimizer3), prefix)
    optimizer3.build(model3.trainable_variables)
    status.assert_consumed()
    assert_same_variables(optimizer.variables, optimizer3.variables)


def test_roundtrip_then_training_continues_identically(base: str) -> None:
    model, optimizer = trained_model()
    prefix = rtf.save(state(model, optimizer, step=1), f"{base}/ckpt")
    model2, optimizer2 = make_model()
    optimizer2.build(model2.trainable_variables)
    rtf.restore(state(model2, optimizer2), prefix).assert_consumed()
    model.train_on_batch(*BATCH)
    model2.train_on_batch(*BATCH)  # same Adam moments and step count -> the same update
    assert_same_variables(model.weights, model2.weights)
    assert_same_variables(optimizer.variables, optimizer2.variables)


def test_save_async_keeps_the_values_of_call_time(base: str) -> None:
    big = tf.Variable(tf.zeros([2**20, 4]))  # 16 MiB: still being written when it is updated
    small = tf.Variable([1.0, 2.0])
    ckpt = tf.train.Checkpoint(big=big, small=small)
    future = rtf.save_async(ckpt, f"{base}/async")
    big.assign_add(tf.ones_like(big))  # in place, right away
    small.assign([5.0, 6.0])
    assert future.result(timeout=60) == f"{base}/async"
    again = tf.train.Checkpoint(big=tf.Variable(tf.ones([2**20, 4])), small=tf.Variable([0.0, 0.0]))
    # a 1 MiB budget: values are read (and assigned) a batch at a time
    rtf.restore(again, f"{base}/async", options=IOOptions(memory_budget=2**20)).assert_consumed()
    assert float(tf.reduce_max(tf.abs(again.big))) == 0.0
    np.testing.assert_array_equal(again.small.numpy(), [1.0, 2.0])


def test_sharded_variables_reshard_both_ways(tmp_path: Path) -> None:
    from tensorflow.python.distribute.sharded_variable import ShardedVariable

    def sharded(rows: list[int]) -> Any:
        return ShardedVariable([tf.Variable(np.zeros((r, 2), np.float32)) for r in rows])

    value = np.arange(12, dtype=np.float32).reshape(6, 2)
    ckpt = tf.train.Checkpoint(emb=ShardedVariable([tf.Variable(value[:4]), tf.Variable(value[4:])]))
    ours = rtf.save(ckpt, tmp_path / "ours")
    reader = remoteckpt.CheckpointReader(ours)
    assert len(reader.index.entries[b"emb/.ATTRIBUTES/VARIABLE_VALUE"].slices) == 2
    np.testing.assert_array_equal(reader.get_tensor("emb/.ATTRIBUTES/VARIABLE_VALUE"), value)

    three = tf.train.Checkpoint(emb=sharded([2, 2, 2]))
    three.restore(ours).assert_consumed()  # TensorFlow reads our slices into another sharding
    np.testing.assert_array_equal(np.concatenate([v.numpy() for v in three.emb.variables]), value)

    tf_prefix = ckpt.write(str(tmp_path / "tf"))
    two = tf.train.Checkpoint(emb=sharded([3, 3]))
    rtf.restore(two, tf_prefix).assert_consumed()  # and we read TensorFlow's
    np.testing.assert_array_equal(np.concatenate([v.numpy() for v in two.emb.variables]), value)


def test_sliced_tensors_and_python_state_of_a_plain_trackable(tmp_path: Path) -> None:
    value = np.arange(12, dtype=np.float32).reshape(4, 3)
    root = tf.Module()
    root.table = Halves(value)
    root.counter = Counter(9)
    root.v = tf.Variable([1, 2, 3])
    ours = rtf.save(root, tmp_path / "ours")  # a trackable is its own root, no save_counter
    tf_prefix = tf.train.Checkpoint(root=root).write(str(tmp_path / "tf"))
    assert (tmp_path / "tf.index").read_bytes() == (tmp_path / "ours.index").read_bytes()
    assert tf.train.load_checkpoint(ours).get_tensor("table/.ATTRIBUTES/table").tolist() == value.tolist()

    other = tf.Module()
    other.counter, other.v = Counter(), tf.Variable([0, 0, 0])
    status = rtf.restore(other, tf_prefix)
    status.assert_existing_objects_matched()
    assert other.counter.n == 9 and other.v.numpy().tolist() == [1, 2, 3]
    status.expect_partial()  # `table` has no object here


def test_two_workers_share_one_checkpoint(base: str) -> None:
    model, optimizer = trained_model()
    ckpt = state(model, optimizer, step=2)
    prefix = f"{base}/two"
    results: list[Any] = [None, None]

    def worker(rank: int) -> None:
        try:
            results[rank] = rtf.save(ckpt, prefix, rank=rank, world_size=2, save_id="two-workers",
                                     options=IOOptions(commit_timeout=60))
        except BaseException as exc:  # noqa: BLE001 - checked below
            results[rank] = exc

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [prefix, prefix]
    reader = remoteckpt.CheckpointReader(prefix)
    assert reader.index.num_shards == 2
    assert {e.shard_id for e in reader.index.entries.values()} == {0, 1}
    model2, optimizer2 = make_model()
    optimizer2.build(model2.trainable_variables)
    rtf.restore(state(model2, optimizer2), prefix).assert_consumed()
    assert_same_variables(optimizer.variables, optimizer2.variables)


def test_errors(tmp_path: Path) -> None:
    plain = remoteckpt.save({"w": np.ones(3, np.float32)}, tmp_path / "plain")
    with pytest.raises(remoteckpt.TensorNotFoundError, match="not an object-based checkpoint"):
        rtf.restore(tf.train.Checkpoint(w=tf.Variable(np.zeros(3, np.float32))), plain)
    prefix = rtf.save(tf.train.Checkpoint(v=tf.Variable(1.5)), tmp_path / "float")
    with pytest.raises(remoteckpt.ShapeMismatchError, match="float32.*int32"):
        rtf.restore(tf.train.Checkpoint(v=tf.Variable(1)), prefix)
    with pytest.raises(remoteckpt.CheckpointExistsError):
        rtf.save(tf.train.Checkpoint(v=tf.Variable(2.5)), prefix)
    rtf.save(tf.train.Checkpoint(v=tf.Variable(2.5)), prefix, overwrite=True)
    restored = tf.train.Checkpoint(v=tf.Variable(0.0))
    rtf.restore(restored, prefix).assert_consumed()
    assert float(restored.v) == 2.5
    with pytest.raises(TypeError, match="trackable"):
        rtf.save({"v": 1}, tmp_path / "nope")
    with pytest.raises(remoteckpt.CheckpointNotFoundError):
        rtf.restore(restored, tmp_path / "missing")


def test_frameworks_are_imported_lazily() -> None:
    code = ("import sys, remoteckpt, remoteckpt.tensorflow, remoteckpt.jax, remoteckpt.plugins; "
            "assert 'tensorflow' not in sys.modules and 'jax' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_numbered_checkpoints_through_saver(tmp_path: Path) -> None:
    """The recipe in docs/plugins/tensorflow.md: remoteckpt.Saver numbers checkpoints and keeps
    TF's `checkpoint` state file, so TensorFlow finds and restores the latest one."""
    ckpt = tf.train.Checkpoint(v=tf.Variable([1.0, 2.0]))
    saver = remoteckpt.Saver(max_to_keep=2)
    for step in (1, 2, 3):
        ckpt.v.assign_add([1.0, 1.0])
        saver.save(rtf.checkpoint_tensors(ckpt), tmp_path / "ckpt", global_step=step)
    latest = tf.train.latest_checkpoint(str(tmp_path))
    assert latest == str(tmp_path / "ckpt-3")
    again = tf.train.Checkpoint(v=tf.Variable([0.0, 0.0]))
    again.restore(latest).assert_consumed()
    assert again.v.numpy().tolist() == [4.0, 5.0]


def test_doc_example_runs_on_s3(s3_prefix: str) -> None:
    doc = (ROOT / "docs" / "plugins" / "tensorflow.md").read_text()
    code = re.search(r"## Example\n\n```python\n(.*?)```", doc, re.S)
    assert code, "docs/plugins/tensorflow.md has no example"
    literal = 'base = "s3://my-bucket/run1"'
    assert literal in code.group(1)
    source = code.group(1).replace(literal, f"base = {s3_prefix!r}")
    namespace: dict[str, Any] = {}
    exec(compile(source, "docs/plugins/tensorflow.md", "exec"), namespace)
    assert remoteckpt.CheckpointReader(f"{s3_prefix}/ckpt-2").has_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")


def test_every_worker_computes_the_same_split_whatever_differs_between_processes() -> None:
    """The split follows names, dtypes and shapes only: object graphs of different sizes
    (Keras's automatic names differ between processes) or strings of different lengths leave
    it unchanged, so no tensor is written twice or by nobody."""
    import numpy as np

    from remoteckpt.plugins.tensorflow_plugin import OBJECT_GRAPH_KEY, share_of

    def held(graph: bytes, text: str) -> dict[str, Any]:
        return {OBJECT_GRAPH_KEY: np.array(graph, dtype=object), "name": np.array(text, dtype=object),
                **{f"w{i}": np.zeros(64 * (i + 1), np.float32) for i in range(7)}}

    one, other = held(b"g" * 10, "short"), held(b"g" * 100_000, "a much longer string value")
    shares = [[sorted(share_of(h, r, 3)) for r in range(3)] for h in (one, other)]
    assert shares[0] == shares[1]
    assert sorted(sum(shares[0], [])) == sorted(one)  # each tensor written exactly once
    assert OBJECT_GRAPH_KEY in shares[0][0]

