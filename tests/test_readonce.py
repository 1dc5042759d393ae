"""Read-once restores: a group of ranks fetches every unique byte range once
(`engine.share`, `engine.group`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import remoteckpt
from remoteckpt.engine.segment import layout
from remoteckpt.engine.share import fetched_bytes, pack, plan_sharing, unpack

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).parent))
from spawning import run_ranks  # noqa: E402

MiB = 2**20


# --- the plan (pure) ------------------------------------------------------------------------

def test_replicated_units_are_shared_out_in_blocks_balanced_across_ranks() -> None:
    units = [("f", i * MiB, MiB) for i in range(64)]
    transfers = plan_sharing([units] * 4, block=4 * MiB)
    assert [(t.offset, t.length) for t in transfers] == [(i * 4 * MiB, 4 * MiB) for i in range(16)]
    assert fetched_bytes(transfers, 4) == [16 * MiB] * 4
    assert all(t.receivers == tuple(r for r in range(4) if r != t.owner) for t in transfers)
    assert sorted(u for t in transfers for u in t.units) == units


def test_a_unit_is_fetched_by_a_rank_needing_it_and_hosts_are_balanced_first() -> None:
    mine = [("f", 0, 100)]
    shared = [("f", 100, 50), ("g", 0, 10)]
    transfers = plan_sharing([mine + shared, shared, [], shared], block=1000)
    owner = {(t.key, t.offset): (t.owner, t.receivers) for t in transfers}
    assert owner[("f", 0)] == (0, ())
    assert owner[("f", 100)][0] in (1, 3) and owner[("g", 0)][0] in (1, 3)
    # Ranks 0, 1 on host a, ranks 2, 3 on host b: four equal blocks go two to each host.
    units = [("f", i * 10, 10) for i in range(4)]
    transfers = plan_sharing([units] * 4, block=10, hosts=["a", "a", "b", "b"])
    assert sorted(t.owner for t in transfers) == [0, 1, 2, 3]
    transfers = plan_sharing([units] * 4, block=10, hosts=["a", "a", "a", "b"])
    assert sum(t.owner == 3 for t in transfers) == 2


def test_units_travel_as_runs_and_come_back_the_same() -> None:
    chunks = [("f", 100 + i * MiB, MiB) for i in range(5)] + [("f", 100 + 5 * MiB, 7)]  # a tensor's chunks
    wholes = [("f", 200 * MiB, 3), ("f", 200 * MiB + 3, 5), ("f", 200 * MiB + 8, 5)]  # small entries
    other = [("g", 0, 64 * 1024), ("g", 64 * 1024, 64 * 1024)]
    units = chunks + wholes + other
    runs = pack(units)
    assert runs[0] == ("f", 100, 5 * MiB + 7, MiB) and len(runs) == 4
    assert unpack(runs) == sorted(units)
    assert unpack(pack([])) == []


def test_a_host_segment_keeps_runs_contiguous_and_offsets_within_a_page() -> None:
    units = [("f", 4100 + i * 100, 100) for i in range(3)] + [("f", 9000, 10), ("g", 0, 5)]
    positions, size = layout(units)
    assert [positions[u] for u in units[:3]] == [4, 104, 204]  # one run, at 4100 % 4096
    assert positions[("f", 9000, 10)] == 4096 + 9000 % 4096
    assert positions[("g", 0, 5)] == 8192 and size == 8197


# --- ranks of a gloo group ------------------------------------------------------------------

def _ranges(log: list[tuple[str, str]], name: str) -> dict[str, list[tuple[int, int]]]:
    """Byte ranges [start, end) of every GET of the checkpoint's data files, per file."""
    out: dict[str, list[tuple[int, int]]] = {}
    for path, header in log:
        if f"/{name}.data-" in path:
            match = re.fullmatch(r"bytes=(\d+)-(\d+)", header)
            assert match, (path, header)
            out.setdefault(path, []).append((int(match[1]), int(match[2]) + 1))
    return out


