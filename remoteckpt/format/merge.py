"""Merging per-worker index tables into one bundle index (TF's MergeBundles, made strict).

Worker ``r`` of ``n`` writes ``k`` data files and a table whose entries use local shard ids
``0..k-1``; in the merged index its shard ``s`` becomes ``r * k + s``, so the data files can be
named ``PREFIX.data-{r*k+s:05d}-of-{n*k:05d}`` from the start and never renamed.

    tables (rank order) ──> header: num_shards = sum, endianness and version all equal
                       └──> entries: plain keys must be unique across workers;
                            full-tensor entries of one sliced tensor are joined (slices
                            appended in rank order; dtype and shape must agree);
                            the joined boxes must not overlap.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import CorruptCheckpointError, InvalidTensorsError
from .bundle import BundleEntry, BundleHeader, BundleIndex, entry_shape
from .slices import box_from_proto


def merge_indexes(tables: Sequence[BundleIndex], *, shards_per_table: int = 1) -> BundleIndex:
    """One index over every table's entries (tables in rank order).  Raises
    `InvalidTensorsError` for duplicate names or overlapping boxes (naming tensor and ranks)."""
    if not tables:
        raise ValueError("nothing to merge")
    first = tables[0].header
    header = BundleHeader()
    header.CopyFrom(first)
    header.num_shards = 0
    merged = BundleIndex(header)
    owner: dict[bytes, int] = {}
    for rank, table in enumerate(tables):
        if table.header.endianness != first.endianness:
            raise CorruptCheckpointError(f"worker {rank}'s table has a different byte order")
        if table.header.version.SerializeToString(deterministic=True) != first.version.SerializeToString(deterministic=True):
            raise CorruptCheckpointError(f"worker {rank}'s table has a different format version")
        if table.header.num_shards != shards_per_table:
            raise CorruptCheckpointError(
                f"worker {rank}'s table has {table.header.num_shards} shards, expected {shards_per_table}")
        header.num_shards += table.header.num_shards
        base = rank * shards_per_table
        for key, entry in table.entries.items():
            existing = merged.entries.get(key)
            if existing is None:
                copy = BundleEntry()
                copy.CopyFrom(entry)
                copy.shard_id = base + entry.shard_id
                merged.entries[key] = copy
                owner[key] = rank
                continue
            if not (existing.slices and entry.slices):
                raise InvalidTensorsError(
                    f"tensor {_name(key)} is saved by worker {owner[key]} and worker {rank}")
            if existing.dtype != entry.dtype or entry_shape(existing) != entry_shape(entry):
                raise InvalidTensorsError(
                    f"slices of tensor {_name(key)} from worker {owner[key]} and worker {rank} "
                    "disagree on dtype or full shape")
            existing.slices.extend(entry.slices)
    for key, entry in merged.entries.items():
        if entry.slices:
            _check_disjoint(key, entry)
    return merged


def _check_disjoint(key: bytes, entry: BundleEntry) -> None:
    shape = entry_shape(entry)
    boxes = sorted((box_from_proto(s, shape) for s in entry.slices), key=lambda b: b.start)
    for i, a in enumerate(boxes):  # sorted by start: only later boxes starting before a's stop can overlap
        for b in boxes[i + 1 :]:
            if b.start[0] >= a.stop[0] if a.rank else False:
                break
            if a.intersect(b) is not None:
                raise InvalidTensorsError(f"slices of tensor {_name(key)} overlap: {a.spec()} and {b.spec()}")


def _name(key: bytes) -> str:
    return repr(key.decode("utf-8", "backslashreplace"))
