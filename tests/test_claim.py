"""The per-save claim on a prefix (`remoteckpt.protocol.claim`), step by step, on local disk
and S3.  The races it settles between real processes are in test_crash.py."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from remoteckpt import CheckpointBusyError, CheckpointExistsError, IOOptions, SaveFailedError
from remoteckpt.protocol import claim as claims
from remoteckpt.protocol.layout import SaveLayout
from remoteckpt.storage import Store, on_store

T = TypeVar("T")
FAST = IOOptions(commit_timeout=2.0, poll_interval=0.01)


@pytest.fixture(params=["local", "s3"])
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[Callable[[Store], Awaitable[T]]], T]:
    directory = str(tmp_path) if request.param == "local" else request.getfixturevalue("s3_prefix")
    return lambda fn: on_store(directory, fn)


def layout(rank: int, save_id: str = "a", world: int = 2) -> SaveLayout:
    return SaveLayout("ck", rank, world, save_id)


def test_first_save_claims_the_others_are_busy(run: Any) -> None:
    async def go(store: Store) -> None:
        mine = await claims.acquire(store, layout(0, "a"), FAST)
        held = await claims.read_claim(store, layout(0))
        assert held is not None and held.record == mine
        with pytest.raises(CheckpointBusyError, match=r"save id 'a' \(2 data files\)"):
            await claims.acquire(store, layout(0, "b"), FAST)
        with pytest.raises(CheckpointBusyError, match="save id 'a'"):
            await claims.await_claim(store, layout(1, "b"), FAST)
        with pytest.raises(CheckpointBusyError):  # same id, other world size: another job
            await claims.acquire(store, layout(0, "a", world=4), FAST)
        await claims.await_claim(store, layout(1, "a"), FAST)  # its partner goes on
        await claims.release(store, layout(0), mine)
        assert await claims.read_claim(store, layout(0)) is None

    run(go)


def test_a_retry_with_the_same_save_id_takes_its_claim_over(run: Any) -> None:
    async def go(store: Store) -> None:
        first = await claims.acquire(store, layout(0, "a"), FAST)
        second = await claims.acquire(store, layout(0, "a"), FAST)
        assert second != first
        await claims.release(store, layout(0), first)  # no longer ours: left alone
        held = await claims.read_claim(store, layout(0))
        assert held is not None and held.record == second

    run(go)


def test_a_dead_saves_claim_is_cleared(run: Any) -> None:
    async def go(store: Store) -> None:
        await claims.acquire(store, layout(0, "dead"), FAST)
        patient = IOOptions(commit_timeout=0.0, poll_interval=0.01)  # every claim counts as dead
        mine = await claims.acquire(store, layout(0, "b"), patient)
        held = await claims.read_claim(store, layout(0))
        assert held is not None and held.record == mine and mine.save_id == "b"

    run(go)


def test_overwrite_does_not_trample_a_live_save(run: Any) -> None:
    """overwrite=True may replace a committed checkpoint, not another save in progress."""
    async def go(store: Store) -> None:
        await claims.acquire(store, layout(0, "a"), FAST)
        with pytest.raises(CheckpointBusyError):
            await claims.await_claim(store, layout(1, "b"), FAST, overwrite=True)
        await store.put(layout(0).index, b"committed")
        await claims.await_claim(store, layout(1, "a"), FAST, overwrite=True)

    run(go)


def test_waiting_ends_on_failure_commit_or_timeout(run: Any) -> None:
    async def go(store: Store) -> None:
        with pytest.raises(SaveFailedError, match=r"timed out .* \(worker 0\)"):
            await claims.await_claim(store, layout(1), IOOptions(commit_timeout=0.2, poll_interval=0.01),
                                     overwrite=False)
        await store.put(layout(0).failure(0), b"ValueError: bad tensor")
        with pytest.raises(SaveFailedError, match="bad tensor"):
            await claims.await_claim(store, layout(1), FAST)
        await store.delete(layout(0).failure(0))
        await store.put(layout(0).index, b"committed by someone")
        with pytest.raises(CheckpointExistsError, match="already exists"):
            await claims.await_claim(store, layout(1), FAST)

    run(go)


def test_junk_claim_is_busy_until_it_is_old(run: Any) -> None:
    async def go(store: Store) -> None:
        await store.put(layout(0).claim, os.urandom(32))
        with pytest.raises(CheckpointBusyError, match="another save"):
            await claims.acquire(store, layout(0), FAST)
        await claims.acquire(store, layout(0), IOOptions(commit_timeout=0.0))

    run(go)


def test_a_single_worker_takes_over_only_its_own_or_a_dead_processs_claim(run: Any) -> None:
    """Two single-worker jobs share the default save id, so for one worker the id alone does
    not make a claim its own: the holder's process must be this one or gone."""
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    here = socket.gethostname()
    single = layout(0, "", world=1)

    async def go(store: Store) -> None:
        for holder, busy in [(claims.ClaimRecord(save_id="", world_size=1, token="x", host=here, pid=1), True),
                             (claims.ClaimRecord(save_id="", world_size=1, token="x", host="elsewhere", pid=dead_pid), True),
                             (claims.ClaimRecord(save_id="", world_size=1, token="x", host=here, pid=dead_pid), False),
                             (claims.ClaimRecord(save_id="", world_size=1, token="x", host=here, pid=os.getpid()), False)]:
            await store.put(single.claim, holder.encode())
            if busy:
                with pytest.raises(CheckpointBusyError):
                    await claims.acquire(store, single, FAST)
            else:
                mine = await claims.acquire(store, single, FAST)
                assert mine.pid == os.getpid() and mine.token != "x"
            await store.delete(single.claim)

    run(go)


