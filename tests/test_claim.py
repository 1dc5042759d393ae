"""The claim on a prefix (`remoteckpt.protocol.claim`) and its lease (`protocol.lease`), step
by step, on local disk and S3.  Races between real processes are in test_crash.py, whole
lives of jobs (retries, restarts, zombies, long saves, skewed clocks) in test_lifecycle.py."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from remoteckpt import CheckpointBusyError, CheckpointExistsError, IOOptions, SaveFailedError, StorageError
from remoteckpt.protocol import claim as claims
from remoteckpt.protocol.layout import SaveLayout, default_save_id
from remoteckpt.protocol.lease import Verdict, watch
from remoteckpt.protocol.records import ClaimRecord, Notice
from remoteckpt.storage import Store, on_store

T = TypeVar("T")
LEASE = 0.4
FAST = IOOptions(commit_timeout=2.0, poll_interval=0.01, lease_timeout=LEASE)


@pytest.fixture(params=["local", "s3"])
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[Callable[[Store], Awaitable[T]]], T]:
    directory = str(tmp_path) if request.param == "local" else request.getfixturevalue("s3_prefix")
    return lambda fn: on_store(directory, fn)


def layout(rank: int, save_id: str = "a", world: int = 2) -> SaveLayout:
    return SaveLayout("ck", rank, world, save_id)


def dead_pid() -> int:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(gone.stdout)


def record(**fields: Any) -> ClaimRecord:
    base: dict[str, Any] = {"save_id": "other", "world_size": 2, "attempt": "x" * 20, "host": "elsewhere", "pid": 1,
                            "lease": LEASE}
    return ClaimRecord(**{**base, **fields})


def test_a_live_claim_is_busy_and_renewed(run: Any) -> None:
    """A held claim is renewed in the background (a new version every quarter lease); another
    save watching it finds it alive and gives up before writing; released, it is gone."""
    async def go(store: Store) -> None:
        lease = await claims.acquire(store, layout(0, "a"), FAST)
        first = (await store.head("ck.claim")).etag
        await asyncio.sleep(LEASE * 0.6)
        assert (await store.head("ck.claim")).etag != first  # renewed
        started = time.monotonic()
        with pytest.raises(CheckpointBusyError, match=r"save id 'a' \(2 data files\)"):
            await claims.acquire(store, layout(0, "b"), FAST)
        assert time.monotonic() - started < LEASE * 2
        await claims.release(lease)
        assert await store.head("ck.claim") is None

    run(go)


def test_a_claim_is_never_taken_over_while_renewed(run: Any) -> None:
    """A save holding its claim for more than five lease timeouts keeps it: every save that
    tries meanwhile is busy."""
    async def go(store: Store) -> None:
        lease = await claims.acquire(store, layout(0, "long"), FAST)
        deadline = time.monotonic() + 5.5 * LEASE
        tries = 0
        while time.monotonic() < deadline:
            with pytest.raises(CheckpointBusyError):
                await claims.acquire(store, layout(0, "other"), FAST)
            tries += 1
        lease.check()  # still ours
        await lease.renew()
        await claims.release(lease)
        assert tries >= 3

    run(go)


def test_a_dead_claim_is_taken_over_after_its_lease(run: Any) -> None:
    """Nobody renews a claim of a vanished holder elsewhere: it is taken over once it has
    stayed unchanged for the lease its holder stated, whatever the clocks say."""
    async def go(store: Store) -> None:
        await store.put("ck.claim", record(lease=0.3).encode())
        started = time.monotonic()
        lease = await claims.acquire(store, layout(0, "b"), FAST)
        waited = time.monotonic() - started
        assert 0.3 <= waited < 2.0
        found = await claims.read_claim(store, layout(0))
        assert found is not None and found[0] is not None and found[0].attempt == lease.attempt
        await claims.release(lease)

    run(go)


def test_the_holder_that_was_taken_over_stops(run: Any) -> None:
    """A holder paused past its lease (a zombie) finds its renewal refused: it must not commit."""
    async def go(store: Store) -> None:
        zombie = await claims.acquire(store, layout(0, "z"), FAST)
        await zombie.stop()  # paused: no renewals (and, being in this process, known to have stopped)
        claims.forget(zombie)
        winner = await claims.acquire(store, layout(0, "w"), FAST)
        with pytest.raises(SaveFailedError, match="taken over"):
            await zombie.renew()
        with pytest.raises(SaveFailedError, match="taken over"):
            await zombie.fresh()
        await zombie.release()  # deletes nothing: not ours any more
        assert (await claims.read_claim(store, layout(0)))[0].attempt == winner.attempt
        await claims.release(winner)

    run(go)


def test_a_holder_taken_over_unknowingly_releases_only_its_own_claim(run: Any) -> None:
    """A holder that was taken over while paused and releases at once on waking (no renewal
    has told it yet) deletes the claim only by the version it wrote: the newer holder's
    claim stays."""
    async def go(store: Store) -> None:
        zombie = await claims.acquire(store, layout(0, "z"), FAST)
        await zombie.stop()
        claims.forget(zombie)
        winner = await claims.acquire(store, layout(0, "w"), FAST)
        await zombie.release()
        found = await claims.read_claim(store, layout(0))
        assert found is not None and found[0] is not None and found[0].attempt == winner.attempt
        await claims.release(winner)

    run(go)


def test_claims_known_dead_are_taken_over_at_once(run: Any) -> None:
    """A claim of a save of this process that has ended, or of a process of this host that is
    gone, needs no watching; a live process of this host is watched like any holder (it may
    be paused), and a save running in this very process is busy at once."""
    here = socket.gethostname()

    async def go(store: Store) -> None:
        for holder in (record(host=here, pid=dead_pid(), lease=60), record(host=here, pid=os.getpid(), lease=60)):
            await store.put("ck.claim", holder.encode())
            started = time.monotonic()
            lease = await claims.acquire(store, layout(0, "b"), FAST)
            assert time.monotonic() - started < 1.0
            await claims.release(lease)
        running = await claims.acquire(store, layout(0, "a"), FAST)
        with pytest.raises(CheckpointBusyError):
            await claims.acquire(store, layout(0, "b"), IOOptions(lease_timeout=60))
        claims.forget(running)  # its save ended without releasing it
        await running.stop()
        taken = await claims.acquire(store, layout(0, "b"), FAST)
        await claims.release(taken)

    run(go)


def test_junk_claims_are_watched_then_taken_over(run: Any) -> None:
    async def go(store: Store) -> None:
        await store.put("ck.claim", os.urandom(32))
        lease = await claims.acquire(store, layout(0), FAST)
        await claims.release(lease)

    run(go)


def test_two_saves_taking_over_one_dead_claim_one_wins(run: Any) -> None:
    async def go(store: Store) -> None:
        await store.put("ck.claim", record(lease=0.2).encode())
        results = await asyncio.gather(*(claims.acquire(store, layout(0, f"s{i}"), FAST) for i in range(4)),
                                       return_exceptions=True)
        won = [r for r in results if not isinstance(r, BaseException)]
        assert len(won) == 1, results
        assert all(isinstance(r, CheckpointBusyError) for r in results if isinstance(r, BaseException)), results
        await claims.release(won[0])

    run(go)


def test_watch_judges_by_this_processs_clock(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wall clocks (this host's, another's, the store's LastModified) play no part: with the
    wall clock hours off, a renewed claim is alive and a silent one dead after its lease."""
    monkeypatch.setattr(time, "time", lambda: 1e9 + 7 * 3600)  # skewed by hours, and frozen

    async def go(store: Store) -> None:
        lease = await claims.acquire(store, layout(0, "a"), FAST)
        assert await watch(store, "ck.claim", lease.etag, LEASE) is Verdict.ALIVE
        await lease.stop()
        head = await store.head("ck.claim")
        started = time.monotonic()
        assert await watch(store, "ck.claim", head.etag, LEASE) is Verdict.DEAD
        assert time.monotonic() - started >= LEASE
        await store.delete("ck.claim")
        assert await watch(store, "ck.claim", head.etag, LEASE) is Verdict.GONE

    run(go)


