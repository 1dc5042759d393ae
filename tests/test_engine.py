"""The engine's promises: async saves, ranged restores that move only the needed bytes,
caller-owned outputs, verified partial reads, bounded buffers."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import remoteckpt
from remoteckpt.api import save_checkpoint
from remoteckpt.engine import loop
from remoteckpt.engine.budget import MemoryBudget, process_budget
from remoteckpt.engine.ranges import Piece, ReadRequest, box_byte_runs, chunk_spans, coalesce, plan_reads, split
from remoteckpt.options import IOOptions
from remoteckpt.storage.base import ScatterResult

MiB = 2**20


@pytest.fixture(params=["local", "s3"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path) if request.param == "local" else request.getfixturevalue("s3_prefix")


class CountingReads:
    """Counts the bytes a reader's store is asked for (the real store still serves them)."""

    def __init__(self, reader: remoteckpt.CheckpointReader) -> None:
        self.bytes = 0
        self.requests = 0
        store = reader.store
        inner = store.read_scatter

        async def counted(key: str, start: int, targets: list[tuple[int, memoryview]], **kw: Any) -> ScatterResult:
            self.requests += 1
            self.bytes += max(o + len(v) for o, v in targets) - start
            return await inner(key, start, targets, **kw)

        store.read_scatter = counted  # type: ignore[method-assign]


def test_one_tensor_of_many_moves_only_its_bytes(base: str) -> None:
    tensors = {f"t{i:02d}": np.full((1024, 1024), i, dtype=np.float32) for i in range(16)}  # 64 MiB
    prefix = remoteckpt.save(tensors, f"{base}/big")
    reader = remoteckpt.CheckpointReader(prefix)
    counter = CountingReads(reader)
    np.testing.assert_array_equal(reader.get_tensor("t07"), tensors["t07"])
    assert counter.bytes == 4 * MiB  # exactly the tensor: no neighbours, no whole shard


def test_partial_box_reads_only_its_chunks(base: str) -> None:
    full = np.arange(4096 * 256, dtype=np.float32).reshape(4096, 256)  # 4 MiB, 1 MiB CRC chunks
    prefix = remoteckpt.save({"w": full}, f"{base}/rows")
    reader = remoteckpt.CheckpointReader(prefix)
    counter = CountingReads(reader)
    np.testing.assert_array_equal(reader.get_slice("w", (slice(1100, 1200),)), full[1100:1200])
    assert counter.bytes == 1 * MiB  # rows 1100..1200 lie in the second chunk only
    counter.bytes = 0
    np.testing.assert_array_equal(reader.get_slice("w", (slice(0, 4096), slice(3, 4))), full[:, 3:4])
    assert counter.bytes == 4 * MiB  # a column touches every chunk


def test_partial_reads_are_verified(tmp_path: Path) -> None:
    full = np.arange(4096 * 256, dtype=np.float32).reshape(4096, 256)
    prefix = remoteckpt.save({"w": full}, tmp_path / "ck")
    data = tmp_path / "ck.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[3 * MiB + 17] ^= 0x40  # damage the fourth chunk
    data.write_bytes(bytes(raw))
    reader = remoteckpt.CheckpointReader(prefix)
    np.testing.assert_array_equal(reader.get_slice("w", (slice(0, 1024),)), full[:1024])  # first chunk: fine
    with pytest.raises(remoteckpt.CorruptCheckpointError, match=r"'w'.*chunk 3"):
        reader.get_slice("w", (slice(3500, 3600),))
    with pytest.raises(remoteckpt.CorruptCheckpointError, match="'w'"):
        reader.get_tensor("w")


def test_tf_compatible_without_chunk_crcs(tmp_path: Path) -> None:
    """crc_chunk=0 writes TF's exact entries; partial reads then fetch the whole entry."""
    full = np.arange(2 * MiB, dtype=np.float32).reshape(2048, 1024)
    prefix = remoteckpt.save({"w": full}, tmp_path / "ck", options=IOOptions(crc_chunk=0))
    reader = remoteckpt.CheckpointReader(prefix)
    assert not reader.index.entries[b"w"].chunk_crc32c
    counter = CountingReads(reader)
    np.testing.assert_array_equal(reader.get_slice("w", (slice(10, 20),)), full[10:20])
    assert counter.bytes == full.nbytes


