"""Tiered checkpoints: a save committed on a local tier and drained to its remote prefix (local
disk and the SeaweedFS S3 server), restored from the nearest tier, with the local tier's
retention and size cap.  TensorFlow is the referee for the tier's files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import remoteckpt
from remoteckpt.storage import on_store
from remoteckpt.tiers import drain
from remoteckpt.tiers.layout import DURABLE, LocalTier, checkpoints, local_prefix


@pytest.fixture(params=["local", "s3"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "remote") if request.param == "local" else request.getfixturevalue("s3_prefix")


def tensors(step: int) -> dict[str, np.ndarray]:
    return {"w": np.arange(3 * 2**20 // 4, dtype=np.float32) + step,  # > one CRC chunk
            "b": np.full(7, step, np.int64),
            "words": np.array([b"step", str(step).encode()], dtype=object)}


def same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def keys(directory: str) -> list[str]:
    return on_store(directory, lambda store: store.list())


def read_remote(prefix: str, key_suffix: str) -> bytes:
    directory, name = prefix.rsplit("/", 1)
    return on_store(directory, lambda store: store.get(name + key_suffix))


def test_save_commits_locally_then_drains_byte_identical(base: str, tmp_path: Path) -> None:
    tier = str(tmp_path / "tier")
    prefix = f"{base}/model.ckpt-1"
    assert remoteckpt.save(tensors(1), prefix, local_tier=tier) == prefix
    local = local_prefix(LocalTier(path=tier), prefix)
    assert os.path.exists(local + ".index")  # committed locally when save returned
    assert remoteckpt.wait_durable(prefix) == prefix
    assert os.path.exists(local + DURABLE)
    for suffix in (".index", ".data-00000-of-00001"):
        with open(local + suffix, "rb") as f:
            assert read_remote(prefix, suffix) == f.read()
    same(remoteckpt.load(prefix), tensors(1))
    same(remoteckpt.load(prefix, local_tier=tier), tensors(1))
    assert not [k for k in keys(base) if ".tmp" in k or k.endswith(".claim")]  # the drain cleaned up


def test_tier_holds_a_checkpoint_tensorflow_reads(tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    tier = tmp_path / "tier"
    prefix = str(tmp_path / "remote" / "model.ckpt-5")
    remoteckpt.save(tensors(5), prefix, local_tier=tier)
    remoteckpt.wait_durable(prefix)
    for where in (str(tier / "model.ckpt-5"), prefix):
        reader = tf.train.load_checkpoint(where)
        np.testing.assert_array_equal(reader.get_tensor("w"), tensors(5)["w"])
        assert list(reader.get_tensor("words")) == [b"step", b"5"]


def test_save_async_futures(base: str, tmp_path: Path) -> None:
    tier = str(tmp_path / "tier")
    prefix = f"{base}/async-ckpt-2"
    data = tensors(2)
    future = remoteckpt.save_async(data, prefix, local_tier=tier)
    durable = remoteckpt.durability(prefix)  # registered before the local commit
    data["w"][:] = -1  # the snapshot was taken: the caller may change its arrays
    assert future.result(60) == prefix
    assert durable.result(60) == prefix
    same(remoteckpt.load(prefix), tensors(2))
    assert remoteckpt.wait_durable(prefix) == prefix


def test_a_failed_drain_is_never_reported_durable(tmp_path: Path) -> None:
    tier = str(tmp_path / "tier")
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "blocked").write_text("a file where the remote directory should be")
    prefix = str(remote / "blocked" / "model.ckpt-3")
    remoteckpt.save(tensors(3), prefix, local_tier=tier)
    with pytest.raises(OSError):  # the remote directory cannot be made
        remoteckpt.wait_durable(prefix)
    assert not os.path.exists(local_prefix(LocalTier(path=tier), prefix) + DURABLE)
    drain.forget(prefix)  # as in a new process: nothing in flight
    with pytest.raises(remoteckpt.CheckpointNotFoundError):
        remoteckpt.wait_durable(prefix, local_tier=tier)
    # Only local: it still restores from the tier, and is the directory's latest there.
    same(remoteckpt.load(prefix, local_tier=tier), tensors(3))
    assert remoteckpt.latest_checkpoint(str(remote / "blocked"), local_tier=tier) == prefix


def test_drain_refuses_a_different_committed_remote_checkpoint(base: str, tmp_path: Path) -> None:
    prefix = f"{base}/model.ckpt-7"
    remoteckpt.save(tensors(70), prefix)  # another job's checkpoint is there
    remoteckpt.save(tensors(7), prefix, local_tier=tmp_path / "tier")
    with pytest.raises(remoteckpt.CheckpointExistsError):
        remoteckpt.wait_durable(prefix)
    same(remoteckpt.load(prefix), tensors(70))
    # The local copy is another checkpoint than the remote one: the nearest tier is not used.
    same(remoteckpt.load(prefix, local_tier=tmp_path / "tier"), tensors(70))


def test_resume_after_restart_drains_what_was_left(tmp_path: Path) -> None:
    tier = str(tmp_path / "tier")
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "run").write_text("in the way")
    prefix = str(remote / "run" / "model.ckpt-4")
    remoteckpt.save(tensors(4), prefix, local_tier=tier)
    with pytest.raises(OSError):
        remoteckpt.wait_durable(prefix)
    (remote / "run").unlink()  # the remote store is back
    futures = remoteckpt.resume_drains(tier)
    assert [f.result(60) for f in futures] == [prefix]
    same(remoteckpt.load(prefix), tensors(4))
    assert remoteckpt.resume_drains(tier) == []  # durable now: nothing left to drain


def test_resume_false_drops_undrained_checkpoints(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "run").write_text("in the way")
    prefix = str(remote / "run" / "model.ckpt-4")
    remoteckpt.save(tensors(4), prefix, local_tier=tmp_path / "tier")
    with pytest.raises(OSError):
        remoteckpt.wait_durable(prefix)
    tier = LocalTier(path=str(tmp_path / "tier"), resume=False)
    assert remoteckpt.resume_drains(tier) == []
    assert checkpoints(tier) == []
    assert not [f for f in os.listdir(tier.path) if "model.ckpt-4" in f]


# --- restore from the nearest tier -----------------------------------------------------------


def drained(base: str, tmp_path: Path, step: int = 1) -> tuple[str, str]:
    tier = str(tmp_path / "tier")
    prefix = f"{base}/model.ckpt-{step}"
    remoteckpt.save(tensors(step), prefix, local_tier=tier)
    remoteckpt.wait_durable(prefix)
    return prefix, local_prefix(LocalTier(path=tier), prefix)


def test_restore_reads_the_local_tier(base: str, tmp_path: Path) -> None:
    prefix, _ = drained(base, tmp_path)
    directory, name = prefix.rsplit("/", 1)
    on_store(directory, lambda store: store.delete(f"{name}.data-00000-of-00001"))
    same(remoteckpt.load(prefix, local_tier=tmp_path / "tier"), tensors(1))  # every byte from local disk
    with pytest.raises(remoteckpt.CheckpointNotFoundError):
        remoteckpt.load(prefix)


@pytest.mark.parametrize("damage", ["flipped-bit", "truncated", "missing-data", "missing-tier", "index-bit"])
def test_restore_falls_back_to_remote(base: str, tmp_path: Path, damage: str) -> None:
    prefix, local = drained(base, tmp_path)
    data = local + ".data-00000-of-00001"
    if damage == "flipped-bit":
        with open(data, "r+b") as f:
            f.seek(2**20 + 5)
            byte = f.read(1)
            f.seek(2**20 + 5)
            f.write(bytes([byte[0] ^ 0x10]))
    elif damage == "truncated":
        os.truncate(data, os.path.getsize(data) // 2)
    elif damage == "missing-data":
        os.remove(data)
    elif damage == "missing-tier":
        for f in os.listdir(tmp_path / "tier"):
            os.remove(tmp_path / "tier" / f)
    else:
        with open(local + ".index", "r+b") as f:
            f.seek(10)
            byte = f.read(1)
            f.seek(10)
            f.write(bytes([byte[0] ^ 0x01]))
    same(remoteckpt.load(prefix, local_tier=tmp_path / "tier"), tensors(1))
    with remoteckpt.CheckpointReader(prefix, local_tier=tmp_path / "tier") as reader:
        np.testing.assert_array_equal(reader.get_slice("w", (slice(2**18, 2**18 + 10),)), tensors(1)["w"][2**18 : 2**18 + 10])


def test_damaged_local_only_checkpoint_fails_clearly(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "run").write_text("in the way")
    prefix = str(remote / "run" / "model.ckpt-1")
    remoteckpt.save(tensors(1), prefix, local_tier=tmp_path / "tier")
    with pytest.raises(OSError):
        remoteckpt.wait_durable(prefix)
    data = local_prefix(LocalTier(path=str(tmp_path / "tier")), prefix) + ".data-00000-of-00001"
    with open(data, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(remoteckpt.CheckpointError, match="local tier only"):
        remoteckpt.load(prefix, local_tier=tmp_path / "tier")


# --- Saver, CheckpointManager, retention ------------------------------------------------------


def test_saver_reports_both_steps_and_keeps_per_tier(base: str, tmp_path: Path) -> None:
    tier = LocalTier(path=str(tmp_path / "tier"), keep=1)
    saver = remoteckpt.Saver(max_to_keep=2, local_tier=tier)
    for step in range(4):
        saver.save(tensors(step), f"{base}/model.ckpt", global_step=step)
    assert saver.wait_durable(60) == [f"{base}/model.ckpt-2", f"{base}/model.ckpt-3"]
    assert saver.durable_checkpoints == saver.last_checkpoints
    state = remoteckpt.get_checkpoint_state(base)
    assert state is not None and state.all_model_checkpoint_paths == ("model.ckpt-2", "model.ckpt-3")
    remote_indexes = sorted(k for k in keys(base) if k.endswith(".index"))
    assert remote_indexes == ["model.ckpt-2.index", "model.ckpt-3.index"]
    assert [c.name for c in checkpoints(tier)] == ["model.ckpt-3"]  # keep=1 locally, once durable
    same(saver.restore(), tensors(3))
    assert remoteckpt.latest_checkpoint(base, local_tier=tier) == f"{base}/model.ckpt-3"


def test_a_save_returns_before_the_tier_is_trimmed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import threading

    from remoteckpt.tiers import retention

    tier = LocalTier(path=str(tmp_path / "tier"), keep=1)
    prefixes = [str(tmp_path / "remote" / f"model.ckpt-{step}") for step in range(3)]
    for step in (0, 1):
        remoteckpt.save(tensors(step), prefixes[step], local_tier=tier)
        remoteckpt.wait_durable(prefixes[step])
    assert [c.name for c in checkpoints(tier)] == ["model.ckpt-1"]
    gate = threading.Event()
    evict = retention.delete_local

    async def gated(tier: LocalTier, name: str) -> None:
        await asyncio.to_thread(gate.wait, 60)
        await evict(tier, name)

    monkeypatch.setattr(retention, "delete_local", gated)
    remoteckpt.save(tensors(2), prefixes[2], local_tier=tier)  # returns with the eviction held
    assert [c.name for c in checkpoints(tier)] == ["model.ckpt-1", "model.ckpt-2"]
    gate.set()
    remoteckpt.wait_durable(prefixes[2])
    assert [c.name for c in checkpoints(tier)] == ["model.ckpt-2"]
    same(remoteckpt.load(prefixes[1], local_tier=tier), tensors(1))  # from the remote tier


def test_restarted_saver_resumes_drains(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "run").write_text("in the way")
    base = str(remote / "run")
    first = remoteckpt.Saver(max_to_keep=3, local_tier=tmp_path / "tier")
    first.save(tensors(1), f"{base}/model.ckpt", global_step=1)
    with pytest.raises(OSError):
        first.wait_durable(60)
    assert first.durable_checkpoints == []
    assert first.latest_checkpoint == f"{base}/model.ckpt-1"
    (remote / "run").unlink()
    drain.forget(f"{base}/model.ckpt-1")
    second = remoteckpt.CheckpointManager(base, max_to_keep=3, checkpoint_name="model.ckpt",
                                         local_tier=tmp_path / "tier")  # a restarted job
    second.save(tensors(2), 2)
    assert second.wait_durable(60) == [f"{base}/model.ckpt-1", f"{base}/model.ckpt-2"]
    state = remoteckpt.get_checkpoint_state(base)
    assert state is not None and state.all_model_checkpoint_paths == ("model.ckpt-1", "model.ckpt-2")
    same(remoteckpt.load(f"{base}/model.ckpt-1"), tensors(1))


def test_size_cap_evicts_durable_checkpoints_only(base: str, tmp_path: Path) -> None:
    one = sum(a.nbytes for a in tensors(0).values() if a.dtype != object)
    tier = LocalTier(path=str(tmp_path / "tier"), keep=10, max_bytes=int(2.5 * one))
    for step in range(4):
        remoteckpt.save(tensors(step), f"{base}/model.ckpt-{step}", local_tier=tier)
        remoteckpt.wait_durable(f"{base}/model.ckpt-{step}")
        assert sum(c.size for c in checkpoints(tier)) <= tier.max_bytes
    assert [c.name for c in checkpoints(tier)] == ["model.ckpt-2", "model.ckpt-3"]
    for step in range(4):
        same(remoteckpt.load(f"{base}/model.ckpt-{step}", local_tier=tier), tensors(step))


def test_size_cap_never_evicts_what_is_not_durable(tmp_path: Path) -> None:
    one = sum(a.nbytes for a in tensors(0).values() if a.dtype != object)
    tier = LocalTier(path=str(tmp_path / "tier"), max_bytes=int(1.5 * one), full_timeout=0.0)
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "run").write_text("in the way")
    remoteckpt.save(tensors(1), str(remote / "run" / "model.ckpt-1"), local_tier=tier)
    with pytest.raises(OSError):
        remoteckpt.wait_durable(str(remote / "run" / "model.ckpt-1"))
    with pytest.raises(remoteckpt.LocalTierFullError, match="durable"):
        remoteckpt.save(tensors(2), str(remote / "run" / "model.ckpt-2"), local_tier=tier)
    assert [c.name for c in checkpoints(tier)] == ["model.ckpt-1"]
    with pytest.raises(remoteckpt.LocalTierFullError, match="cannot fit"):
        remoteckpt.save({"huge": np.zeros(2 * one, np.uint8)}, str(remote / "x"), local_tier=tier)


def test_gc_cleans_both_tiers(base: str, tmp_path: Path) -> None:
    tier = LocalTier(path=str(tmp_path / "tier"))
    prefix, local = drained(base, tmp_path)
    # What a save killed before its local commit leaves: a record and a data file, no index.
    with open(local.replace("ckpt-1", "ckpt-2") + ".tier", "wb") as f:
        f.write(b'{"remote": "%s", "time": 1}' % prefix.replace("ckpt-1", "ckpt-2").encode())
    with open(local.replace("ckpt-1", "ckpt-2") + ".data-00000-of-00001", "wb") as f:
        f.write(b"x" * 100)
    report = remoteckpt.gc(base, older_than=0, local_tier=tier)
    assert sorted(report.removed) == ["model.ckpt-2.data-00000-of-00001", "model.ckpt-2.tier"]
    assert [c.name for c in checkpoints(tier)] == ["model.ckpt-1"]
    same(remoteckpt.load(prefix, local_tier=tier), tensors(1))


def test_same_name_of_another_remote_prefix(tmp_path: Path) -> None:
    tier = str(tmp_path / "tier")
    first, second = str(tmp_path / "run-a" / "model.ckpt-1"), str(tmp_path / "run-b" / "model.ckpt-1")
    remoteckpt.save(tensors(1), first, local_tier=tier)
    remoteckpt.wait_durable(first)
    remoteckpt.save(tensors(2), second, local_tier=tier)  # the durable one of run-a gives way
    remoteckpt.wait_durable(second)
    same(remoteckpt.load(first, local_tier=tier), tensors(1))  # from its remote tier now
    same(remoteckpt.load(second, local_tier=tier), tensors(2))
    blocked = tmp_path / "run-c"
    blocked.write_text("in the way")
    remoteckpt.save(tensors(3), str(blocked / "model.ckpt-2"), local_tier=tier)
    with pytest.raises(OSError):
        remoteckpt.wait_durable(str(blocked / "model.ckpt-2"))
    with pytest.raises(remoteckpt.LocalTierFullError, match="not yet durable"):
        remoteckpt.save(tensors(4), str(tmp_path / "run-d" / "model.ckpt-2"), local_tier=tier)


def test_the_docs_example_runs_on_s3(s3_prefix: str, tmp_path: Path) -> None:
    doc = Path(__file__).resolve().parent.parent / "docs" / "tiered.md"
    source = doc.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    source = source.replace('"s3://bucket/run/model.ckpt-1000"', repr(f"{s3_prefix}/model.ckpt-1000"))
    source = source.replace('"/mnt/nvme/ckpt"', repr(str(tmp_path / "tier")))
    source = source.replace('"s3://bucket/run/model.ckpt-2000"', repr(f"{s3_prefix}/model.ckpt-2000"))
    namespace: dict[str, object] = {"tensors": tensors(9)}
    exec(compile(source, str(doc), "exec"), namespace)
    same(namespace["tensors"], tensors(9))  # type: ignore[arg-type]
    same(remoteckpt.load(f"{s3_prefix}/model.ckpt-2000"), tensors(9))


def test_a_drain_again_never_replaces_its_own_checkpoint(base: str, tmp_path: Path) -> None:
    """A drain resumed after its remote commit (killed before its marker) finds its checkpoint
    committed: marked durable, nothing uploaded again, even when the save may overwrite."""
    from remoteckpt.engine import loop

    prefix, local = drained(base, tmp_path)
    directory, name = prefix.rsplit("/", 1)
    before = on_store(directory, lambda store: store.list_info(name))
    os.remove(local + DURABLE)
    assert loop.run(drain.drain(local, prefix, overwrite=True)) == prefix
    assert os.path.exists(local + DURABLE)
    assert on_store(directory, lambda store: store.list_info(name)) == before  # the same versions


def test_progress_reports_the_local_commit_then_durability(tmp_path: Path) -> None:
    events: list[remoteckpt.ProgressEvent] = []
    prefix = str(tmp_path / "remote" / "model.ckpt-1")
    remoteckpt.save(tensors(1), prefix, local_tier=tmp_path / "tier", progress=events.append)
    remoteckpt.wait_durable(prefix)
    kinds = [e.kind for e in events]
    assert "committed" in kinds and kinds[-1] == "durable"
    assert kinds.index("committed") < kinds.index("durable")
    assert events[-1].prefix == prefix and events[-1].done == events[-1].total > 0


def test_a_remote_checkpoint_replaced_since_the_drain_is_read_instead(base: str, tmp_path: Path) -> None:
    """A durable local copy is read at once and the remote index compared meanwhile: the
    remote prefix replaced by another save since (outside the tier) is what the read returns."""
    prefix, _ = drained(base, tmp_path)
    remoteckpt.save({"other": np.arange(5)}, prefix, overwrite=True)  # no tier: the local copy is stale
    with remoteckpt.CheckpointReader(prefix, local_tier=tmp_path / "tier") as reader:
        assert reader.get_tensor("other").tolist() == [0, 1, 2, 3, 4]
        assert reader.has_tensor("other") and not reader.has_tensor("w")
    same(remoteckpt.load(prefix, names=["other"], local_tier=tmp_path / "tier"), {"other": np.arange(5)})


def test_incremental_save_through_a_local_tier(base: str, tmp_path: Path) -> None:
    """An incremental save with a local tier copies its unchanged tensors from the tier's
    previous checkpoint on local disk; the drained checkpoint is complete on its own."""
    tier = str(tmp_path / "tier")
    first, second = tensors(1), dict(tensors(1), b=np.full(7, 99, np.int64))
    remoteckpt.save(first, f"{base}/model.ckpt-1", local_tier=tier, incremental=True)
    remoteckpt.wait_durable(f"{base}/model.ckpt-1")
    remoteckpt.save(second, f"{base}/model.ckpt-2", local_tier=tier, incremental=True)
    remoteckpt.wait_durable(f"{base}/model.ckpt-2")
    on_store(base, lambda store: store.delete("model.ckpt-1.index"))
    same(remoteckpt.load(f"{base}/model.ckpt-2"), second)
    same(remoteckpt.load(f"{base}/model.ckpt-2", local_tier=tier), second)


def test_a_checkpoint_open_through_the_tier_is_not_evicted(tmp_path: Path) -> None:
    """Retention keeps a checkpoint a `CheckpointReader(local_tier=)` of this process has open
    (it is registered under its remote prefix), and evicts it once the reader is closed."""
    base = str(tmp_path / "remote")
    tier = LocalTier(path=str(tmp_path / "tier"), keep=1)
    first = f"{base}/model.ckpt-1"
    remoteckpt.save(tensors(1), first, local_tier=tier)
    remoteckpt.wait_durable(first)
    reader = remoteckpt.CheckpointReader(first, local_tier=tier)
    for step in (2, 3):
        remoteckpt.save(tensors(step), f"{base}/model.ckpt-{step}", local_tier=tier)
        remoteckpt.wait_durable(f"{base}/model.ckpt-{step}")
    assert "model.ckpt-1" in [c.name for c in checkpoints(tier)]
    same({n: reader.get_tensor(n) for n in tensors(1)}, tensors(1))
    reader.close()
    remoteckpt.save(tensors(4), f"{base}/model.ckpt-4", local_tier=tier)
    remoteckpt.wait_durable(f"{base}/model.ckpt-4")
    assert [c.name for c in checkpoints(tier)] == ["model.ckpt-4"]


def test_a_worker_watching_for_durability_sees_it_after_the_checkpoint_was_evicted(tmp_path: Path) -> None:
    """Ranks > 0 watch the shared tier for the durable marker; retention may evict the
    checkpoint (marker included) right after it is written.  A checkpoint gone from the tier
    is then judged by the remote index: there, durable; not there, a clear failure at once
    (not after the whole timeout)."""
    remote = tmp_path / "remote"
    remote.mkdir()
    tier = tmp_path / "tier"
    tier.mkdir()
    for name, exists in (("model.ckpt-1", True), ("model.ckpt-2", False)):
        if exists:
            (remote / f"{name}.index").write_bytes(b"committed")
        local = str(tier / name)
        (tier / f"{name}.tier").write_bytes(b"{}")
        future = drain.watch_marker(local, str(remote / name), timeout=60.0)
        os.remove(tier / f"{name}.tier")  # evicted before the watcher saw the marker
        if exists:
            assert future.result(timeout=10) == str(remote / name)
        else:
            with pytest.raises(remoteckpt.CheckpointNotFoundError, match="left the local tier"):
                future.result(timeout=10)


def test_a_remote_index_that_does_not_decode_leaves_the_local_copy_readable(base: str, tmp_path: Path) -> None:
    """An index that does not decode is ignored for the other tier's: a damaged remote index
    is no reason to drop a good local copy (docs/tiered.md)."""
    prefix, local = drained(base, tmp_path)
    directory, name = prefix.rsplit("/", 1)
    on_store(directory, lambda store: store.put(f"{name}.index", b"not an index"))
    same(remoteckpt.load(prefix, local_tier=tmp_path / "tier"), tensors(1))
    os.remove(local + DURABLE)  # not durable: both indexes are read before any data
    same(remoteckpt.load(prefix, local_tier=tmp_path / "tier"), tensors(1))


def test_an_incremental_drain_has_the_remote_store_copy_what_is_unchanged(s3_server: object, s3_prefix: str,
                                                                           tmp_path: Path) -> None:
    """With incremental saves, the drain of the second checkpoint sends only the changed
    tensor (and what reaches a part boundary): the rest is copied by S3 from the remote
    directory's latest checkpoint (UploadPartCopy), counted through a proxy.  The remote copy
    is complete on its own and identical to the local one."""
    from faultproxy import FaultProxy

    rng = np.random.default_rng(7)
    mib = 2**20
    first = {f"w{i}": rng.random(6 * mib // 4, dtype=np.float32) for i in range(6)}  # 36 MiB
    second = dict(first, w5=rng.random(6 * mib // 4, dtype=np.float32))
    tier = str(tmp_path / "tier")
    with FaultProxy(s3_server.endpoint_url, record=True) as proxy:  # type: ignore[attr-defined]
        opts = {"endpoint_url": proxy.endpoint_url}
        saver = remoteckpt.Saver(max_to_keep=2, local_tier=tier, incremental=True, storage_options=opts)
        saver.save(first, f"{s3_prefix}/model.ckpt", global_step=1)
        saver.wait_durable(60)
        before = len(proxy.records or [])
        saver.save(second, f"{s3_prefix}/model.ckpt", global_step=2)
        saver.wait_durable(60)
        records = (proxy.records or [])[before:]
    uploaded = sum(r[10] for r in records if r[3] == "PUT" and ".data-" in r[5])
    assert uploaded <= 6 * mib + 5 * mib + 2**16, uploaded  # w5, and at most a part's minimum more
    prefix = f"{s3_prefix}/model.ckpt-2"
    local = local_prefix(LocalTier(path=tier), prefix)
    assert read_remote(prefix, ".data-00000-of-00001") == open(local + ".data-00000-of-00001", "rb").read()
    on_store(s3_prefix, lambda store: store.delete("model.ckpt-1.index"))
    same(remoteckpt.load(prefix), second)


def test_gc_collects_what_a_per_host_local_commit_left_in_the_remote_directory(base: str) -> None:
    """A per-host tier's local commit runs the save protocol at the remote ``.tiers/NAME``; its
    coordinator killed right after the commit leaves there its claim and its notice, next to the
    committed ``.tiers/NAME.index`` a restart needs.  `gc` of the remote directory collects the
    leftovers (once the claim's lease ran out) and keeps the index."""
    from remoteckpt.engine import loop
    from remoteckpt.options import IOOptions
    from remoteckpt.protocol.records import ClaimRecord
    from remoteckpt.storage import open_store

    remoteckpt.save(tensors(0), f"{base}/model.ckpt-0")
    dead = ClaimRecord(save_id="job", world_size=2, attempt="a1", host="gone", pid=1, lease=1.0)
    litter = {".tiers/model.ckpt-1.index": b"the local commit", ".tiers/model.ckpt-1.claim": dead.encode(),
              ".tiers/model.ckpt-1.tmp/notice-00000": b"{}", ".tiers/model.ckpt-2.tmp-a2/worker-00001": b"table"}

    async def put() -> None:
        store = open_store(base)
        try:
            for key, data in litter.items():
                await store.put(key, data)
        finally:
            await store.close()

    loop.run(put())
    report = remoteckpt.gc(base, older_than=0, options=IOOptions(lease_timeout=1.0))
    assert sorted(report.removed) == sorted(k for k in litter if not k.endswith(".index"))
    assert sorted(on_store(base, lambda store: store.list())) == [
        ".tiers/model.ckpt-1.index", "model.ckpt-0.data-00000-of-00001", "model.ckpt-0.index"]


def test_gc_removes_the_local_commit_of_a_drained_per_host_checkpoint(base: str) -> None:
    """A per-host checkpoint's ``.tiers/NAME.index`` outlives its drain when the coordinator dies
    between the drain's commit and its removal, and a worker of the same host marked the host's
    copy durable (no restart then drains it again).  `gc` removes it once ``NAME.index`` holds
    the same bytes, and leaves alone a local commit whose checkpoint is not (or not that one)."""
    from remoteckpt.engine import loop
    from remoteckpt.storage import open_store

    for step in (0, 2):
        remoteckpt.save(tensors(step), f"{base}/model.ckpt-{step}")
    drained = on_store(base, lambda store: store.get("model.ckpt-0.index"))

    async def put() -> None:
        store = open_store(base)
        try:
            for step in (0, 1, 2):  # 0 drained; 1 not drained; 2 another checkpoint than the one drained
                await store.put(f".tiers/model.ckpt-{step}.index", drained)
        finally:
            await store.close()

    loop.run(put())
    assert remoteckpt.gc(base).removed == []  # younger than an hour
    assert remoteckpt.gc(base, older_than=0).removed == [".tiers/model.ckpt-0.index"]
    assert sorted(k for k in on_store(base, lambda store: store.list()) if k.startswith(".tiers/")) == [
        ".tiers/model.ckpt-1.index", ".tiers/model.ckpt-2.index"]
