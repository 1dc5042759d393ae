"""The DCP plugin's `StorageWriter` through per-host tiers (``LocalTier(per_host=True)``): every
rank's data file on its own host's tier, DCP's metadata file on the coordinator's, the local
commit in the remote directory, every rank draining its own file (`tiers.collective`); and a
drain interrupted by a crash, resumed by the restarted job."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import remoteckpt
from remoteckpt.faults import ENV as CRASH_ENV
from remoteckpt.storage import open_store, split_prefix

pytest.importorskip("torch")

from spawning import run_ranks  # noqa: E402


def _remote_names(prefix: str) -> list[str]:
    directory, _ = split_prefix(prefix)
    from remoteckpt.engine import loop

    async def names() -> list[str]:
        store = open_store(directory)
        try:
            return sorted(await store.list(""))
        finally:
            await store.close()

    return loop.run(names())


def test_two_hosts_save_drain_and_load_through_their_own_tiers(tmp_path: Path, s3_prefix: str) -> None:
    import torch_workers as w

    prefixes = [f"{s3_prefix}/run/step-{i}" for i in (100, 200, 300)]
    tiers = str(tmp_path / "tiers")
    results = run_ranks(w.per_host_tier_job, 2, tmp_path, prefixes, tiers)
    # Each host's tier holds its own rank's data files only; DCP's metadata file (the third of
    # three) is on the coordinator's host, which also names it in NAME.drains.
    for step in (100, 200, 300):
        host0 = [f for f in results[0]["files"] if f.startswith(f"step-{step}.")]
        host1 = [f for f in results[1]["files"] if f.startswith(f"step-{step}.")]
        assert sorted(f for f in host0 if ".data-" in f) == [f"step-{step}.data-00000-of-00003",
                                                              f"step-{step}.data-00002-of-00003"], host0
        assert [f for f in host1 if ".data-" in f] == [f"step-{step}.data-00001-of-00003"], host1
        assert f"step-{step}.drains" in host0 and f"step-{step}.drains" not in host1
        assert {f"step-{step}.index", f"step-{step}.durable"} <= set(host0) & set(host1)
    # The remote copies: three data files and one index each, the local commits removed.
    names = _remote_names(prefixes[0])
    assert not [n for n in names if n.startswith(".tiers/")], names
    full = w.full_state()
    for prefix in prefixes:
        with remoteckpt.load_checkpoint(prefix) as reader:
            assert reader.index.num_shards == 3
            np.testing.assert_array_equal(reader.get_tensor("model.weight"), full["model.weight"].numpy())
            np.testing.assert_array_equal(reader.get_tensor("model.cols"), full["model.cols"].numpy())


def test_one_rank_of_each_host_reads_the_local_commit(tmp_path: Path, s3_server: Any, s3_prefix: str) -> None:
    """Four ranks, two a host, through a recording proxy: a rank other than the coordinator
    learns of the local commit by reading `.tiers/NAME.index`, but only one rank of each host
    reads it from the store (the host's looker); the other finds it on the tier."""
    import torch_workers as w
    from faultproxy import FaultProxy

    prefixes = [f"{s3_prefix}/run/step-{i}" for i in (100, 200)]
    with FaultProxy(s3_server.endpoint_url, record=True) as proxy:
        results = run_ranks(w.host_pairs_tier_job, 4, tmp_path, prefixes, str(tmp_path / "tiers"),
                            proxy.endpoint_url)
        records = list(proxy.records or [])
    assert all("step-200.index" in r["files"] for r in results)
    directory = s3_prefix.split("/", 3)[3]
    for step in (100, 200):
        key = f"{directory}/run/.tiers/step-{step}.index"
        readers = {r[6] for r in records if r[5] == key and r[4] == "GET"}
        # host 0: the coordinator (rank 0) has it handed over, and rank 1 may check it before
        # removing it; host 1: one of ranks 2 and 3, never both
        assert len(readers & {"rank2", "rank3"}) == 1, (step, readers)


def test_a_single_process_job_drains_its_data_and_metadata_files(tmp_path: Path, s3_prefix: str) -> None:
    import torch
    import torch.distributed.checkpoint as dcp

    from remoteckpt import torch as rt

    tier = remoteckpt.LocalTier(path=str(tmp_path / "host-0"), per_host=True)
    prefix = f"{s3_prefix}/one/step-1"
    state = {"w": torch.arange(5000, dtype=torch.float32), "b": torch.ones(3, dtype=torch.int64)}
    dcp.save(state, storage_writer=rt.StorageWriter(prefix, local_tier=tier), no_dist=True)
    assert remoteckpt.wait_durable(prefix, timeout=60) == prefix
    with remoteckpt.load_checkpoint(prefix) as reader:
        assert reader.index.num_shards == 2
    from torch.distributed.checkpoint.api import CheckpointException

    with pytest.raises(CheckpointException, match="already exists"):
        dcp.save(state, storage_writer=rt.StorageWriter(prefix, local_tier=tier), no_dist=True)
    target = {"w": torch.zeros(5000), "b": torch.zeros(3, dtype=torch.int64)}
    dcp.load(target, storage_reader=rt.StorageReader(prefix, local_tier=tier), no_dist=True)
    assert torch.equal(target["w"], state["w"]) and torch.equal(target["b"], state["b"])
    # Overwriting: the host's copy gives way, the new one drains over the remote checkpoint.
    state["w"] += 1
    dcp.save(state, storage_writer=rt.StorageWriter(prefix, local_tier=tier, overwrite=True), no_dist=True)
    remoteckpt.wait_durable(prefix, timeout=60)
    with remoteckpt.load_checkpoint(prefix) as reader:
        np.testing.assert_array_equal(reader.get_tensor("w"), state["w"].numpy())


_CRASHING_SAVE = textwrap.dedent("""
    import sys, torch, torch.distributed.checkpoint as dcp, remoteckpt
    from remoteckpt import torch as rt
    tier = remoteckpt.LocalTier(path=sys.argv[1], per_host=True)
    state = {"w": torch.arange(70000, dtype=torch.float32), "b": torch.ones(3, dtype=torch.int64)}
    dcp.save(state, storage_writer=rt.StorageWriter(sys.argv[2], local_tier=tier), no_dist=True)
    remoteckpt.wait_durable(sys.argv[2], timeout=60)
""")


@pytest.mark.parametrize("point", ["committed", "draining", "mid-copy"])
def test_a_restarted_job_resumes_the_coordinators_drain_with_the_metadata_file(point: str, tmp_path: Path,
                                                                               s3_prefix: str) -> None:
    """Killed right after the local commit (before its host's copy of the index), before its
    drain, or in the middle of it: the restarted job gets the index back, and drains the
    coordinator's data file and DCP's metadata file."""
    import torch
    import torch.distributed.checkpoint as dcp

    from remoteckpt import torch as rt

    tier_path, prefix = str(tmp_path / "host-0"), f"{s3_prefix}/crash-{point}/step-1"
    env = {**os.environ, CRASH_ENV: point}
    done = subprocess.run([sys.executable, "-c", _CRASHING_SAVE, tier_path, prefix], env=env, timeout=120)
    assert done.returncode == -9
    assert not [n for n in _remote_names(prefix) if n.endswith("step-1.index") and "/.tiers/" not in f"/{n}"]
    tier = remoteckpt.LocalTier(path=tier_path, per_host=True)
    futures = remoteckpt.resume_drains(tier, rank=0)
    assert [f.result(timeout=60) for f in futures] == [prefix]
    with remoteckpt.load_checkpoint(prefix) as reader:
        assert reader.index.num_shards == 2 and reader.has_tensor("_DCP_METADATA")
    target = {"w": torch.zeros(70000), "b": torch.zeros(3, dtype=torch.int64)}
    dcp.load(target, storage_reader=rt.StorageReader(prefix), no_dist=True)
    assert torch.equal(target["w"], torch.arange(70000, dtype=torch.float32))
    directory = split_prefix(prefix)[0]
    removed = remoteckpt.gc(directory, older_than=0, local_tier=tier).removed
    assert removed == ([".tiers/step-1.claim"] if point == "committed" else []), removed  # the dead coordinator's
    assert _remote_names(prefix) == ["step-1.data-00000-of-00002", "step-1.data-00001-of-00002", "step-1.index"]


def test_a_failed_commit_fails_the_durability_future_and_the_next_save_drains(tmp_path: Path, s3_prefix: str,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    from remoteckpt import torch as rt
    from remoteckpt.plugins import torch_dcp

    tier = remoteckpt.LocalTier(path=str(tmp_path / "host-0"), per_host=True)
    prefix = f"{s3_prefix}/failed/step-1"
    state = {"w": torch.arange(100, dtype=torch.float32)}
    real = torch_dcp.commit_tables

    async def refused(*args: object, **kwargs: object) -> bytes:
        raise remoteckpt.SaveFailedError("the commit was refused")

    monkeypatch.setattr(torch_dcp, "commit_tables", refused)
    with pytest.raises(CheckpointException, match="the commit was refused"):
        dcp.save(state, storage_writer=rt.StorageWriter(prefix, local_tier=tier), no_dist=True)
    with pytest.raises(remoteckpt.SaveFailedError, match="the commit was refused"):
        remoteckpt.wait_durable(prefix, timeout=30)
    monkeypatch.setattr(torch_dcp, "commit_tables", real)
    dcp.save(state, storage_writer=rt.StorageWriter(prefix, local_tier=tier), no_dist=True)
    assert remoteckpt.wait_durable(prefix, timeout=60) == prefix
    with remoteckpt.load_checkpoint(prefix) as reader:
        np.testing.assert_array_equal(reader.get_tensor("w"), state["w"].numpy())
