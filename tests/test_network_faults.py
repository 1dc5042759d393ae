"""Network faults between remoteckpt and S3: a fault-injecting proxy (tests/faultproxy.py) on
127.0.0.1 in front of the SeaweedFS server answers 503 SlowDown, cuts requests and responses
mid-body, drops responses after the server acted (lost acknowledgements), stalls and adds
latency, deterministically by seed.

The contract: every save and restore through it either succeeds (retries with backoff,
resumed reads, lost acknowledgements settled by reading back) with byte-exact tensors, or
fails with a remoteckpt error naming the object that failed; never wrong bytes; never a hang
(every operation is bounded here); a failed upload is aborted (no incomplete multipart upload
is left behind).
"""

from __future__ import annotations

import concurrent.futures
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import pytest
from faultproxy import FAULTS, FaultProxy, Rule

import remoteckpt
from remoteckpt.storage import on_store
from remoteckpt.testing import SeaweedServer

T = TypeVar("T")
MiB = 2**20
PART = 5 * MiB
OP_BOUND = 90.0
"""Seconds any one save or load may take here, faults and retries included."""


def tensors(seed: int = 0, small: bool = False) -> dict[str, Any]:
    """~12 MiB in a multipart data file (5 MiB parts: 3 of them), plus small tensors sharing a
    part; with `small`, ~6 MiB (2 parts)."""
    rng = np.random.default_rng(seed)
    return {
        "big": rng.standard_normal(MiB if small else 2 * MiB, dtype=np.float32),  # 4 or 8 MiB, 1 MiB CRC chunks
        "mid": rng.integers(0, 2**31, size=MiB // (2 if small else 1), dtype=np.int32),  # 2 or 4 MiB
        "small": np.arange(10, dtype=np.int64) + seed,
        "words": np.array([b"alpha", f"seed {seed}".encode(), b""], dtype=object),
        "part": [remoteckpt.Slice(np.full((4, 3), seed, np.float32), (8, 3), (0, 0)),
                 remoteckpt.Slice(np.ones((4, 3), np.float32), (8, 3), (4, 0))],
    }


def expected(seed: int = 0, small: bool = False) -> dict[str, np.ndarray]:
    t = tensors(seed, small)
    out = {k: np.asarray(v) for k, v in t.items() if k != "part"}
    out["part"] = np.concatenate([np.full((4, 3), seed, np.float32), np.ones((4, 3), np.float32)])
    return out


def assert_exact(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        if value.dtype.kind == "O":
            assert list(got[name]) == list(value), name
        else:
            assert got[name].dtype == value.dtype and got[name].tobytes() == value.tobytes(), name


def bounded(fn: Callable[[], T], seconds: float = OP_BOUND) -> T:
    """Run `fn` in a thread; fail the test (not hang) if it takes longer than `seconds`."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(fn).result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        pytest.fail(f"operation still running after {seconds:g} s: a hang")
    finally:
        pool.shutdown(wait=False)


@pytest.fixture
def proxy(s3_server: SeaweedServer) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint_url, seed=1234) as p:
        yield p


@pytest.fixture
def base(s3_server: SeaweedServer, request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", request.node.name)[:60]
    return f"s3://{s3_server.bucket}/netfaults/{name}-{uuid.uuid4().hex[:10]}"


def via(proxy: FaultProxy, **config: Any) -> dict[str, Any]:
    """storage_options reaching S3 through the proxy (library defaults unless `config`)."""
    options: dict[str, Any] = {"endpoint_url": proxy.endpoint_url, "part_size": PART}
    if config:
        options["config_kwargs"] = config
    return options


def pending_uploads(directory: str) -> list[Any]:
    """Incomplete multipart uploads under `directory`, asked of the server directly."""
    return on_store(directory, lambda store: store.pending_uploads())


def keys(directory: str) -> list[str]:
    return on_store(directory, lambda store: store.list())


def save_and_restore(prefix: str, options: dict[str, Any], seed: int = 0) -> None:
    bounded(lambda: remoteckpt.save(tensors(seed), prefix, storage_options=options))
    got = bounded(lambda: remoteckpt.load(prefix, storage_options=options))
    assert_exact(got, expected(seed))


# --- each fault alone: retried through -------------------------------------------------------

@pytest.mark.parametrize("fault", [pytest.param("slowdown", marks=pytest.mark.slow), "cut-request", "cut-response",
                                   "drop-response"])
def test_each_fault_is_retried_through(proxy: FaultProxy, base: str, fault: str) -> None:
    """At 25% of requests, with the library's default retry and timeout settings."""
    proxy.reset(**{fault.replace("-", "_"): 0.25})
    save_and_restore(f"{base}/ck", via(proxy))
    assert proxy.counters[fault] > 0, proxy.counters
    assert pending_uploads(base) == []
    assert sorted(keys(base)) == ["ck.data-00000-of-00001", "ck.index"]


def test_latency_and_partial_reads(proxy: FaultProxy, base: str) -> None:
    """Latency on half the requests; boxes of tensors read through cut responses (ranged
    GETs resumed from the first missing byte, every byte verified)."""
    prefix = f"{base}/ck"
    bounded(lambda: remoteckpt.save(tensors(), prefix, storage_options=via(proxy)))
    proxy.reset(latency=0.05, latency_probability=0.5, cut_response=0.3)
    want = expected()
    for _ in range(3):  # enough requests that some are cut, whatever the seed's sequence
        with remoteckpt.CheckpointReader(prefix, storage_options=via(proxy)) as reader:
            for box in [(slice(100, 3 * MiB // 4 + 7),), (slice(2 * MiB - 5, None),)]:
                np.testing.assert_array_equal(bounded(lambda: reader.get_slice("big", box)), want["big"][box])
            np.testing.assert_array_equal(bounded(lambda: reader.get_slice("part", (slice(2, 6),))),
                                          want["part"][2:6])
    assert proxy.counters["latency"] > 0 and proxy.counters["cut-response"] > 0, proxy.counters


def test_cut_bodies_are_fetched_again(proxy: FaultProxy, base: str) -> None:
    """A GET of the index and two GETs of the data file lose their connection mid-body: the
    index is fetched again, the data reads resume from the first missing byte."""
    prefix = f"{base}/ck"
    bounded(lambda: remoteckpt.save(tensors(), prefix, storage_options=via(proxy)))
    index_rule = proxy.add_rule(Rule("cut-response", method="GET", path=r"/ck\.index(\?|$)", times=1))
    data_rule = proxy.add_rule(Rule("cut-response", method="GET", path=r"/ck\.data-", times=2))
    got = bounded(lambda: remoteckpt.load(prefix, storage_options=via(proxy, retries={"max_attempts": 1})))
    assert_exact(got, expected())
    assert index_rule.matched == 1 and data_rule.matched == 2


# --- everything at once: succeed exactly, or fail clearly ------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_heavy_mixed_faults_never_give_wrong_bytes(proxy: FaultProxy, base: str, seed: int) -> None:
    """40% of requests fail one way or another and retries are few: saves and restores may
    fail, but only with a remoteckpt error naming the object, with no upload left behind,
    and whatever restores is byte-exact."""
    proxy.reset(seed=seed, slowdown=0.1, cut_request=0.1, cut_response=0.1, drop_response=0.1)
    options = via(proxy, retries={"max_attempts": 3, "mode": "standard"})
    outcomes = []
    for attempt in range(2):
        prefix = f"{base}/ck-{attempt}"
        try:
            bounded(lambda: remoteckpt.save(tensors(seed, small=True), prefix, storage_options=options))
            outcomes.append("saved")
        except remoteckpt.CheckpointError as exc:
            assert "s3://" in str(exc) and base.split("://")[1].split("/")[0] in str(exc), exc
            outcomes.append(f"save failed: {type(exc).__name__}")
        try:
            got = bounded(lambda: remoteckpt.load(prefix, storage_options=options))
        except remoteckpt.CheckpointError as exc:
            assert "s3://" in str(exc), exc
            outcomes.append(f"load failed: {type(exc).__name__}")
        else:
            assert_exact(got, expected(seed, small=True))
            outcomes.append("restored exact")
        assert pending_uploads(base) == [], outcomes
    assert proxy.faults_injected() >= 5, proxy.counters


# --- lost acknowledgements: the server acted, the client never heard --------------------------

@pytest.mark.parametrize("target", [
    pytest.param(("PUT", r"/ck\.index(\?|$)"), id="index-put"),
    pytest.param(("POST", r"/ck\.data-00000-of-00001\?uploadId="), id="complete-multipart"),
    pytest.param(("POST", r"/ck\.data-00000-of-00001\?uploads"), id="create-multipart"),
    pytest.param(("PUT", r"/ck\.data-00000-of-00001\?.*partNumber="), id="upload-part"),
    pytest.param(("PUT", r"/ck\.claim(\?|$)"), id="claim-put"),
])
def test_lost_acknowledgement_is_settled(proxy: FaultProxy, base: str, target: tuple[str, str]) -> None:
    """The response of one request is dropped after the server acted on it.  The retry meets
    the consequences (PreconditionFailed for a create-only PUT that landed, NoSuchUpload for
    a completed upload, a second upload for a re-sent create): the save still succeeds, and
    nothing is left behind."""
    method, path = target
    rule = proxy.add_rule(Rule("drop-response", method=method, path=path, times=1))
    save_and_restore(f"{base}/ck", via(proxy))
    assert rule.matched == 1, proxy.log
    assert pending_uploads(base) == []
    assert sorted(keys(base)) == ["ck.data-00000-of-00001", "ck.index"]


def test_failed_create_whose_first_attempt_landed_leaves_no_upload(proxy: FaultProxy, base: str) -> None:
    """CreateMultipartUpload: the first attempt creates an upload but its answer is lost,
    every retry fails: the save fails, and the upload nobody heard of is found and aborted."""
    proxy.add_rule(Rule("drop-response", method="POST", path=r"\?uploads", times=1))
    proxy.add_rule(Rule("cut-request", method="POST", path=r"\?uploads", times=20))
    with pytest.raises(remoteckpt.StorageError, match=r"ck\.data-00000-of-00001"):
        bounded(lambda: remoteckpt.save(tensors(), f"{base}/ck",
                                        storage_options=via(proxy, retries={"max_attempts": 2, "mode": "standard"})))
    assert pending_uploads(base) == []


def test_lost_acknowledgement_of_a_small_create_only_put(proxy: FaultProxy, base: str) -> None:
    """A data file small enough for one PUT (If-None-Match: *) whose response is lost."""
    rule = proxy.add_rule(Rule("drop-response", method="PUT", path=r"/ck\.data-00000-of-00001(\?|$)", times=1))
    prefix = f"{base}/ck"
    bounded(lambda: remoteckpt.save({"x": np.arange(5)}, prefix, storage_options=via(proxy)))
    assert rule.matched == 1
    np.testing.assert_array_equal(remoteckpt.load(prefix)["x"], np.arange(5))


def test_lost_acknowledgement_in_a_multiworker_saver(proxy: FaultProxy, base: str) -> None:
    """Two workers (threads here) with a Saver: the index commit's and the state file's
    responses are dropped; both workers return, the state file names the checkpoint."""
    proxy.add_rule(Rule("drop-response", method="PUT", path=r"/m-1\.index(\?|$)", times=1))
    proxy.add_rule(Rule("drop-response", method="PUT", path=r"/checkpoint(\?|$)", times=1))
    options = via(proxy)

    def worker(rank: int) -> list[str]:
        saver = remoteckpt.Saver(rank=rank, world_size=2, save_id="lost-ack", storage_options=options,
                                 options=remoteckpt.IOOptions(commit_timeout=60, poll_interval=0.02))
        for step in (0, 1):
            saver.save({f"w{rank}": np.full(100, step + rank, np.float32)}, f"{base}/m", global_step=step)
        return saver.last_checkpoints

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = [f.result(timeout=OP_BOUND) for f in [pool.submit(worker, r) for r in (0, 1)]]
    assert results[0] == results[1] == [f"{base}/m-0", f"{base}/m-1"]
    assert remoteckpt.latest_checkpoint(base) == f"{base}/m-1"
    np.testing.assert_array_equal(remoteckpt.load(f"{base}/m-1")["w1"], np.full(100, 2, np.float32))
    assert proxy.counters["drop-response"] == 2


# --- bounded waits ------------------------------------------------------------------------------

def test_a_stalled_request_times_out_and_is_retried(proxy: FaultProxy, base: str) -> None:
    prefix = f"{base}/ck"
    bounded(lambda: remoteckpt.save(tensors(), prefix, storage_options=via(proxy)))
    proxy.reset(stall_seconds=60)
    proxy.add_rule(Rule("stall", method="GET", path=r"/ck\.index(\?|$)", times=1))
    start = time.monotonic()
    got = bounded(lambda: remoteckpt.load(prefix, storage_options=via(proxy, read_timeout=1)), 30)
    assert_exact(got, expected())
    assert proxy.counters["stall"] == 1 and time.monotonic() - start < 30


@pytest.mark.slow
def test_a_dead_server_fails_clearly_and_in_bounded_time(proxy: FaultProxy, base: str) -> None:
    """Every request stalls: the error names the object, after the retries' bound."""
    proxy.reset(stall=1.0, stall_seconds=60)
    options = via(proxy, read_timeout=0.5, connect_timeout=0.5, retries={"max_attempts": 2, "mode": "standard"})
    start = time.monotonic()
    with pytest.raises(remoteckpt.StorageError, match=re.escape(f"{base}/ck")):
        bounded(lambda: remoteckpt.load(f"{base}/ck", storage_options=options), 30)
    with pytest.raises(remoteckpt.StorageError, match=re.escape(f"{base}/ck")):
        bounded(lambda: remoteckpt.save({"x": np.arange(3)}, f"{base}/ck", storage_options=options), 30)
    assert time.monotonic() - start < 30


def test_refused_connections_fail_clearly(base: str) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = {"endpoint_url": f"http://127.0.0.1:{port}",
               "config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}}}
    with pytest.raises(remoteckpt.StorageError, match="Could not connect|connect") as info:
        bounded(lambda: remoteckpt.save({"x": np.arange(3)}, f"{base}/ck", storage_options=options), 30)
    assert f"{base}/ck" in str(info.value)


def test_proxy_is_deterministic_by_seed(s3_server: SeaweedServer) -> None:
    """One seed, one sequence of decisions (what makes a failing soak run reproducible)."""
    decisions = []
    for _ in range(2):
        p = FaultProxy(s3_server.endpoint_url, seed=99, slowdown=0.2, cut_request=0.2, drop_response=0.2)
        decisions.append([p._decide("GET", "/x")[0] for _ in range(200)])
    assert decisions[0] == decisions[1] and set(decisions[0]) >= {None, "slowdown", "cut-request", "drop-response"}
    assert set(FAULTS) == {"slowdown", "cut-request", "cut-response", "drop-response", "stall", "conflict", "deny"}


def _unclosed_sessions_collected() -> list[str]:
    """Warnings of aiohttp sessions garbage-collected without being closed (a leak)."""
    import gc
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    return [str(w.message) for w in caught if "Unclosed" in str(w.message)]


def test_a_failed_open_releases_its_connections(proxy: FaultProxy, base: str) -> None:
    proxy.reset(stall=1.0, stall_seconds=60)
    options = via(proxy, read_timeout=0.5, retries={"max_attempts": 1, "mode": "standard"})
    _unclosed_sessions_collected()
    with pytest.raises(remoteckpt.StorageError):
        bounded(lambda: remoteckpt.CheckpointReader(f"{base}/ck", storage_options=options), 30)
    assert _unclosed_sessions_collected() == []