@pytest.mark.parametrize("hosts", [None, ["a", "a", "b", "b"]], ids=["one-host", "two-hosts"])
def test_four_ranks_fetch_each_range_once(hosts: list[str] | None, tmp_path: Path, s3_server: Any,
                                          s3_prefix: str) -> None:
    """4 gloo ranks load a replicated checkpoint (and overlapping row boxes of it) through a
    counting proxy: the index is fetched once, no byte of a data file is fetched twice, every rank gets every value; a
    damaged chunk is caught by the rank that fetched it and raised on every rank.  On one
    host the ranks share the bytes through shared memory; as two hosts (of two ranks each),
    through gloo broadcasts and sends."""
    import readonce_workers as w
    from faultproxy import FaultProxy

    chunked = f"{s3_prefix}/chunked"
    whole = f"{s3_prefix}/whole"  # no chunk CRCs: whole entries are the units
    remoteckpt.save(w.state(), chunked)
    remoteckpt.save(w.state(), whole, options=remoteckpt.IOOptions(crc_chunk=0))
    damaged = str(tmp_path / "damaged")
    remoteckpt.save(w.state(), damaged)
    data = next(tmp_path.glob("damaged.data-*"))  # a byte of `big`'s second chunk
    with open(data, "r+b") as f:
        f.seek(MiB + 5)
        byte = f.read(1)
        f.seek(MiB + 5)
        f.write(bytes([byte[0] ^ 0xFF]))
    with FaultProxy(s3_server.endpoint_url) as whole_proxy, FaultProxy(s3_server.endpoint_url) as boxes_proxy:
        results = run_ranks(w.load_job, 4, tmp_path, [chunked, whole], whole_proxy.endpoint_url,
                            boxes_proxy.endpoint_url, damaged, hosts)
        whole_log, boxes_log = list(whole_proxy.ranges), list(boxes_proxy.ranges)
        whole_requests = list(whole_proxy.log)
    assert results == [[chunked, whole]] * 4
    for prefix in (chunked, whole):  # the group's rank 0 fetched the index, for all four
        index = prefix.rsplit("/", 1)[1] + ".index"
        assert sum(1 for method, target, _ in whole_requests
                   if method == "GET" and target.split("?")[0].endswith(index)) == 1, index
    state = w.state()
    size = sum(v.nbytes for v in state.values() if v.dtype.kind != "O")
    for prefix in (chunked, whole):
        name = prefix.rsplit("/", 1)[1]
        for log, bound in ((whole_log, size + 64), (boxes_log, state["wide"].nbytes + 64)):
            fetched = 0
            for path, spans in _ranges(log, name).items():
                spans.sort()
                assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), (path, spans)  # no byte twice
                fetched += sum(b - a for a, b in spans)
            # Every byte once for the group: the whole checkpoint (the string adds a few
            # bytes), or the rows of `wide` the ranks' boxes cover (the row boxes of 4 ranks
            # cover all 300 rows) and the string.
            assert size <= fetched <= bound if log is whole_log else 0 < fetched <= bound, (name, fetched, bound)


def test_dcp_load_with_a_process_group_fetches_each_range_once(tmp_path: Path, s3_server: Any,
                                                               s3_prefix: str) -> None:
    """dcp.load by 4 ranks with StorageReader(process_group=...): column slices every rank
    needs, row slices one rank needs, byte items and the metadata, each byte fetched once."""
    import readonce_workers as w
    from faultproxy import FaultProxy

    prefix = f"{s3_prefix}/dcp"
    with FaultProxy(s3_server.endpoint_url) as proxy:
        results = run_ranks(w.dcp_job, 4, tmp_path, prefix, proxy.endpoint_url)
        log = list(proxy.ranges)
    assert results == [prefix] * 4
    files = _ranges(log, "dcp")
    assert files
    with remoteckpt.CheckpointReader(prefix) as reader:
        stored = sum(e.size for e in reader.index.entries.values() if not e.slices)
    fetched = 0
    for path, spans in files.items():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), (path, spans)
        fetched += sum(b - a for a, b in spans)
    assert fetched <= stored, (fetched, stored)


# --- the host cache (no process group) ------------------------------------------------------

def _no_byte_twice(log: list[tuple[str, str]], name: str) -> int:
    """Bytes of the checkpoint's data files fetched, asserting that none was fetched twice."""
    fetched = 0
    for path, spans in _ranges(log, name).items():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), (path, spans)
        fetched += sum(b - a for a, b in spans)
    return fetched


