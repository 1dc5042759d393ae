"""Saver, state file, retention, restore mapping, save policies and gc, on local disk and S3;
TensorFlow is the referee for the state file and retention when it is installed."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import remoteckpt
from remoteckpt.engine import loop
from remoteckpt.management.state import parse_state
from remoteckpt.storage import on_store, open_store

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tf-2.21"


@pytest.fixture(params=["local", "s3"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "run") if request.param == "local" else request.getfixturevalue("s3_prefix")


def _keys(directory: str) -> list[str]:
    return on_store(directory, lambda store: store.list())


def _indexes(directory: str) -> list[str]:
    return sorted(k[: -len(".index")] for k in _keys(directory) if k.endswith(".index") and "/" not in k)


class FakeClock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, start: float = 1_800_000_000.0) -> None:
        self.now = start
        monkeypatch.setattr(time, "time", lambda: self.now)


def test_saver_names_and_retention(base: str) -> None:
    saver = remoteckpt.Saver(max_to_keep=2)
    for step in range(5):
        prefix = saver.save({"w": np.full(3, step, np.float32)}, f"{base}/model.ckpt", global_step=step)
        assert prefix == f"{base}/model.ckpt-{step}"
    assert _indexes(base) == ["model.ckpt-3", "model.ckpt-4"]
    assert saver.last_checkpoints == [f"{base}/model.ckpt-3", f"{base}/model.ckpt-4"]
    assert remoteckpt.latest_checkpoint(base) == saver.latest_checkpoint == f"{base}/model.ckpt-4"
    state = remoteckpt.get_checkpoint_state(base)
    assert state is not None and state.all_model_checkpoint_paths == ("model.ckpt-3", "model.ckpt-4")
    assert not [k for k in _keys(base) if "ckpt-0" in k or "ckpt-1" in k or "ckpt-2" in k]  # data gone too
    np.testing.assert_array_equal(saver.restore()["w"], np.full(3, 4, np.float32))


def test_new_saver_adopts_directory(base: str) -> None:
    first = remoteckpt.Saver(max_to_keep=3)
    for step in range(3):
        first.save({"w": np.ones(2)}, f"{base}/m", global_step=step)
    second = remoteckpt.Saver(max_to_keep=3)  # as in a restarted job
    second.save({"w": np.ones(2)}, f"{base}/m", global_step=3)
    assert _indexes(base) == ["m-1", "m-2", "m-3"]
    assert second.last_checkpoints == [f"{base}/m-{s}" for s in (1, 2, 3)]


def test_keep_every_n_hours_preserves(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(monkeypatch)
    saver = remoteckpt.Saver(max_to_keep=1, keep_checkpoint_every_n_hours=1.0)
    for step in range(6):
        clock.now += 1800  # half an hour per step
        saver.save({"w": np.ones(1)}, f"{base}/m", global_step=step)
    assert _indexes(base) == ["m-2", "m-4", "m-5"]  # newer than the hourly mark when they fell off


@pytest.mark.tensorflow
def test_tensorflow_reads_our_state_and_we_read_its(tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    saver = remoteckpt.Saver(max_to_keep=3)
    for step in (10, 20):
        saver.save({"w": np.ones(2, np.float32)}, tmp_path / "model.ckpt", global_step=step)
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "model.ckpt-20")
    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert list(state.all_model_checkpoint_paths) == [str(tmp_path / "model.ckpt-10"), str(tmp_path / "model.ckpt-20")]
    np.testing.assert_array_equal(tf.train.load_checkpoint(str(tmp_path)).get_tensor("w"), np.ones(2))


@pytest.mark.parametrize("sub,latest", [("v1_saver", "model.ckpt-40"), ("tf2_object", "ckpt-1")])
def test_reads_tensorflow_state_files(sub: str, latest: str) -> None:
    directory = FIXTURES / sub
    assert remoteckpt.latest_checkpoint(directory) == str(directory / latest)
    state = remoteckpt.get_checkpoint_state(directory)
    assert state is not None and state.model_checkpoint_path == latest
    assert remoteckpt.restore(directory, allow_partial=True)  # a directory means its latest


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside/model.ckpt", "sub/../../x", "s3://other-bucket/x",
                                  "file:///etc/x", ""])
def test_state_paths_escaping_the_directory_are_refused(tmp_path: Path, path: str) -> None:
    (tmp_path / "checkpoint").write_text(f'model_checkpoint_path: "{path}"\n')
    with pytest.raises(remoteckpt.CorruptCheckpointError, match="checkpoint"):
        remoteckpt.latest_checkpoint(tmp_path)


def test_state_absolute_paths_inside_are_accepted(tmp_path: Path) -> None:
    remoteckpt.save({"a": np.ones(1)}, tmp_path / "m-1")
    (tmp_path / "checkpoint").write_text(f'model_checkpoint_path: "{tmp_path}/m-1"\n')
    assert remoteckpt.latest_checkpoint(tmp_path) == str(tmp_path / "m-1")
    state = parse_state(b'model_checkpoint_path: "s3://b/run/m-2"\n', "s3://b/run", "checkpoint")
    assert state.latest == "s3://b/run/m-2"


def test_garbage_state_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "checkpoint").write_bytes(b"\xff\xfe not text format {")
    with pytest.raises(remoteckpt.CorruptCheckpointError, match="not a checkpoint state file"):
        remoteckpt.get_checkpoint_state(tmp_path)
    assert remoteckpt.get_checkpoint_state(tmp_path / "missing") is None


def test_restore_mapping_and_checks(base: str) -> None:
    prefix = remoteckpt.save({"w/ExponentialMovingAverage": np.full((2, 3), 5.0), "w": np.zeros((2, 3)),
                              "step": np.int64(9)}, f"{base}/ema")
    got = remoteckpt.restore(prefix, names={"w/ExponentialMovingAverage": "w"})
    np.testing.assert_array_equal(got["w"], np.full((2, 3), 5.0))
    target = np.zeros((2, 3))
    remoteckpt.restore(prefix, names={"w/ExponentialMovingAverage": "w"}, out={"w": target})
    np.testing.assert_array_equal(target, np.full((2, 3), 5.0))
    with pytest.raises(remoteckpt.ShapeMismatchError, match=r"'w'.*float64\[2, 3\].*float64\[3, 2\]"):
        remoteckpt.restore(prefix, names=["w"], out={"w": np.zeros((3, 2))})
    with pytest.raises(remoteckpt.TensorNotFoundError, match="'nope'"):
        remoteckpt.restore(prefix, names=["w", "nope"])
    assert set(remoteckpt.restore(prefix, names=["w", "nope"], allow_partial=True)) == {"w"}


def test_policy_steps_seconds_and_final(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(monkeypatch)
    manager = remoteckpt.CheckpointManager(base, max_to_keep=10, checkpoint_interval=100, save_interval_seconds=600)
    saved = []
    for step in range(0, 451, 10):
        clock.now += 1 if step < 300 else 100  # slow steps after 300: the time rule kicks in
        if manager.save({"w": np.ones(1)}, step):
            saved.append(step)
    assert saved[:4] == [0, 100, 200, 300] and 360 in saved
    assert manager.final_save({"w": np.ones(1)}, 455) == f"{base}/ckpt-455"
    assert manager.final_save({"w": np.ones(1)}, 455) == f"{base}/ckpt-455"  # not twice
    assert manager.latest_checkpoint == f"{base}/ckpt-455"
    assert manager.restore()["w"] == 1


def test_saver_async(base: str) -> None:
    saver = remoteckpt.Saver(max_to_keep=2)
    weights = np.ones(1000, np.float32)
    futures = []
    for step in range(3):
        futures.append(saver.save_async({"w": weights}, f"{base}/a", global_step=step))
        weights += 1  # changed right after the call: the snapshot is what is saved
    assert [f.result(timeout=60) for f in futures] == [f"{base}/a-{s}" for s in range(3)]
    assert _indexes(base) == ["a-1", "a-2"]
    np.testing.assert_array_equal(remoteckpt.load(f"{base}/a-2")["w"], np.full(1000, 3, np.float32))


def test_gc_removes_leftovers_only(base: str) -> None:
    saver = remoteckpt.Saver()
    saver.save({"w": np.ones(4)}, f"{base}/m", global_step=1)

    async def litter() -> None:
        store = open_store(base)
        try:
            await store.put("m-2.data-00000-of-00002", b"orphan data")  # a save that never committed
            await store.put("m-2.tmp/part-00001-of-00002.index", b"table")
            await store.put("notes.txt", b"a user's file")
            await store.put(".remoteckpt-probe-0123abcd", b"1")  # a store's probe, its process killed
            if hasattr(store, "part_size"):  # S3: an upload that never completed
                writer = store.writer("m-3.data-00000-of-00001")
                await writer.write(bytes(store.part_size + 1))  # type: ignore[attr-defined]
                await asyncio.sleep(0.5)
        finally:
            await store.close()

    import asyncio

    loop.run(litter())
    assert remoteckpt.gc(base).removed == []  # all younger than an hour: maybe a save in progress
    report = remoteckpt.gc(base, older_than=0)
    assert sorted(report.removed) == [".remoteckpt-probe-0123abcd", "m-2.data-00000-of-00002",
                                      "m-2.tmp/part-00001-of-00002.index"]
    assert report.aborted_uploads == (["m-3.data-00000-of-00001"] if base.startswith("s3://") else [])
    assert sorted(_keys(base)) == ["checkpoint", "m-1.data-00000-of-00001", "m-1.index", "notes.txt"]
    np.testing.assert_array_equal(remoteckpt.load(f"{base}/m-1")["w"], np.ones(4))


@pytest.mark.tensorflow
def test_retention_matches_tensorflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tf = pytest.importorskip("tensorflow")
    schedule = [(step, 1_800_000_000.0 + step * 1500) for step in range(12)]  # 25 min apart

    for max_to_keep, hours in [(3, 10000.0), (2, 1.0), (1, 0.5), (0, 10000.0)]:
        survivors = []
        for who in ("tf", "ours"):
            directory = tmp_path / f"{who}-{max_to_keep}-{hours}"
            directory.mkdir()
            clock = FakeClock(monkeypatch, schedule[0][1] - 1)
            if who == "tf":
                with tf.Graph().as_default():
                    var = tf.compat.v1.Variable([1.0, 2.0], name="w")
                    saver = tf.compat.v1.train.Saver(max_to_keep=max_to_keep, keep_checkpoint_every_n_hours=hours,
                                                     save_relative_paths=True)
                    with tf.compat.v1.Session() as sess:
                        sess.run(var.initializer)
                        for step, now in schedule:
                            clock.now = now
                            saver.save(sess, str(directory / "model.ckpt"), global_step=step, write_meta_graph=False)
            else:
                ours = remoteckpt.Saver(max_to_keep=max_to_keep, keep_checkpoint_every_n_hours=hours)
                for step, now in schedule:
                    clock.now = now
                    ours.save({"w": np.array([1.0, 2.0], np.float32)}, directory / "model.ckpt", global_step=step)
            survivors.append(sorted(p.name[: -len(".index")] for p in directory.glob("*.index")))
            listed = tf.train.get_checkpoint_state(str(directory)).all_model_checkpoint_paths
            survivors.append([os.path.basename(p) for p in listed])
        assert survivors[0] == survivors[2], (max_to_keep, hours, survivors)
        assert survivors[1] == survivors[3], (max_to_keep, hours, survivors)


def test_saver_names_its_job_to_every_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`Saver(save_id=)` and `CheckpointManager(save_id=)` reach each save: a 2-worker job
    outside torchrun and Slurm saves without UnnamedSaveWarning."""
    import concurrent.futures
    import warnings

    from remoteckpt.protocol.save import UnnamedSaveWarning

    for var in ("REMOTECKPT_SAVE_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    options = remoteckpt.IOOptions(commit_timeout=30, poll_interval=0.01)

    def job(rank: int) -> list[str]:
        saver = remoteckpt.Saver(max_to_keep=2, rank=rank, world_size=2, save_id="job-b", options=options)
        for step in range(2):
            saver.save({f"w{rank}": np.full(3, step)}, str(tmp_path / "model.ckpt"), global_step=step)
        manager = remoteckpt.CheckpointManager(tmp_path / "managed", rank=rank, world_size=2, save_id="job-c",
                                               options=options)
        manager.final_save({f"w{rank}": np.full(3, 9)}, 9)
        return saver.last_checkpoints

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnnamedSaveWarning)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            results = [f.result(timeout=120) for f in [pool.submit(job, r) for r in (0, 1)]]
    assert results[0] == results[1] == [str(tmp_path / f"model.ckpt-{s}") for s in (0, 1)]
    assert remoteckpt.load(str(tmp_path / "model.ckpt-1"))["w1"].tolist() == [1, 1, 1]
    assert remoteckpt.load(str(tmp_path / "managed" / "ckpt-9"))["w0"].tolist() == [9, 9, 9]


