"""Crash consistency: real worker processes SIGKILLed at every named point of the save
protocol (remoteckpt/faults.py) and at random moments, on local disk and on S3.

A scenario is a fresh directory and a job of N workers, each running a `remoteckpt.Saver`
(max_to_keep=1, so the state file and retention are exercised) over 3 steps; the tensors are
a deterministic function of (step, rank), and step 1's include 10 MiB per worker (multipart
uploads on S3).  One rank dies: at a named point during step 1 (``REMOTECKPT_CRASH_AT``), or
after a random delay (a parent thread's SIGKILL).  The survivors have a short commit_timeout
and are killed if still alive after a bound.  Then the verifier (tests/reliability_workers.py)
checks that:

  - every ``*.index`` in the directory opens, and restores exactly the tensors saved at its
    step: 0 checkpoints that read as valid but differ, 0 that read as committed but fail;
  - `latest_checkpoint(dir)` is None only when there is no state file, and otherwise a
    complete checkpoint; every checkpoint the state file lists is complete;
  - every worker finished, was the victim, or failed with a remoteckpt error (no hang, no
    foreign exception);
  - `gc(dir, older_than=0)` leaves no uncommitted bytes (no data file without index, no
    staging ``*.tmp*/`` key, no ``*.tempstate*``, no incomplete multipart upload), and every
    committed checkpoint still restores.

Here: every named point once for rank 0 and once for rank 1 of 2 workers, local and S3, and
random kills with 1, 2 and 4 workers.  `make soak` (benchmarks/soak) runs hundreds to
thousands of these.  Scenarios of one backend run concurrently (they wait on timeouts more
than they compute).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import reliability_workers as rw

import remoteckpt
from remoteckpt.faults import POINTS

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

CONCURRENT_SCENARIOS = 8
STAGGER = 0.4


def _backend(name: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[str, dict[str, str], dict[str, Any] | None]:
    """(base directory, worker environment, storage options) of a backend."""
    if name == "local":
        return str(tmp_path_factory.mktemp("crash")), {}, None
    server = request.getfixturevalue("s3_server")
    return f"s3://{server.bucket}/crash-{random.getrandbits(32):08x}", server.env(), {"part_size": rw.PART_SIZE}


def _run_all(scenarios: dict[Any, rw.Scenario]) -> dict[Any, tuple[rw.RunResult, rw.Verdict]]:
    """Run and verify every scenario, several at once (mostly they wait for a timeout), their
    starts staggered so that the workers' first saves do not all compete for the CPU."""
    def one(order: int, sc: rw.Scenario) -> tuple[rw.RunResult, rw.Verdict]:
        time.sleep(STAGGER * (order % CONCURRENT_SCENARIOS) if order < CONCURRENT_SCENARIOS else 0)
        result = rw.run_scenario(sc)
        verdict = rw.verify(sc.directory, sc.world, storage_options=sc.storage_options, big_step=sc.big_step)
        if not rw.spurious_failure(result):
            return result, verdict
        # A save failed where nothing was injected (a timeout under load, or the local-disk
        # staging race of test_local_put_survives_a_concurrent_delete_in_its_directory): the
        # consistency checks of this run still count, the scenario's expectations are checked
        # on a second run.
        first = verdict.problems + rw.check_run(result)
        sc = dataclasses.replace(sc, directory=sc.directory + "-again")
        result = rw.run_scenario(sc)
        verdict = rw.verify(sc.directory, sc.world, storage_options=sc.storage_options, big_step=sc.big_step)
        verdict.problems[:0] = [f"first run: {p}" for p in first]
        return result, verdict

    with ThreadPoolExecutor(CONCURRENT_SCENARIOS) as pool:
        futures = {key: pool.submit(one, i, sc) for i, (key, sc) in enumerate(scenarios.items())}
        return {key: f.result() for key, f in futures.items()}


def _assert_consistent(result: rw.RunResult, verdict: rw.Verdict) -> None:
    where = (result.scenario.describe(), result.exit_codes, [(e["step"], e["error"], e["message"]) for e in result.errors()])
    assert verdict.silent_corruptions == 0, (where, verdict.problems)
    assert verdict.problems == [], where
    assert rw.check_run(result) == [], where
    assert verdict.restored_exact == verdict.checkpoints, where