def test_load_into_caller_arrays(base: str) -> None:
    tensors = {"a": np.arange(12, dtype=np.float64).reshape(3, 4), "b": np.int32(5), "s": np.array([b"x"], object)}
    prefix = remoteckpt.save(tensors, f"{base}/out")
    out = {"a": np.zeros((3, 4)), "b": np.zeros((), np.int32)}
    got = remoteckpt.load(prefix, out=out)
    assert got["a"] is out["a"] and got["b"] is out["b"]
    np.testing.assert_array_equal(out["a"], tensors["a"])
    assert out["b"] == 5 and set(got) == {"a", "b"}
    with pytest.raises(remoteckpt.ShapeMismatchError, match=r"'a'.*float32\[4, 3\].*float64\[3, 4\]"):
        remoteckpt.load(prefix, out={"a": np.zeros((4, 3), np.float32)})


def test_save_async_snapshots_and_returns_early(base: str) -> None:
    weights = np.ones((512, 1024), np.float32)
    future = remoteckpt.save_async({"w": weights, "step": np.int64(1)}, f"{base}/async")
    weights[:] = 7  # the caller may change its arrays at once
    assert future.result(timeout=60) == f"{base}/async"
    np.testing.assert_array_equal(remoteckpt.load(f"{base}/async")["w"], np.ones((512, 1024), np.float32))


def _held_until(released: threading.Event) -> Callable[[remoteckpt.ProgressEvent], None]:
    """A progress callback that holds the save at its first event (before any data is written)
    until `released` is set: what the caller does meanwhile must not reach the checkpoint."""
    def hold(event: remoteckpt.ProgressEvent) -> None:
        released.wait(30)

    return hold


@pytest.mark.parametrize("kind", ["array", "slice", "slices"])
def test_save_async_snapshots_every_array_it_is_given(tmp_path: Path, kind: str) -> None:
    full = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
    arrays = [full[:3].copy(), full[3:].copy()]
    value: object = {"array": full, "slice": remoteckpt.Slice(arrays[0], (6, 4), (0, 0)),
                     "slices": [remoteckpt.Slice(arrays[0], (6, 4), (0, 0)),
                                remoteckpt.Slice(arrays[1], (6, 4), (3, 0))]}[kind]
    expected = {"array": full.copy(), "slice": full[:3].copy(), "slices": full.copy()}[kind]
    released = threading.Event()
    future = remoteckpt.save_async({"w": value}, tmp_path / "ck", progress=_held_until(released))
    full[:] = -1  # the caller changes its arrays while the save has not written a byte
    for array in arrays:
        array[:] = -1
    released.set()
    future.result(timeout=60)
    reader = remoteckpt.CheckpointReader(tmp_path / "ck")
    box = (slice(0, 3),) if kind == "slice" else ()
    np.testing.assert_array_equal(reader.get_slice("w", box), expected)


def test_save_async_errors_come_out_of_the_future(base: str) -> None:
    remoteckpt.save({"a": np.ones(1)}, f"{base}/taken")
    future = remoteckpt.save_async({"a": np.zeros(1)}, f"{base}/taken")
    with pytest.raises(remoteckpt.CheckpointExistsError):
        future.result(timeout=60)


def test_one_async_save_in_flight(tmp_path: Path) -> None:
    first = remoteckpt.save_async({"a": np.ones(8 * MiB, np.uint8)}, tmp_path / "one")
    second = remoteckpt.save_async({"a": np.ones(8, np.uint8)}, tmp_path / "two")
    assert first.done()  # the second call waited for the first to finish
    second.result(timeout=60)


def test_memory_budget_bounds_concurrent_holders() -> None:
    async def scenario() -> int:
        budget = MemoryBudget(10)
        active = 0
        peak = 0

        async def worker(n: int) -> None:
            nonlocal active, peak
            async with budget.hold(n):
                active += n
                peak = max(peak, active)
                await asyncio.sleep(0.01)
                active -= n

        await asyncio.wait_for(asyncio.gather(*(worker(4) for _ in range(8)), worker(25)),  # 25 > budget:
                               timeout=10)                                                 # admitted alone
        return peak

    assert loop.run(scenario()) == 25


