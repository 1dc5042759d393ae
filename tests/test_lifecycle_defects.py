"""Defects of a job's life that the soak's lifecycle phases found (docs/reliability.md), each
reproduced deterministically."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from lifecycle_workers import Job, Rank, expected

import remoteckpt
from remoteckpt import IOOptions


def test_a_worker_that_replaces_a_file_in_its_way_commits_a_readable_checkpoint(tmp_path: Path) -> None:
    """A data file in a worker's way (a dead attempt's worker that woke after the coordinator
    cleared the prefix) is replaced; the checkpoint committed must restore.  Was: the worker's
    table listed every chunk CRC of its 4 MiB tensor twice, and the committed index could not
    be read ("chunk checksums do not match the entry's size")."""
    prefix = str(tmp_path / "ck")
    options = IOOptions(lease_timeout=5, commit_timeout=20, poll_interval=0.02)
    big = np.arange(2**20, dtype=np.float32)  # 4 MiB: four chunk CRCs
    errors: list[BaseException] = []

    def rank(r: int, tensors: dict[str, np.ndarray]) -> None:
        try:
            remoteckpt.save(tensors, prefix, rank=r, world_size=2, save_id="job", options=options)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    coordinator = threading.Thread(target=rank, args=(0, {"w0": np.zeros(4, np.float32)}))
    coordinator.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "ck.tmp" / "notice-00000").exists():  # the prefix is cleared, the workers invited
        assert time.monotonic() < deadline
        time.sleep(0.01)
    (tmp_path / "ck.data-00001-of-00002").write_bytes(b"written by a dead attempt's worker that woke up")
    worker = threading.Thread(target=rank, args=(1, {"w1": big}))
    worker.start()
    coordinator.join(60)
    worker.join(60)
    assert errors == []
    np.testing.assert_array_equal(remoteckpt.load(prefix)["w1"], big)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_restart_after_a_committed_kill_raises_checkpoint_exists_on_every_rank(tmp_path: Path) -> None:
    """The coordinator dies right after its commit (before it published the verdict); the
    launcher kills the job and restarts it with the same save id: the step is saved, and every
    rank must say so (CheckpointExistsError), leaving the checkpoint as it is.  Was: rank 0
    raised CheckpointExistsError; the worker joined the dead attempt (its notice still says
    "writing"), found its data file in the way, and raised SaveFailedError ("its coordinator
    stopped renewing its claim before committing")."""
    prefix = str(tmp_path / "ck")
    first = Job(prefix, [Rank(0, seed=1, env={"REMOTECKPT_CRASH_AT": "committed"}), Rank(1, seed=1)],
                save_id="job-9").start()
    deadline = time.monotonic() + 60
    while first.procs[0].exitcode is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    first.kill()
    first.wait()
    restarted = Job(prefix, [Rank(0, seed=2), Rank(1, seed=2)], save_id="job-9").run()
    got = remoteckpt.load(prefix)
    assert all(got[k].tobytes() == v.tobytes() for k, v in expected(1, 2).items())
    assert [r.get("error") for r in restarted] == ["CheckpointExistsError"] * 2, restarted


def test_a_save_leaves_the_claim_temp_file_of_a_racing_save_alone(tmp_path: Path) -> None:
    """On local disk a create-only PUT of the claim writes ``NAME.claim.tempstate<n>`` and
    links it into place. A save that holds the claim and clears the prefix must not remove
    another save's claim temp file: was, a crowd of racing jobs failed one of them with
    ``CheckpointNotFoundError: ...claim: no such file`` instead of ``CheckpointBusyError``."""
    prefix = str(tmp_path / "ck")
    racing = tmp_path / "ck.claim.tempstate12345"
    racing.write_bytes(b"the claim record of a save whose PUT is in flight")
    dead = tmp_path / "ck.index.tempstate777"
    dead.write_bytes(b"an index write that died")
    remoteckpt.save({"w": np.zeros(4, np.float32)}, prefix, options=IOOptions(lease_timeout=5))
    assert racing.exists()
    assert not dead.exists()
    assert remoteckpt.restore(prefix)["w"].shape == (4,)


def test_a_coordinator_whose_claim_was_taken_over_leaves_the_new_attempts_notices_alone(tmp_path: Path) -> None:
    """A coordinator that wakes to find its claim taken over by a newer attempt of its job must
    not write its failed verdict over the notices the newer attempt wrote: was, the newer
    attempt's late workers never saw "writing" and its save ran into the commit timeout."""
    import os

    from remoteckpt.errors import SaveFailedError
    from remoteckpt.protocol.records import ClaimRecord, Notice

    prefix = str(tmp_path / "ck")
    options = IOOptions(lease_timeout=2, commit_timeout=30, poll_interval=0.02)
    errors: list[BaseException] = []

    def coordinator() -> None:
        try:  # worker 1 never comes: the save waits for it until its claim is found taken over
            remoteckpt.save({"w0": np.zeros(4, np.float32)}, prefix, rank=0, world_size=2, save_id="job",
                            options=options)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    thread = threading.Thread(target=coordinator)
    thread.start()
    notice = tmp_path / "ck.tmp" / "notice-00000"
    deadline = time.monotonic() + 30
    while not notice.exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)

    def replace(path: Path, data: bytes) -> None:  # a new version, as another process's write makes
        temp = path.with_name(path.name + ".new")
        temp.write_bytes(data)
        os.replace(temp, path)

    newer = Notice(save_id="job", world_size=2, attempt="newer-attempt", state="writing").encode()
    replace(tmp_path / "ck.claim", ClaimRecord(save_id="job", world_size=2, attempt="newer-attempt").encode())
    replace(notice, newer)
    thread.join(60)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], SaveFailedError), errors
    assert "taken over" in str(errors[0])
    assert notice.read_bytes() == newer


def test_a_notice_left_by_a_committed_attempt_does_not_hide_the_index_from_the_workers(tmp_path: Path) -> None:
    """A job killed after its commit but before its coordinator removed the notices leaves
    "attempt A committed" behind. Its restart (same save id) must raise CheckpointExistsError
    on every rank: was, the workers waited on that notice, skipping their looks at the index,
    and ran into the commit timeout (found by the soak's restart phase, seed 20261206)."""
    from remoteckpt.errors import CheckpointExistsError
    from remoteckpt.protocol.records import Notice

    prefix = str(tmp_path / "ck")
    options = IOOptions(lease_timeout=1, commit_timeout=20, poll_interval=0.02)
    errors: dict[int, BaseException] = {}

    def rank(r: int) -> None:
        try:
            remoteckpt.save({f"w{r}": np.zeros(4, np.float32)}, prefix, rank=r, world_size=2, save_id="job",
                            options=options)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors[r] = exc

    for r in (0, 1):  # the first job commits
        threading.Thread(target=rank, args=(r,)).start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "ck.index").exists() or (tmp_path / "ck.tmp").exists():
        assert time.monotonic() < deadline and not errors, errors
        time.sleep(0.02)
    (tmp_path / "ck.tmp").mkdir()
    (tmp_path / "ck.tmp" / "notice-00000").write_bytes(
        Notice(save_id="job", world_size=2, attempt="the-dead-one", state="committed").encode())
    began = time.monotonic()
    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(errors) == {0, 1} and all(isinstance(e, CheckpointExistsError) for e in errors.values()), errors
    assert time.monotonic() - began < options.commit_timeout / 2
