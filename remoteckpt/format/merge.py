"""Merging per-worker index tables into one bundle index (TF's MergeBundles, made strict).

Worker ``r`` of ``n`` writes ``k`` data files and a table whose entries use local shard ids
``0..k-1``; in the merged index its shard ``s`` becomes ``r * k + s``, so the data files can be
named ``PREFIX.data-{r*k+s:05d}-of-{n*k:05d}`` from the start and never renamed.

    tables (rank order) ──> header: num_shards = sum, endianness and version all equal
                       └──> entries: plain keys must be unique across workers;
                            full-tensor entries of one sliced tensor are joined (slices
                            appended in rank order; dtype and shape must agree);
                            the joined boxes must not overlap (`overlap`, once per tensor).

A million slices merge in a few seconds: entries move from the tables into the merged index
(no copy), names shared between tables are found by one set intersection per table, the
slices of a joined tensor are appended as encoded bytes in one parse, and those same bytes
are decoded into the boxes the overlap check works on.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import CorruptCheckpointError, InvalidTensorsError
from .bundle import SLICES_TAG, BundleEntry, BundleHeader, BundleIndex, entry_boxes, entry_shape, slices_wire
from .overlap import find_overlap


def merge_indexes(tables: Sequence[BundleIndex], *, shards_per_table: int = 1) -> BundleIndex:
    """One index over every table's entries (tables in rank order).  Raises
    `InvalidTensorsError` for duplicate names or overlapping boxes (naming tensor and ranks).
    The tables' entries are moved into the result (shard ids rewritten in place): the tables
    are not to be used afterwards."""
    if not tables:
        raise ValueError("nothing to merge")
    first = tables[0].header
    header = BundleHeader()
    header.CopyFrom(first)
    header.num_shards = 0
    merged = BundleIndex(header)
    joined: dict[bytes, list[BundleEntry]] = {}  # sliced tensors saved by several workers
    for rank, table in enumerate(tables):
        if table.header.endianness != first.endianness:
            raise CorruptCheckpointError(f"worker {rank}'s table has a different byte order")
        if (table.header.version.SerializeToString(deterministic=True)
                != first.version.SerializeToString(deterministic=True)):
            raise CorruptCheckpointError(f"worker {rank}'s table has a different format version")
        if table.header.num_shards != shards_per_table:
            raise CorruptCheckpointError(
                f"worker {rank}'s table has {table.header.num_shards} shards, expected {shards_per_table}")
        header.num_shards += table.header.num_shards
        shared = table.entries.keys() & merged.entries.keys()
        for key in sorted(shared):
            existing, entry = merged.entries[key], table.entries[key]
            if not (existing.slices and entry.slices):
                raise InvalidTensorsError(
                    f"tensor {_name(key)} is saved by worker {_owner(tables, key)} and worker {rank}")
            if existing.dtype != entry.dtype or entry_shape(existing) != entry_shape(entry):
                raise InvalidTensorsError(
                    f"slices of tensor {_name(key)} from worker {_owner(tables, key)} and worker {rank} "
                    "disagree on dtype or full shape")
            joined.setdefault(key, [existing]).append(entry)
        base = rank * shards_per_table
        if base:
            for entry in table.entries.values():
                entry.shard_id = base + entry.shard_id
        kept = {key: merged.entries[key] for key in shared}  # the joined entries stay
        merged.entries.update(table.entries)
        merged.entries.update(kept)
    wires = {key: _join(parts) for key, parts in joined.items()}
    for key, entry in merged.entries.items():
        if entry.slices:
            _check_disjoint(key, entry, wires.get(key))
    return merged


def _join(parts: list[BundleEntry]) -> bytes | None:
    """Append the slices of `parts[1:]` to `parts[0]`; return all of them encoded, if every
    part's slices could be cut from its encoding (else they are appended one by one)."""
    wires = [w for w in (slices_wire(p) for p in parts) if w is not None]
    if len(wires) == len(parts):
        parts[0].MergeFromString(b"".join(wires[1:]))  # appends: slices are the only field in these bytes
        return b"".join(wires)
    for part in parts[1:]:
        parts[0].slices.extend(part.slices)
    return None


def _check_disjoint(key: bytes, entry: BundleEntry, wire: bytes | None) -> None:
    boxes = entry_boxes(entry, wire)
    found = find_overlap(boxes.start, boxes.stop)
    if found is not None:
        a, b = (boxes.box(i) for i in found)
        raise InvalidTensorsError(f"slices of tensor {_name(key)} overlap: {a.spec()} and {b.spec()}")


def _owner(tables: Sequence[BundleIndex], key: bytes) -> int:
    return next(rank for rank, table in enumerate(tables) if key in table.entries)


def _name(key: bytes) -> str:
    return repr(key.decode("utf-8", "backslashreplace"))


__all__ = ["merge_indexes", "SLICES_TAG"]