def test_a_large_request_is_served_in_turn_not_starved() -> None:
    """First come, first served: a request that does not fit holds back the ones behind it,
    so it gets in (alone, being larger than the budget) once the holders are done."""
    async def scenario() -> list[str]:
        budget = MemoryBudget(10)
        order: list[str] = []

        async def take(name: str, n: int, hold: float) -> None:
            async with budget.hold(n):
                order.append(name)
                await asyncio.sleep(hold)

        first = asyncio.ensure_future(take("small-1", 6, 0.05))
        await asyncio.sleep(0)
        big = asyncio.ensure_future(take("big", 25, 0.01))
        await asyncio.sleep(0)
        later = [asyncio.ensure_future(take(f"small-{i}", 2, 0.01)) for i in (2, 3)]  # would fit beside small-1
        await asyncio.wait_for(asyncio.gather(first, big, *later), timeout=10)
        assert budget.used == 0 and budget.peak == 25
        return order

    assert loop.run(scenario()) == ["small-1", "big", "small-2", "small-3"]


def test_a_cancelled_wait_lets_the_next_one_in() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(10)
        await budget.acquire(8)
        blocked = asyncio.ensure_future(budget.acquire(5))  # at the head of the queue
        await asyncio.sleep(0)
        behind = asyncio.ensure_future(budget.acquire(2))  # fits, but waits its turn
        await asyncio.sleep(0)
        assert not behind.done()
        blocked.cancel()
        await asyncio.wait_for(behind, timeout=5)
        assert budget.used == 10
        budget.release_now(10)
        assert budget.used == 0

    loop.run(scenario())


def test_one_budget_per_process_and_size() -> None:
    async def scenario() -> None:
        assert process_budget(64 * MiB) is process_budget(64 * MiB)
        assert process_budget(64 * MiB) is not process_budget(32 * MiB)

    loop.run(scenario())


BOUND = 30.0
"""Seconds a budgeted save or read below may take: one that waits on budget nobody gives back
fails here instead of hanging."""


def bounded_save(tensors: dict[str, Any], prefix: Path, options: IOOptions) -> str:
    loop.run(asyncio.wait_for(save_checkpoint(tensors, str(prefix), options=options), BOUND))
    return str(prefix)


def bounded_slice(reader: remoteckpt.CheckpointReader, name: str, box: Any) -> np.ndarray:
    return loop.run(asyncio.wait_for(reader.read(name, box), BOUND))


def test_arrays_laid_out_otherwise_are_converted_in_blocks_as_they_are_written(tmp_path: Path) -> None:
    """Transposed, strided and big-endian arrays, written in 512 KiB blocks (a 1 MiB budget)
    that end inside rows: what is stored is their values, with TensorFlow's CRCs."""
    rng = np.random.default_rng(4)
    base = rng.standard_normal((1001, 777))
    tensors = {"transposed": base.T, "strided": base.astype(np.float32)[::2, 1::3],
               "big-endian": base.astype(">f8"), "big-endian-transposed": base.T.astype(">i4", order="F")}
    assert not any(a.flags.c_contiguous and a.dtype.byteorder != ">" for a in tensors.values())
    options = IOOptions(memory_budget=1 * MiB, crc_chunk=4096)
    prefix = bounded_save(tensors, tmp_path / "ck", options)
    loaded = remoteckpt.load(prefix)
    for name, array in tensors.items():
        np.testing.assert_array_equal(loaded[name], array)
        assert loaded[name].dtype == array.dtype.newbyteorder("=")
    tf_like = bounded_save(tensors, tmp_path / "tf", IOOptions(memory_budget=1 * MiB, crc_chunk=0))
    np.testing.assert_array_equal(remoteckpt.load(tf_like)["big-endian"], tensors["big-endian"])
    budget = loop.run(_budget_of(options))
    assert budget.used == 0 and 0 < budget.peak <= options.memory_budget


def tensorflow_style(directory: Path, array: np.ndarray) -> str:
    """`array` saved as TensorFlow saves it: one entry, one CRC, no chunk CRCs."""
    return remoteckpt.save({"t": array}, directory / "tf", options=IOOptions(crc_chunk=0))


def test_a_partial_read_streams_an_entry_without_chunk_crcs_within_the_budget(tmp_path: Path) -> None:
    """4 MiB in one CRC, read a few rows at a time under a 1 MiB budget: the entry streams
    through blocks (all of it, for the CRC), the budget's peak stays within it, and what was
    asked for comes back, from any rows, columns or both."""
    array = np.random.default_rng(1).standard_normal((1024, 1024)).astype(np.float32)
    prefix = tensorflow_style(tmp_path, array)
    options = IOOptions(memory_budget=1 * MiB)
    reader = remoteckpt.CheckpointReader(prefix, options=options)
    assert not reader.index.entries[b"t"].chunk_crc32c
    counting = CountingReads(reader)
    for box in [(slice(500, 503),), (slice(0, 1024), slice(7, 9)), (slice(1000, 1024), slice(1000, 1024))]:
        np.testing.assert_array_equal(bounded_slice(reader, "t", box), array[box])
    assert counting.bytes == 3 * array.nbytes  # every byte went through the CRC, each time
    budget = loop.run(_budget_of(options))
    assert budget.used == 0 and 0 < budget.peak <= options.memory_budget


