"""A job's whole life, with real processes: retries with the same save id, restarts after
SIGKILL, paused workers that wake up (zombies), saves longer than many leases, skewed wall
clocks, the S3 answers real servers give; and gc, retention and readers beside live saves.

Each test names the defect of the earlier protocol it guards against (docs/reliability.md
lists them)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lifecycle_workers import (
    LEASE,
    PART_SIZE,
    Job,
    Rank,
    checkpoint_files,
    committed_versions,
    expected,
    tensors,
    wait_stopped,
)
from lifecycle_workers import listing as keys

import remoteckpt
from remoteckpt import IOOptions

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any] | None]:
    """(directory, storage options) on each backend."""
    if request.param == "local":
        return str(tmp_path), None
    return request.getfixturevalue("s3_prefix"), {"part_size": PART_SIZE}


def assert_restores(prefix: str, seed: int, world: int, options: dict[str, Any] | None, *, big: bool = False) -> None:
    got = remoteckpt.load(prefix, storage_options=options)
    want = expected(seed, world, big=big)
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert got[name].tobytes() == value.tobytes(), name


# --- retries and restarts ------------------------------------------------------------------------

def test_a_retry_after_a_clean_failure_succeeds_at_once(where: tuple[str, Any]) -> None:
    """Was: a retry with the same save id failed with "data-00000-of-00002 exists but .index
    does not" until gc ran an hour later.  Now every rank of the failed attempt raises the
    same error, and the retry commits at once, leaving nothing of the first attempt."""
    directory, options = where
    prefix = f"{directory}/ck"
    failed = Job(prefix, [Rank(0), Rank(1, bad=True)], save_id="job-7", storage_options=options).run()
    assert [r.get("error") for r in failed] == ["UnsupportedDTypeError"] * 2, failed
    assert failed[0]["message"] == failed[1]["message"] and "worker 1" in failed[0]["message"], failed
    started = time.monotonic()
    retry = Job(prefix, [Rank(0), Rank(1)], save_id="job-7", storage_options=options).run()
    assert all(r.get("ok") for r in retry), retry
    assert time.monotonic() - started < 30
    assert_restores(prefix, 0, 2, options)
    assert keys(directory, options) == checkpoint_files("ck", 2)


def test_every_rank_raises_the_coordinators_verdict(tmp_path: Path) -> None:
    """Was: the coordinator raised InvalidTensorsError, its workers a SaveFailedError.  A
    failure found by the coordinator (two workers' boxes overlap by one row) is now raised
    by every rank, the same class and message."""
    records = Job(str(tmp_path / "ck"), [Rank(0, overlap=True), Rank(1)], save_id="job-o").run()
    assert [r.get("error") for r in records] == ["InvalidTensorsError"] * 2, records
    assert records[0]["message"] == records[1]["message"] and "overlap" in records[0]["message"]


def test_a_shrinking_world_leaves_nothing_in_the_way(tmp_path: Path) -> None:
    """Was: a failed save of 3 workers left notes that a later save of 2 workers (same id)
    tripped over.  Now every attempt has its own staging."""
    prefix = str(tmp_path / "ck")
    failed = Job(prefix, [Rank(0), Rank(1), Rank(2, bad=True)], save_id="job-s").run()
    assert all(r.get("error") == "UnsupportedDTypeError" for r in failed), failed
    smaller = Job(prefix, [Rank(0), Rank(1)], save_id="job-s").run()
    assert all(r.get("ok") for r in smaller), smaller
    assert_restores(prefix, 0, 2, None)
    assert sorted(os.listdir(tmp_path)) == ["ck.data-00000-of-00002", "ck.data-00001-of-00002", "ck.index"]


def test_a_restart_after_sigkill_with_the_same_save_id_succeeds_within_a_lease(where: tuple[str, Any]) -> None:
    """Was: a restarted job (the launcher's run id is kept across restarts) that re-saved the
    step it died in failed until gc removed the dead save's files.  Now the new attempt takes
    the dead claim over once it has stayed unrenewed for one lease (watched, from another
    "host", so no shortcut applies), clears the dead attempt's files and commits; no gc."""
    directory, options = where
    prefix = f"{directory}/ck"
    crash = {"REMOTECKPT_CRASH_AT": "table-written"}
    killed = Job(prefix, [Rank(0, seed=1, host="node-a", env=crash, big=True),
                          Rank(1, seed=1, host="node-b", env=crash, big=True)],
                 save_id="job-8", storage_options=options).run()
    assert all(r.get("error") == "no record" for r in killed), killed  # both SIGKILLed
    assert any(k.endswith(".claim") for k in keys(directory, options))
    started = time.monotonic()
    restarted = Job(prefix, [Rank(0, seed=2, host="node-c", clock_skew=6 * 3600, big=True),
                             Rank(1, seed=2, host="node-d", clock_skew=-6 * 3600, big=True)],
                    save_id="job-8", storage_options=options).run()
    took = time.monotonic() - started
    assert all(r.get("ok") for r in restarted), restarted
    # Not before the lease ran out (judged by watching, not by clocks 6 hours off), nor long after.
    assert LEASE <= restarted[0]["seconds"] and took < 40, (restarted, took)
    assert_restores(prefix, 2, 2, options, big=True)
    assert keys(directory, options) == checkpoint_files("ck", 2)


def test_a_paused_worker_woken_after_the_restart_changes_no_committed_byte(where: tuple[str, Any]) -> None:
    """A worker paused mid-upload (SIGSTOP: a partition, a stopped VM) outlives its job; the
    restarted job commits; then the zombie wakes and finishes what it was doing.  It gets a
    clear error, and the committed checkpoint stays byte for byte the restarted job's."""
    directory, options = where
    prefix = f"{directory}/ck"
    first = Job(prefix, [Rank(0, seed=1, host="node-a", big=True),
                         Rank(1, seed=1, host="node-b", big=True, env={"REMOTECKPT_STOP_AT": "mid-upload"})],
                save_id="job-z.r0", storage_options=options).start()
    zombie, coordinator = first.procs[1], first.procs[0]
    assert wait_stopped(zombie.pid, 60), "the worker never paused"
    os.kill(coordinator.pid, signal.SIGKILL)  # the job dies; its paused worker lives on
    # Restarted by its launcher: the restart count makes it a new save id (job-z.r1), as
    # TORCHELASTIC_RESTART_COUNT or SLURM_RESTART_COUNT do by default.
    restarted = Job(prefix, [Rank(0, seed=2, host="node-c", big=True), Rank(1, seed=2, host="node-d", big=True)],
                    save_id="job-z.r1", storage_options=options).run()
    assert all(r.get("ok") for r in restarted), restarted
    assert_restores(prefix, 2, 2, options, big=True)
    before = committed_versions(directory, options, "ck")
    assert sorted(before) == checkpoint_files("ck", 2)
    os.kill(zombie.pid, signal.SIGCONT)
    records = first.wait(bound=60)
    woke = records[1]
    assert woke.get("error") in ("SaveFailedError", "CheckpointExistsError"), records
    assert any(clear in woke["message"] for clear in ("taken over", "newer attempt", "a committed checkpoint is there")), woke
    assert_restores(prefix, 2, 2, options, big=True)
    assert committed_versions(directory, options, "ck") == before


def test_a_save_longer_than_five_leases_is_never_taken_over(where: tuple[str, Any]) -> None:
    """Was: a claim older than commit_timeout (by the store's clock) counted as dead.  Now a
    save that renews its lease keeps the prefix however long it runs: another job trying
    meanwhile is busy, and the long save commits."""
    directory, options = where
    prefix = f"{directory}/ck"
    lease = 0.4
    # Rank 1 comes 6 s after its process imported remoteckpt: rank 0's save lasts 5 leases even
    # when rank 0's own process starts up to 4 s later than rank 1's (a loaded machine).
    slow = Job(prefix, [Rank(0, seed=3), Rank(1, seed=3, delay=10 * lease + 2.0)], save_id="long",
               storage_options=options, options={"lease_timeout": lease}).start()
    time.sleep(1.0)
    other = Job(prefix, [Rank(0, seed=4), Rank(1, seed=4)], save_id="other", storage_options=options,
                options={"lease_timeout": lease}).run()
    results = slow.wait()
    assert all(r.get("ok") for r in results), results
    assert results[0]["seconds"] > 5 * lease
    assert [r.get("error") for r in other] == ["CheckpointBusyError"] * 2, other
    assert_restores(prefix, 3, 2, options)


# --- S3 answers ------------------------------------------------------------------------------------

@pytest.fixture
def proxied(s3_server: Any, s3_prefix: str) -> Any:
    """A fault proxy in front of the test server: (proxy factory, directory)."""
    from faultproxy import FaultProxy

    made: list[FaultProxy] = []

    def make(**kwargs: Any) -> tuple[FaultProxy, dict[str, Any]]:
        proxy = FaultProxy(s3_server.endpoint_url, **kwargs).start()
        made.append(proxy)
        return proxy, {"endpoint_url": proxy.endpoint_url, "part_size": PART_SIZE}

    yield make, s3_prefix
    for proxy in made:
        proxy.stop()


def test_conditional_conflicts_are_asked_again(proxied: Any) -> None:
    """409 ConditionalRequestConflict (a conditional write racing another, on AWS) is asked
    again, as AWS documents, for the claim, a data file and the index."""
    from faultproxy import Rule

    make, directory = proxied
    proxy, options = make(rules=[Rule("conflict", "PUT", r"ck\.claim", times=2),
                                 Rule("conflict", "PUT", r"ck\.data-00000", times=1),
                                 Rule("conflict", "PUT", r"ck\.index", times=1)])
    remoteckpt.save(tensors(5, 0, 1), f"{directory}/ck", storage_options=options)
    assert proxy.counters["conflict"] == 4
    assert_restores(f"{directory}/ck", 5, 1, options)


@pytest.mark.parametrize("big", [False, True], ids=["put", "multipart"])
def test_a_lost_acknowledgement_is_settled_without_md5_etags(proxied: Any, big: bool) -> None:
    """Was: a lost acknowledgement was settled by comparing the ETag with the MD5 of the
    bytes, which SSE-KMS and SSE-C objects do not have: the save failed as "already exists".
    Now the writer recognises its object by the token it wrote in the object's metadata."""
    from faultproxy import Rule

    make, directory = proxied
    target = r"ck\.data-00000-of-00001(\?uploadId=|$)" if big else r"ck\.data-00000-of-00001$"
    proxy, options = make(opaque_etags=True, rules=[Rule("drop-response", "POST" if big else "PUT", target)])
    remoteckpt.save(tensors(6, 0, 1, big=big), f"{directory}/ck", storage_options=options)
    assert proxy.counters["drop-response"] == 1 and proxy.counters["etags-replaced"] > 0
    assert_restores(f"{directory}/ck", 6, 1, options, big=big)


def test_a_failed_part_fails_the_save_at_once_with_its_own_error(proxied: Any) -> None:
    """Was: a part that failed was noticed only at the commit, as "1 uploaded parts are
    missing".  Now the save fails with the part's own error, and no upload is left."""
    from faultproxy import Rule

    make, directory = proxied
    proxy, options = make(rules=[Rule("deny", "PUT", r"partNumber=1(&|$)")])
    with pytest.raises(remoteckpt.StorageError, match=r"AccessDenied.*|permission denied") as info:
        remoteckpt.save(tensors(7, 0, 1, big=True), f"{directory}/ck", storage_options=options)
    assert "missing" not in str(info.value) and "part" in str(info.value)
    assert not any(k.startswith("upload of") for k in keys(directory, options))


def test_a_server_that_ignores_conditional_headers_is_found_out(proxied: Any) -> None:
    """A server that accepts If-None-Match / If-Match and ignores them would let two saves
    mix their files: a probe finds it at first use, and saves of several workers are refused
    there (one worker may save; ``conditional_writes="trust"`` overrides)."""
    make, directory = proxied
    proxy, options = make(ignore_conditions=True)
    with pytest.raises(remoteckpt.StorageError, match="enforces conditional writes"):
        remoteckpt.save(tensors(8, 0, 2), f"{directory}/ck", rank=0, world_size=2, save_id="j",
                        storage_options=options)
    assert proxy.counters["conditions-dropped"] > 0
    remoteckpt.save(tensors(8, 0, 1), f"{directory}/one", storage_options=options)
    assert_restores(f"{directory}/one", 8, 1, options)


# --- gc, retention and readers beside saves ---------------------------------------------------------

def test_gc_leaves_live_saves_alone_and_collects_any_world_size(where: tuple[str, Any]) -> None:
    from remoteckpt.engine import loop
    from remoteckpt.protocol import claim as claims
    from remoteckpt.protocol.layout import SaveLayout
    from remoteckpt.protocol.records import ClaimRecord

    directory, options = where

    async def setup(store: Any) -> Any:
        lease = await claims.acquire(store, SaveLayout("live", 0, 2, "j"), IOOptions(lease_timeout=0.5))
        for key in ("live.data-00000-of-00002", "dead.data-00003-of-00004", "dead.tmp-abc/worker-00001",
                    "dead.tmp/notice-00000"):
            await store.put(key, b"x")
        await store.put("dead.claim", ClaimRecord(save_id="d", world_size=4, attempt="a" * 20, host="gone",
                                                  pid=1, lease=0.3).encode())
        return lease

    async def hold() -> Any:
        from remoteckpt.storage import open_store

        store = open_store(directory, options)
        return store, await setup(store)

    store, lease = loop.run(hold())
    try:
        report = remoteckpt.gc(directory, older_than=0, storage_options=options)
        assert sorted(report.removed) == ["dead.claim", "dead.data-00003-of-00004", "dead.tmp-abc/worker-00001",
                                          "dead.tmp/notice-00000"]
        assert {k for k, why in report.skipped} == {"live.claim", "live.data-00000-of-00002"}
        assert all(why == "a live save holds its prefix" for _, why in report.skipped)
    finally:
        loop.run(claims.release(lease))
        loop.run(store.close())
    assert keys(directory, options) == ["live.data-00000-of-00002"]
    assert remoteckpt.gc(directory, older_than=0, storage_options=options).removed == ["live.data-00000-of-00002"]


def test_retention_spares_a_checkpoint_being_read(tmp_path: Path) -> None:
    directory = str(tmp_path)
    saver = remoteckpt.Saver(max_to_keep=1)
    first = saver.save({"w": np.zeros(4)}, f"{directory}/model.ckpt", global_step=0)
    with remoteckpt.CheckpointReader(first) as reader:
        saver.save({"w": np.ones(4)}, f"{directory}/model.ckpt", global_step=1)
        assert (tmp_path / "model.ckpt-0.index").exists()  # being read: kept for now
        np.testing.assert_array_equal(reader.get_tensor("w"), np.zeros(4))
    saver.save({"w": np.full(4, 2.0)}, f"{directory}/model.ckpt", global_step=2)
    assert not (tmp_path / "model.ckpt-0.index").exists()
    assert remoteckpt.latest_checkpoint(directory) == f"{directory}/model.ckpt-2"


def test_a_reader_racing_an_overwrite_never_mixes_two_checkpoints(where: tuple[str, Any]) -> None:
    """Reads are pinned to the data versions listed when the reader opened: after the
    checkpoint is replaced underneath, a read gives the old bytes or a clear error, never the
    new bytes under the old index (nor a checksum error that blames the storage)."""
    directory, options = where
    prefix = f"{directory}/ck"
    remoteckpt.save({"w": np.zeros(1000, np.float32)}, prefix, storage_options=options)
    reader = remoteckpt.CheckpointReader(prefix, storage_options=options)
    remoteckpt.save({"w": np.ones(1000, np.float32)}, prefix, overwrite=True, storage_options=options)
    try:
        np.testing.assert_array_equal(reader.get_tensor("w"), np.zeros(1000, np.float32))
    except remoteckpt.CheckpointChangedError as exc:
        assert "replaced or deleted while it was being read" in str(exc)
    finally:
        reader.close()
    np.testing.assert_array_equal(remoteckpt.load(prefix, storage_options=options)["w"], np.ones(1000))


def test_a_manager_restarted_on_a_saved_step_does_not_fail(tmp_path: Path) -> None:
    """Was: a CheckpointManager started on a directory, restoring step 100 and reaching the
    save at step 100 again, failed with CheckpointExistsError.  That step is already saved."""
    directory = str(tmp_path)
    first = remoteckpt.CheckpointManager(directory, checkpoint_interval=100)
    first.save({"w": np.zeros(3)}, 100)
    restarted = remoteckpt.CheckpointManager(directory, checkpoint_interval=100)
    state = restarted.restore()
    assert restarted.save(state, 100) is None
    assert restarted.save({"w": np.ones(3)}, 200) == f"{directory}/ckpt-200"
    assert restarted.checkpoints == [f"{directory}/ckpt-100", f"{directory}/ckpt-200"]
