"""Merging the workers' tables into one index (`format.merge`), and what a multi-worker save
does with tables that cannot form one checkpoint: refused at save time, naming tensor and
workers, before anything is committed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import remoteckpt
from remoteckpt import CheckpointError, CorruptCheckpointError, InvalidTensorsError, IOOptions, Slice
from remoteckpt.api import save_checkpoint
from remoteckpt.engine import loop
from remoteckpt.engine.plan import plan_bundle
from remoteckpt.format.bundle import BundleHeader, BundleIndex, make_header
from remoteckpt.format.merge import merge_indexes
from remoteckpt.format.slices import box_from_proto, slice_key

FAST = IOOptions(commit_timeout=10.0, poll_interval=0.01)
FULL = (10, 6)


def table(tensors: dict[str, Any], *, shards: int = 1, header: BundleHeader | None = None) -> BundleIndex:
    """A worker's table: its entries, shard ids local to the worker."""
    return BundleIndex(header or make_header(shards), plan_bundle(tensors, checksum=True).entries)


def rows(start: int, stop: int, name: str = "w") -> dict[str, Slice]:
    return {name: Slice(np.full((stop - start, FULL[1]), start, np.float32), FULL, (start, 0))}


def boxes(index: BundleIndex, name: bytes = b"w") -> list[str]:
    entry = index.entries[name]
    return [box_from_proto(s, FULL).spec() for s in entry.slices]


# --- overlap -------------------------------------------------------------------------------------


@pytest.mark.parametrize("first,second", [((0, 5), (4, 10)), ((4, 10), (0, 5)), ((0, 9), (8, 10)),
                                          ((3, 4), (0, 9)), ((0, 6), (2, 4))])
def test_boxes_overlapping_by_one_row_are_refused(first: tuple[int, int], second: tuple[int, int]) -> None:
    with pytest.raises(InvalidTensorsError, match=r"slices of tensor 'w' overlap"):
        merge_indexes([table(rows(*first)), table(rows(*second))])


def test_the_same_box_from_two_workers_is_refused() -> None:
    with pytest.raises(InvalidTensorsError):
        merge_indexes([table(rows(0, 5)), table(rows(0, 5))])


def test_overlap_is_found_past_boxes_that_do_not_overlap() -> None:
    """Rows [0,4) and [4,6) touch; [5,10) overlaps the second by one row, not the first."""
    with pytest.raises(InvalidTensorsError, match="overlap"):
        merge_indexes([table(rows(0, 4)), table(rows(4, 6)), table(rows(5, 10))])


def test_boxes_overlapping_in_a_later_dimension_only_are_refused() -> None:
    left = {"w": Slice(np.ones((10, 3), np.float32), FULL, (0, 0))}
    right = {"w": Slice(np.ones((10, 4), np.float32), FULL, (0, 2))}
    with pytest.raises(InvalidTensorsError, match="overlap"):
        merge_indexes([table(left), table(right)])


def test_touching_boxes_merge_into_one_tensor() -> None:
    merged = merge_indexes([table(rows(0, 4)), table(rows(4, 7)), table(rows(7, 10))])
    assert merged.num_shards == 3
    assert boxes(merged) == ["0,4:-", "4,3:-", "7,3:-"]
    for rank, (start, stop) in enumerate([(0, 4), (4, 7), (7, 10)]):
        box = box_from_proto(merged.entries[b"w"].slices[rank], FULL)
        assert merged.entries[slice_key(b"w", box)].shard_id == rank
        assert (box.start[0], box.stop[0]) == (start, stop)


def test_column_blocks_merge() -> None:
    left = {"w": Slice(np.ones((10, 2), np.float32), FULL, (0, 0))}
    right = {"w": Slice(np.ones((10, 4), np.float32), FULL, (0, 2))}
    assert boxes(merge_indexes([table(left), table(right)])) == ["-:0,2", "-:2,4"]


# --- names, dtypes, shapes, headers ----------------------------------------------------------------


def test_the_same_plain_name_from_two_workers_is_refused_naming_both() -> None:
    tables = [table({"a": np.ones(2)}), table({"b": np.ones(2), "step": np.int64(1)}),
              table({"step": np.int64(2)})]
    with pytest.raises(InvalidTensorsError, match=r"tensor 'step' is saved by worker 1 and worker 2"):
        merge_indexes(tables)


def test_a_plain_tensor_and_boxes_of_one_name_are_refused() -> None:
    with pytest.raises(InvalidTensorsError, match=r"'w' is saved by worker 0 and worker 1"):
        merge_indexes([table({"w": np.ones(FULL, np.float32)}), table(rows(0, 5))])
    with pytest.raises(InvalidTensorsError, match=r"'w' is saved by worker 0 and worker 1"):
        merge_indexes([table(rows(0, 5)), table({"w": np.ones(FULL, np.float32)})])