async def _budget_of(options: IOOptions) -> MemoryBudget:
    return process_budget(options.memory_budget)


def test_concurrent_reads_share_the_process_budget(tmp_path: Path) -> None:
    array = np.arange(2**20, dtype=np.float32).reshape(1024, 1024)
    prefix = tensorflow_style(tmp_path, array)
    options = IOOptions(memory_budget=2 * MiB)
    readers = [remoteckpt.CheckpointReader(prefix, options=options) for _ in range(4)]

    async def together() -> list[np.ndarray]:
        reads = asyncio.gather(*(r.read("t", (slice(i, i + 1),)) for i, r in enumerate(readers)))
        return await asyncio.wait_for(reads, BOUND)

    for i, row in enumerate(loop.run(together())):
        np.testing.assert_array_equal(row, array[i : i + 1])
    budget = loop.run(_budget_of(options))
    assert budget.used == 0 and 0 < budget.peak <= options.memory_budget  # four reads of 4 MiB, 2 MiB in all


def test_reads_and_saves_give_their_budget_back_when_they_fail(tmp_path: Path) -> None:
    options = IOOptions(memory_budget=1 * MiB)
    array = np.ones((512, 1024), np.float32)
    prefix = tensorflow_style(tmp_path, array)
    data = tmp_path / "tf.data-00000-of-00001"
    damaged = bytearray(data.read_bytes())
    damaged[-5] ^= 1
    data.write_bytes(bytes(damaged))
    with pytest.raises(remoteckpt.CorruptCheckpointError):
        bounded_slice(remoteckpt.CheckpointReader(prefix, options=options), "t", (slice(0, 1),))

    class Refusing(Exception):
        pass

    def refuse(*_: Any) -> None:
        raise Refusing("no")

    transposed = np.ones((1024, 1024), np.float32).T
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("remoteckpt.storage.local.LocalWriter.write", lambda *a: refuse())
        with pytest.raises(Refusing):
            bounded_save({"t": transposed}, tmp_path / "fails", options)
    budget = loop.run(_budget_of(options))
    assert budget.used == 0
    bounded_save({"t": transposed}, tmp_path / "ok", options)  # not held back by anything left
    np.testing.assert_array_equal(remoteckpt.load(tmp_path / "ok")["t"], transposed)
    assert budget.used == 0 and budget.peak <= options.memory_budget


def test_planner_splits_and_coalesces() -> None:
    requests = [ReadRequest("f", 0, 10, 0), ReadRequest("f", 12, 10, 1), ReadRequest("f", 100, 30, 2),
                ReadRequest("g", 0, 5, 3)]
    ops = plan_reads(requests, chunk=16, gap=4)  # 0..10 and 12..22 would exceed 16 together
    assert [(op.key, op.start, op.length) for op in ops] == [
        ("f", 0, 10), ("f", 12, 10), ("f", 100, 16), ("f", 116, 14), ("g", 0, 5)]
    ops = plan_reads(requests, chunk=32, gap=4)  # now they merge; the 2-byte hole is skipped
    assert [(op.start, op.length, len(op.pieces)) for op in ops][:2] == [(0, 22, 2), (100, 30, 1)]
    assert [p.index for p in split([ReadRequest("f", 0, 40, 7)], 16)] == [0, 1, 2]
    assert coalesce([Piece("f", 0, 4, 0, 0), Piece("f", 2, 4, 1, 0)], gap=10, max_length=100)[1].start == 2


def test_pieces_of_different_files_are_never_coalesced() -> None:
    """Sorted by (file, offset), the first piece of the next file may follow the last of this one
    within the gap: it still needs a request of its own."""
    pieces = [Piece("data-0", 0, 10, 0, 0), Piece("data-1", 12, 10, 1, 0), Piece("data-1", 24, 10, 2, 0)]
    ops = coalesce(pieces, gap=100, max_length=1000)
    assert [(op.key, op.start, op.length, len(op.pieces)) for op in ops] == [("data-0", 0, 10, 1), ("data-1", 12, 22, 2)]