def test_workers_join_through_notices(run: Any) -> None:
    """A worker waits for its group's notice to name an attempt of its job; another job's
    live claim is busy, a committed index (unless overwriting) exists, nobody is a timeout."""
    async def go(store: Store) -> None:
        with pytest.raises(SaveFailedError, match=r"timed out .* \(worker 0\)"):
            await claims.join(store, layout(1), IOOptions(commit_timeout=0.3, poll_interval=0.01, lease_timeout=LEASE),
                              overwrite=False)
        await store.put(layout(1).my_notice, Notice(save_id="a", world_size=2, attempt="t1", state="writing").encode())
        assert await claims.join(store, layout(1), FAST, overwrite=False) == ("t1", None)
        other = await claims.acquire(store, layout(0, "b"), FAST)
        await store.put(layout(1).my_notice, Notice(save_id="b", world_size=2, attempt=other.attempt,
                                                    state="writing").encode())
        with pytest.raises(CheckpointBusyError, match="save id 'b'"):
            await claims.join(store, layout(1, "a"), FAST, overwrite=False)
        await claims.release(other)
        await store.delete(layout(1).my_notice)
        await store.put(layout(0).index, b"committed by someone")
        with pytest.raises(CheckpointExistsError, match="already exists"):
            await claims.join(store, layout(1), FAST, overwrite=False)

    run(go)