@pytest.fixture(scope="module", params=["local", "s3"])
def named_point_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                     ) -> dict[tuple[str, int, int], tuple[rw.RunResult, rw.Verdict]]:
    base, env, options = _backend(request.param, request, tmp_path_factory)
    scenarios = {(point, world, victim): rw.Scenario(rw.scenario_directory(base, f"{point}-w{world}-r{victim}"),
                                                     world=world, victim=victim, point=point, env=env,
                                                     storage_options=options)
                 for point, world, victim in NAMED_CASES}
    return _run_all(scenarios)


NAMED_CASES = ([(point, 2, victim) for point in POINTS for victim in (0, 1)]
               + [(point, 1, 0) for point in POINTS]
               + [(point, 4, 0) for point in POINTS]
               + [(point, 4, 3) for point in POINTS if point not in rw.COORDINATOR_ONLY])
"""(point, world, victim): every point with 2 workers, each side; every point of a single
worker; with 4 workers the coordinator at every point and the last worker at its own."""


@pytest.mark.parametrize(("point", "world", "victim"), NAMED_CASES,
                         ids=[f"{p}-w{w}-{'coordinator' if v == 0 else 'worker'}" for p, w, v in NAMED_CASES])
def test_kill_at_named_point(named_point_runs: dict[tuple[str, int, int], tuple[rw.RunResult, rw.Verdict]],
                             point: str, world: int, victim: int) -> None:
    result, verdict = named_point_runs[point, world, victim]
    reachable = rw.reachable(point, world, victim)
    what = (result.scenario.describe(), result.exit_codes, [(e["step"], e["error"], e["message"]) for e in result.errors()])
    assert result.injected == reachable, what
    _assert_consistent(result, verdict)
    # Step 0 was committed and recorded before the crash at step 1, so there is always a latest.
    assert verdict.latest is not None, what
    latest_step = int(verdict.latest.rsplit("-", 1)[1])
    if not reachable:  # the victim never passes this point: the job just completes
        assert result.exit_codes == [0] * world and latest_step == 2, what
    elif point in ("staged", "mid-upload", "data-written"):
        assert latest_step == 0, what  # step 1's data never became durable on every worker
    elif point in ("merged", "table-written", "committing") and victim == 0:
        assert latest_step == 0 and verdict.checkpoints == 1, what  # the coordinator died before the commit
    elif point in ("committed", "state-writing", "state-replacing"):
        assert latest_step == 0 and verdict.checkpoints == 2, what  # committed, never recorded
    elif point in ("retention", "deleting"):
        assert latest_step == 1, what
    _assert_left_what_the_point_leaves(point, world, victim, _backend_of(result), verdict, what)


def _backend_of(result: rw.RunResult) -> str:
    return "s3" if result.scenario.directory.startswith("s3://") else "local"


def _assert_left_what_the_point_leaves(point: str, world: int, victim: int, backend: str, verdict: rw.Verdict,
                                       what: Any) -> None:
    """The kill really left the debris gc must clear (so the "nothing left after gc" check
    had work to do): a half-written object or upload at the points inside a write."""
    left = verdict.left_before_gc
    if not rw.reachable(point, world, victim):
        return
    if point == "mid-upload" and backend == "s3":  # the victim's data file: a multipart upload begun
        assert any(k.startswith("upload of ") and ".data-" in k for k in left), (what, left)
        assert verdict.aborted_uploads >= 1, (what, left)
    elif point == "committing" and backend == "local":  # the index, durable under its temp name
        assert any(".index.tempstate" in k for k in left), (what, left)
    elif point == "state-replacing" and backend == "local":
        assert any(k.startswith("checkpoint.tempstate") for k in left), (what, left)


@pytest.fixture(scope="module", params=["local", "s3"])
def random_kill_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                     ) -> dict[tuple[int, int], tuple[rw.RunResult, rw.Verdict]]:
    base, env, options = _backend(request.param, request, tmp_path_factory)
    rng = random.Random(20261122 + len(request.param))
    per_step = 0.25 if request.param == "local" else 0.6  # rough seconds per step and worker
    scenarios = {}
    for world in (1, 2, 4):
        for trial in range(2):
            scenarios[world, trial] = rw.Scenario(
                rw.scenario_directory(base, f"random-w{world}-{trial}"), world=world, victim=rng.randrange(world),
                kill_after=rng.uniform(0.05, per_step * 3 * (1 + world / 2)), env=env, storage_options=options)
    return _run_all(scenarios)