def test_box_runs_cover_every_row_of_a_box() -> None:
    outer = (4, 5, 6)
    runs = box_byte_runs(outer, (1, 2, 1), (2, 3, 4), 2)
    assert runs is not None and len(runs) == 2 * 3
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(outer)
    raw = array.tobytes()
    got = b"".join(raw[o : o + n] for o, n in runs)
    assert got == np.ascontiguousarray(array[1:3, 2:5, 1:5]).tobytes()
    assert box_byte_runs(outer, (0, 0, 0), outer, 2) == [(0, array.nbytes)]
    assert box_byte_runs(outer, (2, 0, 0), (1, 5, 6), 2) == [(2 * 5 * 6 * 2, 5 * 6 * 2)]


def test_an_object_shrinking_under_an_open_reader_is_reported(base: str) -> None:
    """A data file replaced by a shorter one under an open reader: the reader's reads are
    pinned to the version its first read met, so it says the checkpoint changed (naming it);
    and the fetch itself reports bytes missing from an object as lying outside it, naming
    tensor, file and the object's size as the answer stated it (a file cut in place, or a
    read with no version pinned)."""
    from remoteckpt.engine.fetch import execute
    from remoteckpt.engine.ranges import Piece, coalesce
    from remoteckpt.storage import on_store

    prefix = remoteckpt.save({"a": np.arange(10, dtype=np.float32), "b": np.arange(1000, dtype=np.float64)},
                             f"{base}/ck")
    reader = remoteckpt.CheckpointReader(prefix)
    np.testing.assert_array_equal(reader.get_tensor("a"), np.arange(10, dtype=np.float32))
    data_key = "ck.data-00000-of-00001"

    async def shrink(store: object) -> int:
        data = await store.get(data_key)  # type: ignore[attr-defined]
        await store.put(data_key, data[:-100])  # type: ignore[attr-defined]
        return len(data)

    size = on_store(base, shrink)
    with pytest.raises(remoteckpt.CheckpointChangedError, match=r"ck was replaced or deleted while it was being read"):
        reader.get_tensor("b")
    reader.close()

    async def fetch_past_the_end(store: object) -> None:
        target = memoryview(bytearray(200))
        pieces = [Piece(data_key, size - 200, 200, 0, 0)]
        await execute(store, coalesce(pieces, gap=0, max_length=2**20), {(0, 0): target},  # type: ignore[arg-type]
                      max_concurrency=1, describe=lambda piece: "tensor 'b' in ck")

    with pytest.raises(remoteckpt.CorruptCheckpointError,
                       match=rf"'b'.*bytes {size - 200}\.\.{size} lie outside .*ck\.data-00000-of-00001 \({size - 100} bytes\)"):
        on_store(base, fetch_past_the_end)


def test_box_runs_and_chunk_spans() -> None:
    assert box_byte_runs((4, 6), (1, 0), (2, 6), 4) == [(24, 48)]
    assert box_byte_runs((4, 6), (0, 2), (2, 2), 4) == [(8, 8), (32, 8)]
    assert chunk_spans([(8, 8), (4000, 200)], 4096, 10000) == [(0, 8192)]
    assert chunk_spans([(9000, 10)], 4096, 10000) == [(8192, 1808)]


def test_concurrent_saves_of_one_prefix_one_wins(base: str) -> None:
    """Two savers racing for one prefix: exactly one commits, the other gets a clear error,
    and the committed checkpoint is whole (its data was not overwritten by the loser)."""
    import concurrent.futures

    big = {f"t{i}": np.full(2**20, i, np.float32) for i in range(8)}
    other = {f"t{i}": np.full(2**20, 100 + i, np.float32) for i in range(8)}
    prefix = f"{base}/race"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(remoteckpt.save, big, prefix), pool.submit(remoteckpt.save, other, prefix)]
        outcomes = [f.exception() for f in futures]
    winners = [i for i, e in enumerate(outcomes) if e is None]
    assert len(winners) == 1, outcomes
    loser = outcomes[1 - winners[0]]
    assert isinstance(loser, remoteckpt.CheckpointExistsError), loser
    expected = (big, other)[winners[0]]
    got = remoteckpt.load(prefix)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value)


