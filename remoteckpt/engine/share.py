"""Which rank of a group fetches which bytes: a pure planner, separate from the executor
(`engine.group`).

Every rank of a group loading together states the units it needs: ``(file, offset,
length)`` byte ranges, each verifiable alone against the index (one CRC chunk, or a whole
entry without chunk CRCs).  Given every rank's units (and optionally each rank's host):

    units       the union, each with the set of ranks needing it
        │ group: neighbours in one file, contiguous, needed by the same ranks, up to
        │        `block` bytes (a unit larger than that is a block alone)
        ▼
    blocks      (file, offset, length, needers)
        │ own:   largest first, each to the least loaded host among its needers' hosts,
        │        then the least loaded needer on that host (bytes balanced across hosts,
        │        then across ranks; never a rank that does not need the bytes)
        ▼
    Transfer    (file, offset, length, owner, receivers), in file order

The owner fetches a transfer's bytes from storage, verifies them and sends them to its
receivers; every rank computes the same plan from the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Unit = tuple[str, int, int]
"""``(file, offset, length)``: bytes of one data file, verifiable alone."""


@dataclass(frozen=True)
class Transfer:
    """Bytes ``[offset, offset + length)`` of `key`: fetched by `owner` (a rank of the
    group), sent to `receivers` (the other ranks needing them, ascending), made of `units`."""

    key: str
    offset: int
    length: int
    owner: int
    receivers: tuple[int, ...]
    units: tuple[Unit, ...]

    @property
    def end(self) -> int:
        return self.offset + self.length


def plan_sharing(needs: Sequence[Sequence[Unit]], *, block: int,
                 hosts: Sequence[str] | None = None) -> list[Transfer]:
    """The transfers that deliver every rank's `needs` (``needs[r]``: rank r's units), each
    unique unit fetched by exactly one rank; see the module docstring.  Units must not
    overlap unless equal (the read planner's units never do: chunks and entries of one
    index)."""
    needers: dict[Unit, set[int]] = {}
    for rank, units in enumerate(needs):
        for unit in units:
            needers.setdefault(unit, set()).add(rank)
    blocks: list[tuple[str, int, int, frozenset[int], list[Unit]]] = []
    for unit in sorted(needers):
        key, offset, length = unit
        who = frozenset(needers[unit])
        if blocks:
            b_key, b_offset, b_length, b_who, b_units = blocks[-1]
            if (b_key == key and b_offset + b_length == offset and b_who == who
                    and b_length + length <= block):
                blocks[-1] = (b_key, b_offset, b_length + length, b_who, [*b_units, unit])
                continue
        blocks.append((key, offset, length, who, [unit]))
    rank_load = [0] * len(needs)
    host_of = list(hosts) if hosts is not None else [""] * len(needs)
    host_load = dict.fromkeys(host_of, 0)
    owners: dict[tuple[str, int], int] = {}
    for key, offset, length, who, _ in sorted(blocks, key=lambda b: (-b[2], b[0], b[1])):
        host = min({host_of[r] for r in who}, key=lambda h: (host_load[h], h))
        owner = min((r for r in who if host_of[r] == host), key=lambda r: (rank_load[r], r))
        owners[key, offset] = owner
        rank_load[owner] += length
        host_load[host] += length
    return [Transfer(key, offset, length, owners[key, offset], tuple(sorted(who - {owners[key, offset]})),
                     tuple(units))
            for key, offset, length, who, units in blocks]


Run = tuple[str, int, int, int]
"""``(file, offset, length, step)``: the units of `step` bytes from `offset` on, the last one
shorter if `length` is not a multiple of `step`.  How a rank's units travel to the others:
a tensor's chunks are one run, not one tuple each."""


def pack(units: Sequence[Unit]) -> list[Run]:
    """`units` (sorted, without duplicates) as runs; `unpack` gives them back."""
    runs: list[Run] = []
    last = 0  # length of the last unit of the last run
    for key, offset, length in sorted(set(units)):
        if runs:
            r_key, r_offset, r_length, step = runs[-1]
            if r_key == key and r_offset + r_length == offset and last == step and length <= step:
                runs[-1] = (r_key, r_offset, r_length + length, step)
                last = length
                continue
        runs.append((key, offset, length, length))
        last = length
    return runs


def unpack(runs: Sequence[Run]) -> list[Unit]:
    return [(key, start, min(step, offset + length - start))
            for key, offset, length, step in runs for start in range(offset, offset + length, step)]


def fetched_bytes(transfers: Sequence[Transfer], size: int) -> list[int]:
    """Bytes each of the `size` ranks fetches from storage under the plan."""
    out = [0] * size
    for t in transfers:
        out[t.owner] += t.length
    return out
