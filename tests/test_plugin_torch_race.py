"""Concurrent committers with PyTorch DCP: independent multi-rank jobs racing for
one checkpoint prefix through `remoteckpt.torch.StorageWriter`.

The writer's coordinator claims the prefix in `prepare_global_plan` and releases the claim
after the commit (`remoteckpt/protocol/claim.py`); tests/test_claim.py checks the claim within
one process, tests/test_crash.py races `remoteckpt.save` jobs.  Here real jobs race: 2 or 3
jobs of 2 ranks each, every rank a spawned process, each job its own gloo process group and
its own save id, run `dcp.save` of distinct state dicts to the same prefix at about the same
moment (or "crossed": one rank of each job first, their partners half a second later), on
local disk and on SeaweedFS S3.  Exactly one job commits, every rank of it returns; every
rank of the others fails with a remoteckpt error naming the prefix (busy: naming the winner's
save id), wrapped in DCP's CheckpointException; `dcp.load` reads back exactly the winner's
tensors, and nothing but the winner's files is left (no claim, no staging, no upload).

Found by it: the coordinator checked for a committed index before claiming, so a save that
committed and released its claim in between went unseen; the late coordinator took a claim
nobody released (its ranks then failed in write_data, where DCP never calls `finish`).  The
S3 crossed race hit this in 2 of 3 runs; being timing-dependent, it is also staged in one
process below, with its converse (another save's claim over a committed checkpoint).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")

from spawning import run_together  # noqa: E402
from torch.distributed.checkpoint.api import CheckpointException  # noqa: E402

import remoteckpt  # noqa: E402
import remoteckpt.torch as rt  # noqa: E402
from remoteckpt.plugins import torch_dcp  # noqa: E402
from remoteckpt.protocol.records import ClaimRecord  # noqa: E402
from remoteckpt.storage import on_store  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.multiprocess, pytest.mark.filterwarnings("ignore::UserWarning")]

WORLD = 2
PART_SIZE = 5 * 2**20  # each rank's 6 MiB data file is a multipart upload on S3
BOUND = 120.0  # seconds for a whole race, every process killed after it

RACES = {
    # job 1's rank 0 and job 2's rank 1 first, their partners half a second later
    "crossed": [(1, 0, 0.0), (2, 1, 0.0), (1, 1, 0.5), (2, 0, 0.5)],
    # three jobs, every rank at the same moment
    "crowd": [(who, rank, 0.0) for who in (1, 2, 3) for rank in range(WORLD)],
}
WINNER_FILES = [f"ck.data-{r:05d}-of-{WORLD + 1:05d}" for r in range(WORLD + 1)] + ["ck.index"]


def _listing(directory: str, options: dict[str, Any] | None) -> tuple[list[str], list[Any]]:
    """Every key under `directory` and every unfinished multipart upload."""
    async def both(store: Any) -> tuple[list[str], list[Any]]:
        return sorted(i.key for i in await store.list_info()), await store.pending_uploads()

    return on_store(directory, both, options)


@pytest.mark.parametrize("race", sorted(RACES))
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_racing_dcp_jobs_one_commits(backend: str, race: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    import torch_workers as w

    directory = str(tmp_path / "ckpt") if backend == "local" else request.getfixturevalue("s3_prefix")
    options = {"part_size": PART_SIZE} if backend == "s3" else None
    prefix = f"{directory}/ck"
    starts = RACES[race]
    began = time.monotonic()
    records = run_together(w.race_rank, [(str(tmp_path / f"pg-job{who}"), rank, WORLD, prefix, who, delay, options)
                                         for who, rank, delay in starts], BOUND)
    took = time.monotonic() - began
    assert all(r is not None and "error" not in r for r in records), (took, records)
    by_rank = {(r["who"], r["rank"]): r for r in records if r is not None}
    save_ids = {who: by_rank[who, 0]["save_id"] for who, _, _ in starts}
    assert len(set(save_ids.values())) == len(save_ids), save_ids

    winners = {r["who"] for r in by_rank.values() if r.get("ok")}
    assert len(winners) == 1, records
    (winner,) = winners
    for (who, _rank), r in by_rank.items():
        if who == winner:
            assert r.get("ok") and "failures" not in r, r
            continue
        # DCP reports the coordinator's failure (wrapped) to every rank of the job.
        failures = r["failures"]
        assert failures and all(f["remoteckpt"] for f in failures), r
        for f in failures:
            assert f["type"] in ("CheckpointBusyError", "CheckpointExistsError"), r
            assert f"{prefix}.index" in f["message"], r
            if f["type"] == "CheckpointBusyError":
                assert repr(save_ids[winner]) in f["message"] and repr(save_ids[who]) in f["message"], r

    # What is committed is the winner's state, read back through DCP.
    full = w.race_full_state(winner)
    state = {"weight": torch.zeros_like(full["weight"]), "who": torch.tensor(0, dtype=torch.int64), "job": ""}
    dcp.load(state, storage_reader=rt.StorageReader(prefix, storage_options=options), no_dist=True)
    assert torch.equal(state["weight"], full["weight"]) and state["who"].item() == winner, winner
    assert state["job"] == f"job{winner}"

    # Only the winner's files: the losers wrote nothing, the winner released its claim.
    deadline = time.monotonic() + 10
    while (found := _listing(directory, options)) != (WINNER_FILES, []) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert found == (WINNER_FILES, []), found


def test_a_commit_racing_the_claim_is_refused_as_committed(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Another save commits (and, done, holds no claim) just before this writer's claim: the
    writer refuses in prepare_global_plan, before any rank writes, and leaves no claim.  A
    live claim of another save over a committed checkpoint is reported as that checkpoint."""
    prefix = f"{tmp_path}/ck"
    other = {"w": np.arange(4, dtype=np.float32)}
    acquire = torch_dcp.claims.acquire

    raced: list[bool] = []

    async def after_a_racing_commit(*args: Any, **kwargs: Any) -> Any:
        if not raced:  # the writer's claim; the racing save's own claim goes through as usual
            raced.append(True)
            await asyncio.to_thread(remoteckpt.save, other, prefix)
        return await acquire(*args, **kwargs)

    monkeypatch.setattr(torch_dcp.claims, "acquire", after_a_racing_commit)
    with pytest.raises(CheckpointException) as caught:
        dcp.save({"w": torch.zeros(4)}, storage_writer=rt.StorageWriter(prefix), no_dist=True)
    (error,) = [e for e, _ in caught.value.failures.values()]
    assert isinstance(error, remoteckpt.CheckpointExistsError) and f"{prefix}.index" in str(error), error
    assert caught.value.args[0] == "plan", caught.value  # refused while planning: no rank wrote
    np.testing.assert_array_equal(remoteckpt.load(prefix)["w"], other["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.data-00000-of-00001", "ck.index"]

    monkeypatch.undo()
    late = ClaimRecord(save_id="late-loser", world_size=3, attempt="x" * 20, host="elsewhere", pid=1, lease=0.3)
    on_store(str(tmp_path), lambda store: store.put("ck.claim", late.encode()))
    with pytest.raises(CheckpointException) as caught:
        dcp.save({"w": torch.zeros(4)}, storage_writer=rt.StorageWriter(prefix), no_dist=True)
    (error,) = [e for e, _ in caught.value.failures.values()]
    assert type(error) is remoteckpt.CheckpointExistsError and "already exists" in str(error), error