def _fail_state_writes(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """Every state-file write after the first `after` raises, as a storage outage would."""
    from remoteckpt.management import saver as saver_module

    real = saver_module.write_state
    calls = {"n": 0}

    async def flaky(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] > after:
            raise remoteckpt.StorageError("state file: connection reset")
        await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(saver_module, "write_state", flaky)


def test_a_failed_state_write_deletes_no_checkpoint_it_lists(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention runs only after the state file names the checkpoints kept: when that write
    fails, the checkpoint the old state file names is still there, whole."""
    saver = remoteckpt.Saver(max_to_keep=1)
    saver.save({"w": np.zeros(3)}, f"{base}/model.ckpt", global_step=0)
    _fail_state_writes(monkeypatch, after=0)
    with pytest.raises(remoteckpt.StorageError, match="state file"):
        saver.save({"w": np.ones(3)}, f"{base}/model.ckpt", global_step=1)
    state = remoteckpt.get_checkpoint_state(base)
    assert state is not None and state.all_model_checkpoint_paths == ("model.ckpt-0",)
    for prefix in state.all_prefixes:
        np.testing.assert_array_equal(remoteckpt.load(prefix)["w"], np.zeros(3))
    assert remoteckpt.latest_checkpoint(base) == f"{base}/model.ckpt-0"


def test_a_failed_deletion_leaves_the_old_checkpoint_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An old checkpoint is deleted index first: when deleting its index fails, none of its
    data files is gone (an index over missing data would read as committed and fail)."""
    from remoteckpt.storage.local import LocalStore

    real = LocalStore.delete

    async def no_index_deletes(self: LocalStore, key: str, **kwargs: Any) -> bool:
        if key.endswith(".index"):
            raise remoteckpt.StorageError(f"{key}: permission denied")
        return await real(self, key, **kwargs)

    saver = remoteckpt.Saver(max_to_keep=1)
    saver.save({"w": np.zeros(3)}, tmp_path / "model.ckpt", global_step=0)
    monkeypatch.setattr(LocalStore, "delete", no_index_deletes)
    saver.save({"w": np.ones(3)}, tmp_path / "model.ckpt", global_step=1)  # the failed deletion is only logged
    np.testing.assert_array_equal(remoteckpt.load(tmp_path / "model.ckpt-0")["w"], np.zeros(3))


def test_a_checkpoint_the_saver_has_not_recorded_is_replaced(base: str) -> None:
    """A run that crashed between its commit and the state file left step 5 committed but not
    listed: the restarted job's Saver saves step 5 again (as TF's Saver does)."""
    remoteckpt.save({"w": np.zeros(3)}, f"{base}/model.ckpt-5")
    saver = remoteckpt.Saver(max_to_keep=2)
    assert saver.save({"w": np.ones(3)}, f"{base}/model.ckpt", global_step=5) == f"{base}/model.ckpt-5"
    np.testing.assert_array_equal(remoteckpt.load(f"{base}/model.ckpt-5")["w"], np.ones(3))
    with pytest.raises(remoteckpt.CheckpointExistsError):  # one it recorded is not replaced silently
        saver.save({"w": np.full(3, 2.0)}, f"{base}/model.ckpt", global_step=5)