def test_processes_on_one_host_share_one_download(tmp_path: Path, s3_server: Any, s3_prefix: str) -> None:
    """4 processes load one checkpoint at once through a host cache: each byte is fetched
    from storage once, by one of them; every process gets every value."""
    import readonce_workers as w
    from faultproxy import FaultProxy
    from spawning import run_together

    prefix = f"{s3_prefix}/cached"
    remoteckpt.save(w.state(), prefix)
    cache = tmp_path / "cache"
    with FaultProxy(s3_server.endpoint_url) as proxy:
        records = run_together(w.cache_job, [(prefix, proxy.endpoint_url, str(cache))] * 4, 180)
        log = list(proxy.ranges)
    assert records == [{"ok": True}] * 4
    size = sum(v.nbytes for v in w.state().values() if v.dtype.kind != "O")
    assert size <= _no_byte_twice(log, "cached") <= size + 64
    assert not list(cache.glob(".tmp-*"))


def test_a_damaged_cache_file_is_detected_and_fetched_again(tmp_path: Path, s3_server: Any,
                                                           s3_prefix: str) -> None:
    import readonce_workers as w
    from faultproxy import FaultProxy

    prefix = f"{s3_prefix}/damaged"
    remoteckpt.save(w.state(), prefix)
    cache = tmp_path / "cache"
    options = remoteckpt.IOOptions(host_cache=str(cache), coalesce_gap=0)
    expected = w.state()

    def data_ranges(log: list[tuple[str, str]]) -> list[tuple[int, int]]:
        return [r for spans in _ranges(log, "damaged").values() for r in spans]

    with FaultProxy(s3_server.endpoint_url) as proxy:
        opts = {"endpoint_url": proxy.endpoint_url}
        remoteckpt.load(prefix, storage_options=opts, options=options)
        files = sorted(p for p in cache.iterdir() if not p.name.startswith("."))
        assert len(files) >= 8  # 1 MiB chunks of `big` and `wide`, and the small entries
        before = len(proxy.ranges)
        # Served from the cache: no data file is read again.
        got = remoteckpt.load(prefix, storage_options=opts, options=options)
        assert all(np.array_equal(got[n], v) for n, v in expected.items() if v.dtype.kind != "O")
        assert not data_ranges(proxy.ranges[before:])
        # One file with a flipped byte, one cut short: both caught by their CRCs, fetched
        # again from storage (those two pieces only) and published again.
        big = [p for p in files if p.stat().st_size == MiB]
        damaged, cut = big[0], big[1]
        data = bytearray(damaged.read_bytes())
        data[12345] ^= 0x01
        damaged.write_bytes(bytes(data))
        cut.write_bytes(cut.read_bytes()[: MiB // 2])
        got = remoteckpt.load(prefix, storage_options=opts, options=options)
        refetched = data_ranges(proxy.ranges[before:])
    for name, value in expected.items():
        assert np.array_equal(got[name], value), name
    assert sum(b - a for a, b in refetched) == 2 * MiB, refetched
    assert damaged.stat().st_size == MiB and cut.stat().st_size == MiB
    assert bytes(data) != damaged.read_bytes()


def test_the_host_cache_is_trimmed_to_its_bound_least_recently_used_first(tmp_path: Path) -> None:
    import readonce_workers as w

    prefix = str(tmp_path / "ckpt")
    remoteckpt.save(w.state(), prefix)
    cache = tmp_path / "cache"
    options = remoteckpt.IOOptions(host_cache=str(cache), host_cache_bytes=3 * MiB)

    def cached() -> list[Path]:
        return [p for p in cache.iterdir() if not p.name.startswith(".")]

    got = remoteckpt.load(prefix, names=["big"], options=options)  # 3 chunks of 1 MiB: fits
    assert np.array_equal(got["big"], w.state()["big"])
    first = sorted(cached())
    assert len(first) == 3 and sum(p.stat().st_size for p in first) == 3 * MiB
    got = remoteckpt.load(prefix, names=["wide"], options=options)  # 4.7 MiB more: the oldest go
    assert np.array_equal(got["wide"], w.state()["wide"])
    assert sum(p.stat().st_size for p in cached()) <= 3 * MiB
    assert not set(first) & set(cached())


@pytest.mark.parametrize("hosts", [None, ["a", "a", "b", "b"]], ids=["one-host", "two-hosts"])
def test_a_group_read_stages_partial_boxes_in_memory_drawn_from_the_budget(
        hosts: list[str] | None, tmp_path: Path, s3_server: Any, s3_prefix: str) -> None:
    """4 gloo ranks read boxes that are staged whole (overlapping columns and rows of `wide`,
    a string entry): each rank draws its staging buffers (and room for one exchange buffer)
    from its memory budget before the bytes move, holds them while the staged parts are copied
    out, and gives them all back; under a 32 MiB budget the high-water mark stays within it.
    Under a 1 MiB budget the staging (4.7 MiB of columns alone) is larger than the whole
    budget: admitted alone, as any such request, and the read still completes exactly."""
    import readonce_workers as w

    prefix = f"{s3_prefix}/staged"
    remoteckpt.save(w.state(), prefix)
    roomy, tiny = 32 * MiB + 4096 * 7, MiB + 4096 * 7  # budgets of their own in each rank's process
    results = run_ranks(w.budget_job, 4, tmp_path, prefix, s3_server.endpoint_url, [roomy, tiny], hosts)
    for rank, (under_roomy, under_tiny) in enumerate(results):
        assert under_roomy["after"] == 0 and 0 < under_roomy["settling"] == under_roomy["peak"] <= roomy, (rank, under_roomy)
        assert under_tiny["after"] == 0 and tiny < under_tiny["settling"] == under_tiny["peak"], (rank, under_tiny)


def test_a_failed_cached_fetch_leaves_no_direct_fetch_running(tmp_path: Path) -> None:
    """When the cacheable pieces' fetch fails, the pieces fetched beside the cache (no check of
    their own) are cancelled before the error is raised: nothing writes into the caller's
    buffers after the read has failed."""
    import asyncio

    from remoteckpt.engine.hostcache import HostCache
    from remoteckpt.engine.ranges import Piece

    cache = HostCache(str(tmp_path / "cache"), 2**20)
    cached, direct = Piece("data", 0, 4, task=0, index=0), Piece("data", 4, 4, task=1, index=0)
    views = {(0, 0): memoryview(bytearray(4)), (1, 0): memoryview(bytearray(4))}
    late = asyncio.Event()

    async def fetch(pieces: list[Piece]) -> dict[tuple[int, int], int]:
        if pieces[0] is cached:
            raise remoteckpt.CheckpointError("the cacheable fetch failed")
        await asyncio.sleep(0.2)
        views[1, 0][:] = b"LATE"
        late.set()
        return {(1, 0): 0}

    async def go() -> None:
        with pytest.raises(remoteckpt.CheckpointError, match="cacheable fetch failed"):
            await cache.fetch([cached, direct], views, {(0, 0): 0}, lambda key: "v1", fetch, 2**20)
        await asyncio.sleep(0.4)

    asyncio.run(go())
    assert not late.is_set() and bytes(views[1, 0]) == bytes(4)


def test_transfers_cancelled_after_a_failed_one_fail_with_an_ordinary_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """When one of a rank's transfers fails, the others are cancelled; their futures then hold
    an ordinary `CheckpointError` (which the exchange catches, sends anyway and reports), never
    `CancelledError` (which would escape it and leave the receivers waiting)."""
    import asyncio
    import concurrent.futures

    from remoteckpt.engine import group
    from remoteckpt.engine.share import Transfer

    bad, slow = Transfer("data", 0, 4, 0, (1,), ()), Transfer("data", 4, 4, 0, (1,), ())

    async def fetch(checkpoint: Any, t: Transfer, needs: Any, target: Any) -> None:
        if t is bad:
            raise remoteckpt.CorruptCheckpointError("tensor 'w': checksum mismatch")
        await asyncio.sleep(5)

    monkeypatch.setattr(group, "_fetch_transfer", fetch)
    options = type("Checkpoint", (), {"_options": remoteckpt.IOOptions()})()
    ready = {(t.key, t.offset): concurrent.futures.Future[None]() for t in (bad, slow)}
    with pytest.raises(remoteckpt.CorruptCheckpointError):
        asyncio.run(group._fetch_owned(options, [bad, slow], None, ready, lambda u: None))  # type: ignore[arg-type]
    with pytest.raises(group.NotFetched, match="another transfer of this rank failed first"):
        ready["data", 4].result(timeout=0)
