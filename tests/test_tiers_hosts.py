"""Per-host tiers (`LocalTier(per_host=True)`, remoteckpt/tiers/hosts.py): workers in separate
processes, each with a tier directory of its own (a host's local disk), saving to SeaweedFS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import host_tier_workers as hw
import numpy as np
import pytest
from spawning import run_each

import remoteckpt
from remoteckpt.storage import on_store

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def _same(got: dict[str, Any], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert np.array_equal(np.asarray(got[name], value.dtype), value), name


def test_each_host_keeps_its_own_data_files_and_the_drain_commits_them_all(s3_server: Any, s3_prefix: str,
                                                                             tmp_path: Path) -> None:
    world, tiers = 2, str(tmp_path / "tiers")
    results = run_each(hw.save_job, [(r, world, s3_server.env(), s3_prefix, tiers, 3) for r in range(world)], 300)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    for rank, result in enumerate(results):
        data = [f for f in result["files"] if ".data-" in f]
        # keep=2 locally: steps 1 and 2, each with this host's data file only
        assert data == [f"model.ckpt-{s}.data-{rank:05d}-of-{world:05d}" for s in (1, 2)], result["files"]
        assert "model.ckpt-2.index" in result["files"] and "model.ckpt-2.durable" in result["files"]
        assert result["durable"] == [f"{s3_prefix}/model.ckpt-1", f"{s3_prefix}/model.ckpt-2"]
    remote = on_store(s3_prefix, lambda store: store.list())
    assert sorted(k for k in remote if k.endswith(".index")) == ["model.ckpt-1.index", "model.ckpt-2.index"]
    assert not [k for k in remote if k.startswith(".tiers/") and k.endswith(".index")]  # removed once durable
    for rank in range(world):  # the remote copy is the local one, byte for byte
        name = f"model.ckpt-2.data-{rank:05d}-of-{world:05d}"
        local = (tmp_path / "tiers" / f"host-{rank}" / name).read_bytes()
        assert on_store(s3_prefix, lambda store, n=name: store.get(n)) == local
    index = on_store(s3_prefix, lambda store: store.get("model.ckpt-2.index"))
    assert (tmp_path / "tiers" / "host-0" / "model.ckpt-2.index").read_bytes() == index
    _same(remoteckpt.load(f"{s3_prefix}/model.ckpt-2"), hw.expected(2, world))
    # Rank 1's data file lost remotely: its host still restores from its own disk what it holds.
    on_store(s3_prefix, lambda store: store.delete(f"model.ckpt-2.data-00001-of-{world:05d}"))
    got = run_each(hw.restore_job, [(1, world, s3_server.env(), f"{s3_prefix}/model.ckpt-2", tiers)], 120)[0]
    if isinstance(got, BaseException):
        raise got
    _same(got, hw.expected(2, world))


@pytest.mark.parametrize(("crash", "victim"), [("host-committed:2", 1), ("committed:3", 0), ("mid-copy:2", 0),
                                               ("drained:2", 1), ("staged:2", 1)])
def test_a_worker_killed_during_step_1_leaves_the_previous_or_the_new_checkpoint_and_a_restart_drains_it(
        s3_server: Any, s3_prefix: str, tmp_path: Path, crash: str, victim: int) -> None:
    """Worker `victim` is killed during step 1: at its local commit's end, the coordinator right
    after the local commit (before any worker heard of it: they judge by the index, and its own
    host gets the index back at the restart), inside its drain, after the drain's commit, or
    before it wrote anything.  The remote directory then holds step 0 and
    at most a complete step 1; a restarted job's workers resume the drain of step 1 wherever it
    was committed locally, and step 2 follows.  Every checkpoint restores exactly."""
    from spawning import run_together

    world, tiers = 2, str(tmp_path / "tiers")
    run_together(hw.crash_job, [(r, world, s3_server.env(), s3_prefix, tiers, crash, victim) for r in range(world)],
                 120)
    indexes = sorted(k for k in on_store(s3_prefix, lambda store: store.list()) if k.endswith(".index")
                     and not k.startswith(".tiers/"))
    assert indexes[0] == "model.ckpt-0.index" and set(indexes) <= {"model.ckpt-0.index", "model.ckpt-1.index"}
    for name in indexes:
        step = int(name.split("-")[1].split(".")[0])
        _same(remoteckpt.load(f"{s3_prefix}/{name[: -len('.index')]}"), hw.expected(step, world))
    committed_locally = crash != "staged:2"
    # gc on each host: what a save that never committed locally left goes; a local commit a
    # host missed gets its index back instead (its data file is the checkpoint's).
    for rank in range(world):
        remoteckpt.gc(s3_prefix, older_than=0, local_tier=hw.tier_of(tiers, rank))
        left = sorted(f for f in (tmp_path / "tiers" / f"host-{rank}").iterdir() if f.name.startswith("model.ckpt-1."))
        names = [f.name for f in left]
        if committed_locally:
            assert "model.ckpt-1.index" in names and f"model.ckpt-1.data-{rank:05d}-of-{world:05d}" in names, names
        else:
            assert names == [], names
    records = run_together(hw.restart_job, [(r, world, s3_server.env(), s3_prefix, tiers) for r in range(world)], 180)
    assert all(r is not None for r in records), records
    steps = (0, 1, 2) if committed_locally else (0, 2)
    assert records[0]["durable"][-1] == f"{s3_prefix}/model.ckpt-2"  # type: ignore[index]
    for step in steps:
        _same(remoteckpt.load(f"{s3_prefix}/model.ckpt-{step}"), hw.expected(step, world))
    if not committed_locally:
        assert not on_store(s3_prefix, lambda store: store.exists("model.ckpt-1.index"))


def test_a_per_host_checkpoint_saved_again_with_overwrite_replaces_it_on_every_tier(
        s3_server: Any, s3_prefix: str, tmp_path: Path) -> None:
    world, tiers, prefix = 2, str(tmp_path / "tiers"), f"{s3_prefix}/model.ckpt-5"
    results = run_each(hw.overwrite_job, [(r, world, s3_server.env(), prefix, tiers) for r in range(world)], 240)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    _same(remoteckpt.load(prefix), hw.expected(1, world))
    got = run_each(hw.restore_job, [(0, world, s3_server.env(), prefix, tiers)], 120)[0]
    if isinstance(got, BaseException):
        raise got
    _same(got, hw.expected(1, world))