def test_a_claim_whose_save_ended_in_this_process_is_taken_over(run: Any) -> None:
    """A save that could not release its claim (e.g. a DCP save that failed on another rank)
    `forget`s it; a later save of this process takes it over.  A multi-worker claim whose
    process is gone is still busy: its other workers may be writing."""
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphaned = claims.ClaimRecord(save_id="c", world_size=2, token="y", host=socket.gethostname(),
                                  pid=int(gone.stdout))

    async def go(store: Store) -> None:
        old = await claims.acquire(store, layout(0, "a"), FAST)
        with pytest.raises(CheckpointBusyError):
            await claims.acquire(store, layout(0, "b"), FAST)
        claims.forget(old)
        new = await claims.acquire(store, layout(0, "b"), FAST)
        assert new.save_id == "b"
        await claims.release(store, layout(0), new)
        await store.put(layout(0).claim, orphaned.encode())
        with pytest.raises(CheckpointBusyError):
            await claims.acquire(store, layout(0, "b"), FAST)

    run(go)


def test_single_worker_saves_claim_where_streamed_creates_can_race(run: Any) -> None:
    """On S3 a live claim stops a single-worker save before it writes a byte; on local disk
    the create-only link of the data file decides and no claim is taken."""
    import numpy as np

    import remoteckpt

    holder = claims.ClaimRecord(save_id="", world_size=1, token="x", host="elsewhere", pid=1)

    async def go(store: Store) -> tuple[bool, str]:
        await store.put("ck.claim", holder.encode())
        return store.capabilities.atomic_streamed_create, store.url

    atomic, url = run(go)
    prefix = f"{url.rstrip('/')}/ck"
    if atomic:
        remoteckpt.save({"a": np.ones(3)}, prefix)
        np.testing.assert_array_equal(remoteckpt.load(prefix)["a"], np.ones(3))
    else:
        with pytest.raises(CheckpointBusyError, match="elsewhere"):
            remoteckpt.save({"a": np.ones(3)}, prefix)
        assert run(lambda store: store.list("ck.")) == ["ck.claim"]
        remoteckpt.gc(url, older_than=0)
        remoteckpt.save({"a": np.ones(3)}, prefix)
        assert run(lambda store: store.list("ck.")) == ["ck.data-00000-of-00001", "ck.index"]


def test_the_default_save_id_comes_from_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers of one job share the launcher's run id, other jobs have theirs: racing jobs
    are told apart without a save id of their own; an explicit one wins."""
    for name in ("REMOTECKPT_SAVE_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_STEP_ID"):
        monkeypatch.delenv(name, raising=False)
    assert SaveLayout.default_save_id() == ""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert SaveLayout.default_save_id() == "4242"
    monkeypatch.setenv("SLURM_STEP_ID", "3")
    assert SaveLayout.default_save_id() == "4242.3"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "f00d/with spaces")  # not a safe id: hashed
    derived = SaveLayout.default_save_id()
    assert derived.startswith("run-") and SaveLayout("ck", 0, 2, derived).staging == f"ck.tmp-{derived}/"
    monkeypatch.setenv("REMOTECKPT_SAVE_ID", "mine")
    assert SaveLayout.default_save_id() == "mine"


def test_a_multiworker_save_without_an_id_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from remoteckpt.engine import loop
    from remoteckpt.protocol.save import UnnamedSaveWarning, save_worker
    from remoteckpt.storage import open_store

    async def go(save_id: str) -> None:
        store = open_store(str(tmp_path))
        try:
            with pytest.raises(SaveFailedError):  # rank 1 never comes: the wait times out
                await save_worker(store, SaveLayout(f"ck-{save_id or 'none'}", 0, 2, save_id), {"a": np.ones(2)},
                                  overwrite=False, options=IOOptions(commit_timeout=0.3, poll_interval=0.01))
        finally:
            await store.close()

    with pytest.warns(UnnamedSaveWarning, match="without a save id"):
        loop.run(go(""))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnnamedSaveWarning)
        loop.run(go("job-7"))