def test_orphaned_data_of_a_crashed_save(tmp_path: Path) -> None:
    """A data file without its index, under no live claim, is a dead save's: the next save
    clears it, whatever its age (the claim, not a file's time, says whether a save runs)."""
    (tmp_path / "ck.data-00000-of-00001").write_bytes(b"half a save")
    (tmp_path / "ck.data-00003-of-00004").write_bytes(b"a larger world's")
    remoteckpt.save({"a": np.ones(2)}, tmp_path / "ck")
    np.testing.assert_array_equal(remoteckpt.load(tmp_path / "ck")["a"], np.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.data-00000-of-00001", "ck.index"]


def test_whole_tensors_are_read_straight_into_the_output(tmp_path: Path) -> None:
    """A whole stored entry lands in the result array itself: no temporary buffer, no copy."""
    prefix = remoteckpt.save({"w": np.ones((1024, 1024), np.float32)}, tmp_path / "ck")
    reader = remoteckpt.CheckpointReader(prefix)
    addresses: list[int] = []
    inner = reader.store.read_scatter

    async def spy(key: str, start: int, targets: list[tuple[int, memoryview]], **kw: Any) -> ScatterResult:
        addresses.extend(np.frombuffer(v, np.uint8).ctypes.data for _, v in targets)
        return await inner(key, start, targets, **kw)

    reader.store.read_scatter = spy  # type: ignore[method-assign]
    target = np.zeros((1024, 1024), np.float32)
    got = remoteckpt.load(prefix, out={"w": target})["w"]  # a fresh reader: spy on this one instead
    assert got is target and (target == 1).all()
    target[:] = 0
    loop.run(reader.read("w", out=target))
    assert (target == 1).all() and addresses
    low, high = target.ctypes.data, target.ctypes.data + target.nbytes
    assert all(low <= a < high for a in addresses)


def test_local_writes_start_writeback_of_what_they_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block from MIN_RANGE on has its writeback started at its own offset (so the
    commit's fsync waits for the tail only); small writes are left to that fsync."""
    from remoteckpt.storage import local, open_store, writeback

    started: list[tuple[int, int]] = []
    monkeypatch.setattr(writeback, "available", True)
    monkeypatch.setattr(writeback, "start", lambda fd, offset, length: started.append((offset, length)))
    big, small = writeback.MIN_RANGE, 10

    async def go() -> None:
        store = open_store(str(tmp_path))
        async with store.writer("f") as w:
            for size in (big, small, 2 * big, small):
                await w.write(b"x" * size)
        await store.close()

    loop.run(go())
    assert isinstance(open_store(str(tmp_path)), local.LocalStore)
    assert started == [(0, big), (big + small, 2 * big)]
    assert (tmp_path / "f").stat().st_size == 3 * big + 2 * small
    if sys.platform.startswith("linux"):
        assert writeback._sync_file_range is not None  # the real call is found where it exists


@pytest.mark.parametrize("crc_chunk", [640 * 1024, 0, 4 * 2**20])
def test_a_local_save_checksumming_as_it_writes_lays_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    crc_chunk: int) -> None:
    """A local file checksums each chunk as it writes it, in blocks of `CHECKED_BLOCK`
    (`write_checked`); across several blocks, a short tail and a block smaller than a chunk,
    its index and data file are byte for byte those of a store checksummed a block ahead
    (an in-memory one), and read back verified."""
    from remoteckpt.engine import write

    monkeypatch.setattr(write, "CHECKED_BLOCK", 3 * 2**20)  # several blocks per tensor
    rng = np.random.default_rng(5)
    tensors = {
        "blocks_and_tail": rng.integers(0, 255, 2 * 3 * 2**20 + 100, dtype=np.uint8),
        "small_tail": rng.integers(0, 255, 3 * 2**20 + 512 * 1024, dtype=np.uint8),
        "one_block": rng.standard_normal(3 * 2**20 // 4).astype(np.float32),
        "tiny": np.arange(10, dtype=np.int64),
    }
    options = IOOptions(crc_chunk=crc_chunk)
    local = str(tmp_path / "model.ckpt")
    remoteckpt.save(tensors, local, options=options)
    memory = f"memory://checked-{crc_chunk}/model.ckpt"
    remoteckpt.save(tensors, memory, options=options)
    import fsspec

    fs = fsspec.filesystem("memory")
    for suffix in (".index", ".data-00000-of-00001"):
        with open(local + suffix, "rb") as f:
            assert f.read() == fs.cat_file(memory[len("memory://"):] + suffix), suffix
    for name, value in remoteckpt.load(local).items():
        np.testing.assert_array_equal(value, tensors[name])