def test_boxes_disagreeing_on_dtype_or_full_shape_are_refused() -> None:
    other_dtype = {"w": Slice(np.ones((5, 6), np.float64), FULL, (5, 0))}
    with pytest.raises(InvalidTensorsError, match=r"'w' from worker 0 and worker 1 disagree on dtype or full shape"):
        merge_indexes([table(rows(0, 5)), table(other_dtype)])
    other_shape = {"w": Slice(np.ones((5, 6), np.float32), (11, 6), (5, 0))}
    with pytest.raises(InvalidTensorsError, match="disagree on dtype or full shape"):
        merge_indexes([table(rows(0, 5)), table(other_shape)])


def test_tables_of_another_version_byte_order_or_shard_count_are_refused() -> None:
    newer = make_header(1)
    newer.version.min_consumer = 1
    with pytest.raises(CorruptCheckpointError, match="worker 1's table has a different format version"):
        merge_indexes([table({"a": np.ones(1)}), table({"b": np.ones(1)}, header=newer)])
    big = make_header(1)
    big.endianness = BundleHeader.BIG
    with pytest.raises(CorruptCheckpointError, match="worker 1's table has a different byte order"):
        merge_indexes([table({"a": np.ones(1)}), table({"b": np.ones(1)}, header=big)])
    for shards in (0, 2):
        with pytest.raises(CorruptCheckpointError, match=f"worker 1's table has {shards} shards, expected 1"):
            merge_indexes([table({"a": np.ones(1)}), table({"b": np.ones(1)}, header=make_header(shards))])


def test_shard_ids_become_global() -> None:
    tables = [table({"a": np.ones(1)}, shards=2), table({"b": np.ones(1)}, shards=2)]
    tables[1].entries[b"b"].shard_id = 1  # the worker's second data file
    merged = merge_indexes(tables, shards_per_table=2)
    assert merged.num_shards == 4
    assert merged.entries[b"a"].shard_id == 0 and merged.entries[b"b"].shard_id == 3
    assert merged.header.version.producer == 1 and merged.header.endianness == BundleHeader.LITTLE


# --- through a real 2-worker save ---------------------------------------------------------------------


def save_two(prefix: str, zero: dict[str, Any], one: dict[str, Any]) -> list[Any]:
    async def both() -> list[Any]:
        return await asyncio.gather(
            save_checkpoint(zero, prefix, rank=0, world_size=2, save_id="merge-test", options=FAST),
            save_checkpoint(one, prefix, rank=1, world_size=2, save_id="merge-test", options=FAST),
            return_exceptions=True)

    return loop.run(both())


def test_a_two_worker_save_of_overlapping_slices_fails_at_save_time(tmp_path: Path) -> None:
    coordinator, worker = save_two(str(tmp_path / "ck"), rows(0, 5), rows(4, 10))
    assert isinstance(coordinator, InvalidTensorsError) and "overlap" in str(coordinator), coordinator
    assert isinstance(worker, CheckpointError), worker
    assert not (tmp_path / "ck.index").exists()  # nothing committed


def test_a_two_worker_save_of_one_name_fails_naming_both_workers(tmp_path: Path) -> None:
    coordinator, worker = save_two(str(tmp_path / "ck"), {"step": np.int64(1)}, {"step": np.int64(2)})
    assert isinstance(coordinator, InvalidTensorsError), coordinator
    assert "tensor 'step' is saved by worker 0 and worker 1" in str(coordinator)
    assert isinstance(worker, CheckpointError), worker
    assert not (tmp_path / "ck.index").exists()


def test_a_two_worker_save_of_touching_slices_reads_back_whole(tmp_path: Path) -> None:
    prefix = str(tmp_path / "ck")
    outcomes = save_two(prefix, {**rows(0, 5), "a": np.arange(3)}, {**rows(5, 10), "b": np.arange(4.0)})
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    reader = remoteckpt.CheckpointReader(prefix)
    assert reader.index.num_shards == 2
    expected = np.repeat(np.array([0, 0, 0, 0, 0, 5, 5, 5, 5, 5], np.float32)[:, None], FULL[1], axis=1)
    np.testing.assert_array_equal(reader.get_tensor("w"), expected)
    np.testing.assert_array_equal(reader.get_tensor("a"), np.arange(3))
    np.testing.assert_array_equal(reader.get_tensor("b"), np.arange(4.0))
