"""Per-host tiers (`LocalTier(per_host=True)`, remoteckpt/tiers/hosts.py): workers in separate
processes, the workers of each host sharing a tier directory of its own (a host's local disk),
saving to SeaweedFS (and, in two crash scenarios, to a remote directory on local disk).

The crash scenarios (tests/host_tier_workers.py's `run`, run a few at a time): 1 worker, 2
hosts of 1, 2 hosts of 2 and 4 hosts of 1, a worker SIGKILLed at a point of step 1's local
commit or drain; checked after the kill, after `gc` on every host and after a restarted job."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


def test_a_save_over_a_committed_remote_checkpoint_is_refused_on_every_worker_before_any_writes(
        s3_server: Any, s3_prefix: str, tmp_path: Path) -> None:
    """Rank 0 alone looks at the remote prefix (the protocol's check, before it invites anyone):
    every worker raises its `CheckpointExistsError` at once, and no tier gets a data file."""
    prefix, tiers = f"{s3_prefix}/model.ckpt-7", str(tmp_path / "tiers")
    remoteckpt.save({"x": np.ones(3)}, prefix)
    results = run_each(hw.refused_job, [(r, 3, s3_server.env(), prefix, tiers) for r in range(3)], 120)
    for rank, result in enumerate(results):
        if isinstance(result, BaseException):
            raise result
        assert result["error"] and result["error"].startswith("CheckpointExistsError"), (rank, result)
        assert "model.ckpt-7.index already exists" in result["error"], (rank, result)
        assert result["seconds"] < 30, (rank, result)  # not a worker's wait of commit_timeout (60 s)
        assert not [f for f in result["files"] if ".data-" in f or ".table-" in f], (rank, result)
    assert remoteckpt.load(prefix)["x"].tolist() == [1, 1, 1]


def test_the_workers_of_a_host_share_their_reads_of_the_keys_every_worker_needs(s3_server: Any, s3_prefix: str,
                                                                                 tmp_path: Path) -> None:
    """Four workers, two hosts of two, three incremental saves each drained, through a
    recording proxy: the keys every worker of a job would read (the remote index, the local
    commit's index, the state file, the base's index) are read once per host or by rank 0, not
    by every worker; the drains of later steps copy a frozen tensor from what the host sent
    (its durable marker), and every step restores exactly."""
    from faultproxy import FaultProxy

    world, per_host, steps, tiers = 4, 2, 3, str(tmp_path / "tiers")
    with FaultProxy(s3_server.endpoint_url, record=True) as proxy:
        env = {**s3_server.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url}
        results = run_each(hw.counted_job, [(r, world, per_host, env, s3_prefix, tiers, steps)
                                            for r in range(world)], 300)
        records = list(proxy.records or [])
    for result in results:
        if isinstance(result, BaseException):
            raise result
    directory = s3_prefix.split("/", 3)[3]

    def requests(rank: int, key: str, kind: str | None = None) -> int:
        return sum(1 for r in records if r[6] == f"rank{rank}" and r[5] == f"{directory}/{key}"
                   and (kind is None or r[4] == kind))

    for step in range(steps):
        name = f"model.ckpt-{step}"
        for rank in range(1, world):
            # rank 0 looks at the prefix for all; a worker may look while it waits for an invitation
            assert requests(rank, f"{name}.index") <= 1, (rank, step)
        for host in range(world // per_host):
            ranks = range(host * per_host, (host + 1) * per_host)
            fetched = sum(requests(r, f".tiers/{name}.index", "GET") for r in ranks)
            assert fetched <= 1 + (host == 0), (host, step, fetched)  # rank 0 also checks it before removing it
        if step:
            for rank in range(1, world):  # the base comes from the host's tier
                assert requests(rank, f"model.ckpt-{step - 1}.index") == 0, (rank, step)
                sent = sum(r[10] for r in records if r[6] == f"rank{rank}" and r[4] == "PUT"
                           and r[5].startswith(f"{directory}/{name}.data-"))
                assert sent < 7 * 2**20, (rank, step, sent)  # of 12 MiB frozen, 6 copied
        want = {f"rank{r}/state": np.full(1000, step * 10 + r, np.int64) for r in range(world)}
        want |= {k: v for r in range(world) for k, v in hw.frozen(r).items()}
        _same(remoteckpt.load(f"{s3_prefix}/{name}"), want)
    for rank in range(1, world):
        assert requests(rank, "checkpoint") <= 1, rank  # at the first drain only: nothing on the tier yet


@dataclass(frozen=True)
class Case:
    """A crash scenario (tests/host_tier_workers.py's `run`): `world` workers, `per_host` a host,
    rank `victim` killed at `point` of step 1; the restart resumes (or drops) the drains."""

    world: int
    per_host: int
    point: str
    victim: int
    resume: bool = True
    remote: str = "s3"                      # or "local": the remote directory on local disk
    gc_first: bool = True                   # False: restarted right after the kill, gc after the restart

    @property
    def id(self) -> str:
        return (f"{self.remote}-w{self.world}-{self.world // self.per_host}hosts-{self.point}-r{self.victim}"
                + ("" if self.resume else "-drop") + ("" if self.gc_first else "-restart-first"))


CASES = ([Case(1, 1, point, 0) for point in ("host-committed", "mid-copy", "drained", "staged")]
         + [Case(2, 1, "host-committed", 1), Case(2, 1, "committed", 0), Case(2, 1, "mid-copy", 0),
            Case(2, 1, "drained", 1), Case(2, 1, "staged", 1)]
         + [Case(4, 2, "host-committed", 3), Case(4, 2, "committed", 0), Case(4, 2, "mid-copy", 2),
            Case(4, 2, "drained", 0), Case(4, 2, "staged", 1)]
         + [Case(4, 1, "committed", 0, gc_first=False), Case(4, 1, "mid-copy", 3)]
         + [Case(2, 1, "mid-copy", 1, resume=False)]
         + [Case(2, 1, "committed", 0, remote="local"), Case(4, 2, "mid-copy", 2, remote="local")])
"""The kill points of a local commit's end (a worker; the coordinator right after the
commit, before any worker heard of it: they judge by `.tiers/NAME.index`, and a host whose
worker died before writing its index gets it back), inside a drain's copy, after a drain's
commit and before a worker wrote anything, with one worker (a shared tier's save), two hosts
of one worker, two hosts of two workers (victims on either host, beside the coordinator or
not) and four hosts of one (the coordinator's kill restarted before any `gc`: its host takes
back the index of the local commit at the restart, where the others get it from `gc`); and a
restart that drops the drain left (``resume=False``).
benchmarks/soak (``--only tiers``) draws every point of a local commit and of a drain, any
victim, among these layouts."""

CONCURRENT = 3
"""Scenarios at once: their processes mostly wait (for a dead worker, a lease), so a few
overlap well on two cores."""


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, s3_server: Any,
         tmp_path_factory: pytest.TempPathFactory) -> dict[Case, hw.HostRun]:
    """The scenarios of the selected tests, run together (CONCURRENT at a time)."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec") and "case" in item.callspec.params]
    base, env = f"s3://{s3_server.bucket}/hosts-crash-{uuid.uuid4().hex[:8]}", s3_server.env()

    def one(case: Case) -> hw.HostRun:
        remote = f"{base}/{case.id}" if case.remote == "s3" else str(tmp_path_factory.mktemp("remote") / case.id)
        return hw.run(remote, str(tmp_path_factory.mktemp("hosts")), case.world, case.per_host, case.point,
                      case.victim, env, resume=case.resume, gc_first=case.gc_first)

    tmp_path_factory.getbasetemp()  # made once, before the threads ask for directories in it
    with ThreadPoolExecutor(CONCURRENT) as pool:
        runs = dict(zip(selected, pool.map(one, selected)))
    for case, run in runs.items():  # shown with -s
        print(f"{case.id}: {run.seconds:.1f} s {run.phases}, step 1 {run.outcome} after the kill")
    return runs


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_worker_killed_during_step_1_leaves_the_previous_or_the_new_checkpoint_and_a_restart_drains_it(
        runs: dict[Case, hw.HostRun], case: Case) -> None:
    """After the kill, the remote directory holds step 0 and at most a complete step 1, where the
    point says; `gc` on every host leaves step 1 on every host's tier (committed locally) or
    on none; a restarted job's workers resume the drain of step 1 (or drop it) and step 2
    drains on every worker; every checkpoint restores exactly, the remote copy is every host's
    byte for byte, `gc` leaves no leftover on either tier, and each host's tier holds its own
    workers' files only, throughout (tests/host_tier_workers.py)."""
    run = runs[case]
    assert run.problems == [], (run.describe(), run.exit_codes, run.records, run.restart, run.problems)
    assert run.outcome == hw.expected_outcome(case.point, case.world, case.victim)


