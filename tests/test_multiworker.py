"""Many workers, one checkpoint: real processes save their parts in parallel, rank 0 merges
and commits, every worker returns after the commit; on local disk and on S3."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from spawning import run_each
from workers import COLS, ROWS, full_matrix, save_worker, saver_worker, worker_tensors

import remoteckpt

pytestmark = pytest.mark.multiprocess


@pytest.fixture(params=["local", "s3"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path) if request.param == "local" else request.getfixturevalue("s3_prefix")


def _run(prefix: str, world_size: int, *, timeout: float = 60, failing_rank: int | None = None) -> list[object]:
    return run_each(save_worker, [(prefix, r, world_size, timeout, r == failing_rank) for r in range(world_size)],
                    timeout + 60)


@pytest.mark.parametrize("world_size", [2, 4])
def test_workers_write_one_checkpoint(base: str, world_size: int) -> None:
    prefix = f"{base}/model.ckpt-{world_size}"
    assert _run(prefix, world_size) == [prefix] * world_size
    reader = remoteckpt.CheckpointReader(prefix)
    assert reader.index.num_shards == world_size
    shapes = reader.get_variable_to_shape_map()
    assert shapes["shared/rows"] == [ROWS, COLS] and shapes["shared/cols"] == [ROWS, COLS]
    np.testing.assert_array_equal(reader.get_tensor("shared/rows"), full_matrix())
    np.testing.assert_array_equal(reader.get_tensor("shared/cols"), full_matrix() * 2)
    for rank in range(world_size):
        mine = worker_tensors(rank, world_size)
        assert reader.get_tensor(f"worker{rank}/step") == 1000 + rank
        np.testing.assert_array_equal(reader.get_tensor(f"worker{rank}/big"), mine[f"worker{rank}/big"])
        assert list(reader.get_tensor(f"worker{rank}/words")) == [f"rank {rank}".encode(), b""]
    # Nothing but the checkpoint's own files is left: no staging tables, no outcome.
    store_files = loop_list(prefix)
    assert sorted(store_files) == sorted(
        [f"model.ckpt-{world_size}.index"] + [f"model.ckpt-{world_size}.data-{r:05d}-of-{world_size:05d}"
                                              for r in range(world_size)])


def loop_list(prefix: str) -> list[str]:
    from remoteckpt.storage import on_store, split_prefix

    directory, name = split_prefix(prefix)
    return on_store(directory, lambda store: store.list(name))


def test_restore_a_different_partition(base: str) -> None:
    """Saved by 4 workers in row blocks; restored as 2 column blocks and odd boxes."""
    prefix = f"{base}/reshard"
    _run(prefix, 4)
    reader = remoteckpt.CheckpointReader(prefix)
    full = full_matrix()
    for box in [(slice(None), slice(0, COLS // 2)), (slice(5, 50), slice(7, 9)), (slice(ROWS - 1, ROWS),)]:
        np.testing.assert_array_equal(reader.get_slice("shared/rows", box), full[box])
        np.testing.assert_array_equal(reader.get_slice("shared/cols", box), (full * 2)[box])


def test_a_failing_worker_fails_everyone(base: str) -> None:
    prefix = f"{base}/failing"
    results = _run(prefix, 2, timeout=30, failing_rank=1)
    assert all(isinstance(r, Exception) for r in results), results
    assert isinstance(results[1], remoteckpt.UnsupportedDTypeError)
    assert "worker 1" in str(results[0])  # the coordinator names who failed
    with pytest.raises(remoteckpt.CheckpointNotFoundError):
        remoteckpt.CheckpointReader(prefix)


def test_missing_worker_times_out_naming_it(tmp_path: Path) -> None:
    prefix = str(tmp_path / "lonely")
    with pytest.raises(remoteckpt.CheckpointError, match=r"worker\(s\) \[1, 2\]"):
        save_worker(prefix, 0, 3, timeout=1.0)
    with pytest.raises(remoteckpt.CheckpointNotFoundError):
        remoteckpt.CheckpointReader(prefix)


@pytest.mark.tensorflow
def test_tensorflow_reads_a_four_worker_checkpoint(base: str) -> None:
    tf = pytest.importorskip("tensorflow")
    if base.startswith("s3://"):
        pytest.skip("TensorFlow 2.21 has no S3 filesystem built in; checked on local disk")
    prefix = f"{base}/tf-{uuid.uuid4().hex[:6]}"
    _run(prefix, 4)
    reader = tf.train.load_checkpoint(prefix)
    np.testing.assert_array_equal(reader.get_tensor("shared/rows"), full_matrix())
    np.testing.assert_array_equal(reader.get_tensor("shared/cols"), full_matrix() * 2)
    assert reader.get_tensor("worker3/step") == 1003
    assert sorted(reader.get_variable_to_shape_map()) == sorted(remoteckpt.CheckpointReader(prefix).get_variable_to_shape_map())


def test_multiworker_saver_retention(base: str) -> None:
    directory = f"{base}/saver"
    results = run_each(saver_worker, [(directory, r, 2, 4) for r in range(2)], 180)
    expected = [f"{directory}/model.ckpt-2", f"{directory}/model.ckpt-3"]
    assert results == [expected, expected]
    assert remoteckpt.latest_checkpoint(directory) == expected[-1]
    keys = loop_list(f"{directory}/model.ckpt")
    assert not [k for k in keys if "ckpt-0" in k or "ckpt-1" in k]
    assert remoteckpt.load(expected[-1], ["worker1/step"])["worker1/step"] == 3