@pytest.mark.parametrize("trial", [0, 1])
@pytest.mark.parametrize("world", [1, 2, 4])
def test_random_kill(random_kill_runs: dict[tuple[int, int], tuple[rw.RunResult, rw.Verdict]],
                     world: int, trial: int) -> None:
    result, verdict = random_kill_runs[world, trial]
    _assert_consistent(result, verdict)
    if not result.injected:  # the job had finished before the kill: it must have completed
        assert result.exit_codes == [0] * world
        assert verdict.latest is not None and verdict.latest.endswith("-2")


def test_harness_detects_a_damaged_checkpoint(tmp_path: Path) -> None:
    """The verifier is not vacuous: a checkpoint whose index points at other bytes of the same
    layout (restores without a CRC error, but holds another step's tensors) is reported."""
    directory = str(tmp_path)
    for step in (0, 1):
        remoteckpt.save(rw.tensors_for(step, 0, 1, False), rw.prefix_of(directory, step))
    # Swap step 1's files for step 0's: same layout, valid CRCs, wrong content for step 1.
    (tmp_path / "model.ckpt-1.index").write_bytes((tmp_path / "model.ckpt-0.index").read_bytes())
    (tmp_path / "model.ckpt-1.data-00000-of-00001").write_bytes(
        (tmp_path / "model.ckpt-0.data-00000-of-00001").read_bytes())
    verdict = rw.verify(directory, 1, big_step=None)
    assert verdict.silent_corruptions == 1 and any("SILENT" in p for p in verdict.problems)
    (tmp_path / "model.ckpt-0.data-00000-of-00001").write_bytes(b"\0" * 10)
    verdict = rw.verify(directory, 1, big_step=None, run_gc=False)
    assert verdict.unrestorable == 1


def test_crash_during_overwrite_keeps_a_restorable_checkpoint(tmp_path: Path) -> None:
    prefix = rw.prefix_of(str(tmp_path), 1)
    remoteckpt.save(rw.tensors_for(1, 0, 1, True), prefix)
    p = rw.context().Process(target=rw.overwrite_main, args=(prefix, "data-written:1", {}), daemon=True)
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL
    # Overwriting un-commits the old checkpoint (its index goes first) before any of its data
    # files is replaced, so a crash leaves no checkpoint there, or the new one whole: never an
    # index that reads as committed over half-replaced data.
    try:
        got = remoteckpt.load(prefix)
    except remoteckpt.CheckpointNotFoundError:
        return
    except remoteckpt.CorruptCheckpointError:
        pytest.fail("the checkpoint reads as committed but does not restore")
    old, new = rw.tensors_for(1, 0, 1, True), rw.tensors_for(7, 0, 1, True)
    assert any(all(np.array_equal(got[n], np.asarray(v)) for n, v in t.items() if n != "shared/rows")
               for t in (old, new))


def test_job_restarted_after_crash_between_commit_and_state_file_can_save(tmp_path: Path) -> None:
    directory = str(tmp_path)
    result = rw.run_scenario(rw.Scenario(directory, world=1, victim=0, point="state-writing", big_step=None))
    assert result.injected
    verdict = rw.verify(directory, 1, big_step=None)
    assert verdict.problems == [] and verdict.latest == rw.prefix_of(directory, 0)
    # The restarted job resumes after the latest checkpoint, as training loops do.
    resumed = rw.run_scenario(rw.Scenario(directory, world=1, start_step=1, big_step=None))
    assert resumed.exit_codes == [0], resumed.errors()


def test_local_put_survives_a_concurrent_delete_in_its_directory(tmp_path: Path) -> None:
    from remoteckpt.engine import loop
    from remoteckpt.storage.local import LocalStore

    async def race() -> int:
        store = LocalStore(tmp_path)
        done = False

        async def deleter() -> None:
            while not done:
                await store.delete("ck.tmp/failed-00001")  # a worker's start-of-save cleanup

        async def writer() -> int:
            nonlocal done
            failures = 0
            for _ in range(200):
                try:
                    await store.put("ck.tmp/part-00000-of-00002.index", b"table")
                except remoteckpt.CheckpointError:
                    failures += 1
                await store.delete("ck.tmp/part-00000-of-00002.index")
            done = True
            return failures

        failures, *_ = await asyncio.gather(writer(), deleter(), deleter())
        return failures

    assert loop.run(race()) == 0