@pytest.mark.parametrize(("world", "per_host"), [(2, 1), (4, 2)], ids=["2hosts", "2hosts-of-2"])
def test_a_per_host_checkpoint_saved_again_with_overwrite_replaces_it_on_every_tier(
        s3_server: Any, s3_prefix: str, tmp_path: Path, world: int, per_host: int) -> None:
    tiers, prefix = str(tmp_path / "tiers"), f"{s3_prefix}/model.ckpt-5"
    results = run_each(hw.overwrite_job, [(r, world, s3_server.env(), prefix, tiers, per_host) for r in range(world)],
                       240)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    for rank, result in enumerate(results):  # each host: the new checkpoint, its own data files only
        own = range(rank // per_host * per_host, (rank // per_host + 1) * per_host)
        assert [f for f in result["files"] if ".data-" in f] == [
            f"model.ckpt-5.data-{r:05d}-of-{world:05d}" for r in own], result["files"]
    _same(remoteckpt.load(prefix), hw.expected(1, world))
    for rank in range(0, world, per_host):  # byte for byte the remote copy, on every host
        tier = hw.tier_of(tiers, rank, per_host).path
        for name in ("model.ckpt-5.index", *(f"model.ckpt-5.data-{r:05d}-of-{world:05d}"
                                              for r in range(rank, rank + per_host))):
            assert (Path(tier) / name).read_bytes() == on_store(prefix.rsplit("/", 1)[0],
                                                                lambda store, n=name: store.get(n)), name
    got = run_each(hw.restore_job, [(0, world, s3_server.env(), prefix, tiers)], 120)[0]
    if isinstance(got, BaseException):
        raise got
    _same(got, hw.expected(1, world))


def test_the_checks_see_a_wrong_checkpoint_a_foreign_file_and_leftovers(tmp_path: Path) -> None:
    """The crash scenarios' checks, on a directory and tiers made wrong on purpose: a remote
    checkpoint holding another step's tensors, a data file of host 1's worker on host 0's tier,
    a claim left in the remote `.tiers/` folder and a table of no committed checkpoint."""
    remote, tiers = tmp_path / "remote", tmp_path / "tiers"
    run = hw.HostRun(str(remote), str(tiers), 4, 2, "staged", 1)
    remoteckpt.save(hw.expected(0, 4), str(remote / "model.ckpt-0"))
    remoteckpt.save(hw.expected(2, 4), str(remote / "model.ckpt-1"))
    (remote / ".tiers").mkdir()
    (remote / ".tiers" / "model.ckpt-1.claim").write_bytes(b"{}")
    for host in (0, 1):
        (tiers / f"host-{host}").mkdir(parents=True)
    (tiers / "host-0" / "model.ckpt-1.data-00002-of-00004").write_bytes(b"x")
    (tiers / "host-1" / "model.ckpt-1.table-00003").write_bytes(b"x")
    hw._check_remote(run, [0, 1], "now")
    hw._check_foreign(run, "now")
    hw._check_leftovers(run, [])
    assert run.restored_exact == 1 and len(run.problems) == 5, run.problems
    silent, foreign, claim, *rest = run.problems
    assert "SILENT CORRUPTION" in silent and "model.ckpt-1" in silent
    assert "host 0's tier holds model.ckpt-1.data-00002-of-00004" in foreign
    assert claim.endswith("remote leftover .tiers/model.ckpt-1.claim")
    assert sorted(rest) == sorted(f"after the restart and gc: host {h}'s tier holds {f}, of no committed checkpoint"
                                  for h, f in ((0, "model.ckpt-1.data-00002-of-00004"), (1, "model.ckpt-1.table-00003")))


def test_an_overwrite_by_the_workers_of_one_host_keeps_every_new_data_file(s3_server: Any, s3_prefix: str,
                                                                          tmp_path: Path) -> None:
    """Two workers of one host overwrite their checkpoint: the one that replaces the host's copy
    slowly (paused after deleting its index) must not delete the data file the other has
    written anew meanwhile; the local commit then holds both, and the drain commits them."""
    from spawning import run_together

    world, tiers, prefix = 2, str(tmp_path / "tiers"), f"{s3_prefix}/model.ckpt-5"
    records = run_together(hw.overwrite_race_job, [(r, world, s3_server.env(), prefix, tiers) for r in range(world)],
                           180)
    want = ["model.ckpt-5.data-00000-of-00002", "model.ckpt-5.data-00001-of-00002"]
    for record in records:
        assert record is not None and "error" not in record, records
        assert [f for f in record["local"] if ".data-" in f] == want, records
    _same(remoteckpt.load(prefix), hw.expected(1, world))


def test_a_replaced_host_fails_the_drain_of_what_it_lost_at_once(s3_server: Any, s3_prefix: str,
                                                                   tmp_path: Path) -> None:
    """A host replaced after a local commit (its tier gone with the worker): the restarted
    worker finds the local commit pending in the remote directory, holds nothing of it, and
    fails that drain at once with an error naming itself; every worker gets that error (not a
    timeout waiting for it), the next step saves and drains, the lost step never reaches the
    remote directory."""
    got = hw.replaced_host(f"{s3_prefix}/replaced", str(tmp_path / "tiers"), s3_server.env())
    assert got["codes"][1] == -9, got
    assert [r["step"] for r in got["crashed"][0] if r.get("ok")] == [0], got  # step 1's drain waited for worker 1
    for rank, records in enumerate(got["restart"]):
        resumed = [r["resumed"] for r in records if "resumed" in r]
        assert len(resumed) == 1 and "worker 1's data file of" in resumed[0] and "host-1" in resumed[0], (rank, records)
        durable = [r["durable"] for r in records if "durable" in r]
        assert durable == [[f"{s3_prefix}/replaced/model.ckpt-{s}" for s in (0, 2)]], records
    assert got["steps"] == [0, 2], got
    assert "model.ckpt-1.index" in got["tier0"]  # still only local, on the surviving host