def test_notices_are_shared_by_groups_of_workers() -> None:
    big = [SaveLayout("ck", r, 100, "a") for r in range(100)]
    assert len({la.my_notice for la in big}) == big[0].groups == 7
    assert big[15].my_notice == big[0].my_notice != big[16].my_notice


def test_the_default_save_id_comes_from_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers of one job share the launcher's run id and restart count, other jobs (and a
    restart) have theirs: racing jobs are told apart without a save id of their own; an
    explicit one wins."""
    for name in ("REMOTECKPT_SAVE_ID", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "SLURM_JOB_ID",
                 "SLURM_STEP_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    assert default_save_id() == ""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert default_save_id() == "4242"
    monkeypatch.setenv("SLURM_STEP_ID", "3")
    assert default_save_id() == "4242.3"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert default_save_id() == "4242.3.r2"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "f00d")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert default_save_id() == "f00d.r1"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "f00d/with spaces")  # not a safe id: hashed
    derived = default_save_id()
    assert derived.startswith("run-") and SaveLayout("ck", 0, 2, derived).save_id == derived
    monkeypatch.setenv("REMOTECKPT_SAVE_ID", "mine")
    assert default_save_id() == "mine"


def test_a_multiworker_save_without_an_id_warns_at_the_callers_line(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`UnnamedSaveWarning` is raised in the caller's thread, once per call, and points at the
    line that called remoteckpt (not at remoteckpt's code or its I/O thread), whichever entry
    point: save, save_async, Saver.save, Saver.save_async, CheckpointManager.save."""
    import warnings

    import remoteckpt
    from remoteckpt.protocol.save import UnnamedSaveWarning

    for var in ("REMOTECKPT_SAVE_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    options = IOOptions(commit_timeout=0.3, poll_interval=0.01)  # rank 1 never comes: the wait times out
    tensors = {"a": np.ones(2)}
    saver = remoteckpt.Saver(rank=0, world_size=2, options=options)
    manager = remoteckpt.CheckpointManager(tmp_path / "managed", rank=0, world_size=2, options=options)
    calls = {
        "save": lambda: remoteckpt.save(tensors, tmp_path / "a", rank=0, world_size=2, options=options),
        "save_async": lambda: remoteckpt.save_async(tensors, tmp_path / "b", rank=0, world_size=2,
                                                    options=options).result(),
        "Saver.save": lambda: saver.save(tensors, tmp_path / "c", global_step=1),
        "Saver.save_async": lambda: saver.save_async(tensors, tmp_path / "d", global_step=1).result(),
        "CheckpointManager.save": lambda: manager.save(tensors, 1),
    }
    for what, call in calls.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(SaveFailedError):
                call()
        unnamed = [w for w in caught if issubclass(w.category, UnnamedSaveWarning)]
        assert len(unnamed) == 1, (what, [str(w.message) for w in caught])
        assert "without a save id" in str(unnamed[0].message)
        assert unnamed[0].filename == __file__, (what, unnamed[0].filename)

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnnamedSaveWarning)
        with pytest.raises(SaveFailedError):
            remoteckpt.save(tensors, tmp_path / "e", rank=0, world_size=2, save_id="job-7", options=options)
        monkeypatch.setenv("REMOTECKPT_SAVE_ID", "job-8")
        with pytest.raises(SaveFailedError):
            remoteckpt.save(tensors, tmp_path / "f", rank=0, world_size=2, options=options)


def test_multiworker_saves_are_refused_where_conditional_writes_are_not_enforced() -> None:
    """A generic fsspec filesystem checks create-only by looking first: two saves could both
    pass.  A save of several workers there would only pretend to be safe, so it is refused;
    one worker may save."""
    import remoteckpt

    url = f"memory://claims-{os.getpid()}-{time.monotonic_ns()}"
    with pytest.raises(StorageError, match="needs a store that enforces conditional writes"):
        remoteckpt.save({"a": np.ones(2)}, f"{url}/ck", rank=0, world_size=2, save_id="j")
    remoteckpt.save({"a": np.ones(2)}, f"{url}/one")
    np.testing.assert_array_equal(remoteckpt.load(f"{url}/one")["a"], np.ones(2))