# --- concurrent committers -------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["local", "s3"])
def test_three_committers_one_wins(backend: str, request: pytest.FixtureRequest,
                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    """Three processes save different tensors to one prefix at the same moment: exactly one
    commits, the others get CheckpointExistsError (or its CheckpointBusyError); what is committed is the winner's, whole;
    nothing of the losers is left (no temp file, no incomplete upload)."""
    base, env, options = _backend(backend, request, tmp_path_factory)
    directory = rw.scenario_directory(base, "race")
    prefix = f"{directory}/ck"
    records = rw.run_committers(prefix, [(who, 0, 0.0) for who in range(3)], 1, env, options)
    winners = [r["who"] for r in records if r.get("ok")]
    assert len(winners) == 1, records
    for r in records:
        if not r.get("ok"):
            # Busy (a subclass) where the claim decided: S3, whose streamed creates can race
            assert r["error"] in ("CheckpointExistsError", "CheckpointBusyError") and "ck" in r["message"], r
    got = remoteckpt.load(prefix, storage_options=options)
    want = rw.committer_tensors(winners[0])
    assert all(np.asarray(v).tobytes() == got[k].tobytes() for k, v in want.items())
    infos, uploads = rw._list(directory, options)
    assert sorted(i.key for i in infos) == ["ck.data-00000-of-00001", "ck.index"] and uploads == []


RACES = {
    # job 1's rank 0 and job 2's rank 1 first, their partners half a second later: without a
    # per-save claim each job would win one data file and both would fail
    "crossed": [(1, 0, 0.0), (2, 1, 0.0), (1, 1, 0.5), (2, 0, 0.5)],
    # three jobs, every rank at the same moment
    "crowd": [(who, rank, 0.0) for who in (1, 2, 3) for rank in (0, 1)],
}


@pytest.mark.parametrize("race", sorted(RACES))
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_racing_multiworker_jobs_one_wins(backend: str, race: str, request: pytest.FixtureRequest,
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    """Two-worker jobs with distinct save ids race for one prefix: exactly one job commits,
    every worker of the others gets CheckpointBusyError naming the holder it saw before writing
    anything (on a loaded machine: CheckpointExistsError naming the index when its rank 0 comes
    after the winner's commit; SaveFailedError for a holder taken over after stalling past its
    lease), and nothing but the winner's checkpoint is left (no claim, no staging, no upload)."""
    base, env, options = _backend(backend, request, tmp_path_factory)
    directory = rw.scenario_directory(base, "race2")
    prefix = f"{directory}/ck"
    records = rw.run_committers(prefix, RACES[race], 2, env, options)
    winners = {r["who"] for r in records if r.get("ok")}
    assert len(winners) == 1, records
    (winner,) = winners
    assert all(r.get("ok") for r in records if r["who"] == winner), records
    racers = {who for who, _, _ in RACES[race]}
    for r in records:
        if r["who"] == winner:
            continue
        others = [f"job{j}" for j in racers - {r["who"]}]
        if r.get("error") == "CheckpointExistsError":  # its rank 0 came after the winner's commit
            assert "ck.index" in r["message"] and "committed" in r["message"], r
        elif r.get("error") == "SaveFailedError":
            # A holder that stalled past the 2 s lease on a loaded machine was taken over
            # (by the winner, or by a job the winner then found alive): it stops before a
            # byte of its reaches the winner's checkpoint, which is checked below.
            assert "taken over" in r["message"], r
        else:
            # Busy names the holder it saw renewing: the winner, or on a loaded machine a
            # holder that was taken over afterwards; never itself or anybody else.
            assert r.get("error") == "CheckpointBusyError" and any(o in r["message"] for o in others), r
    got = remoteckpt.load(prefix, storage_options=options)
    for rank in (0, 1):
        for k, v in rw.committer_tensors(winner, rank).items():
            assert got[k].tobytes() == np.asarray(v).tobytes(), k
    deadline = time.monotonic() + 30  # the coordinator deletes the outcome once acknowledged
    while True:
        infos, uploads = rw._list(directory, options)
        keys = sorted(i.key for i in infos)
        if keys == ["ck.data-00000-of-00002", "ck.data-00001-of-00002", "ck.index"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert keys == ["ck.data-00000-of-00002", "ck.data-00001-of-00002", "ck.index"] and uploads == [], keys
