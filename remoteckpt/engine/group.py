"""Reading as a group: every unique byte range fetched from storage by one rank only.

`read_shared` is `OpenCheckpoint.read_boxes` for the ranks of a group loading together (data
parallel replicas restoring the same weights, or shards that overlap).  Every rank of the
group calls it at the same point, each with its own requests; then:

    plan       each rank plans its own read (`OpenCheckpoint.plan_boxes`: resolve, check,
               allocate) and lists the units it needs: CRC chunks, or whole entries without
               chunk CRCs, with where each lands (its region of an output array, or a
               staging buffer of a partial box or a string entry)
    gather     the units (as runs: a tensor's chunks are one) and hosts, and any planning
               error, all-gathered: one collective
    share      `engine.share.plan_sharing`, on every rank alike: who fetches what
    fetch      each rank fetches its own transfers (`engine.fetch`, on remoteckpt's I/O loop,
               many at once) straight into its destinations and verifies every unit against
               the index: bytes are checked once, by the rank that fetched them
    exchange   in the plan's order, on the calling thread: a transfer every other rank needs
               is broadcast, one a few need is sent to each; a receiver's bytes land straight
               in its destination where the transfer maps to one contiguous region of it,
               else through a temporary buffer of at most one transfer
    settle     every rank's fetch errors all-gathered (a rank whose fetch failed still sent
               its share, so no rank waits forever), then partial boxes are copied out of
               their staging buffers and string entries decoded

When every rank is on one host, fetch and exchange are replaced by `engine.segment`: the
bytes some rank receives are fetched into one shared-memory file, and after the gather of
errors each rank maps its whole-entry outputs from it (copy-on-write) or copies them out.

The collective calls are made through a `Collective` (`plugins.torch_group.TorchGroup` for a
`torch.distributed` process group); the same calls in the same order on every rank.

Memory.  Partial boxes (and string entries) are staged whole in group reads, and a transfer
whose units land in several places goes through a temporary buffer (on the rank that sends
it and on each that receives it): both come from the process's memory budget
(`engine.budget`).  Before it allocates any of them, each rank draws, in one request, its
staging buffers' bytes plus room for one temporary buffer (a transfer of several units is at
most `read_chunk` bytes; one of a single unit lands in place), and gives them back once the
read is over.  One request, never a second while holding the first: a rank never waits on
the budget while it holds part of it, so it cannot deadlock on itself; one larger than the
whole budget is admitted alone, as any (see `engine.budget`).  The wait, if any, comes
before the first collective call, while the rank holds nothing the others need.  Outputs
and the one-host shared-memory segment (whose bytes become outputs) are the caller's, as
in every read.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from ..format.coding import crc32c_combine, unmask_crc
from . import loop
from .budget import MemoryBudget, process_budget
from .fetch import gather_or_cancel
from .ranges import Piece, coalesce
from .read import BoxLike, OpenCheckpoint, ReadPlan, SizesNeeded, _byteswap, _Part
from .segment import Segment, layout, open_segment, unlink_segment
from .share import Transfer, Unit, pack, plan_sharing, unpack

HOST_ENV = "REMOTECKPT_GROUP_HOST"
"""The host name a rank gives the group plan, instead of its own: lets one machine run the
plan and the transfers of a group spread over several hosts (tests, benchmarks)."""


class NotFetched(CheckpointError):
    """A transfer left unfetched because another of the same rank failed first (that failure
    is the one raised)."""


class Collective(abc.ABC):
    """The collective calls a group read makes.  `rank` and `size` are within the group;
    buffers are 1-D contiguous uint8 numpy arrays of equal length on every rank involved."""

    rank: int
    size: int

    @abc.abstractmethod
    def all_gather_object(self, value: Any) -> list[Any]:
        """Every rank's `value` (picklable), in rank order."""

    @abc.abstractmethod
    def broadcast(self, buffer: np.ndarray, src: int) -> None:
        """`src`'s buffer into every other rank's."""

    def broadcast_object(self, value: Any, src: int) -> Any:
        """`src`'s `value` (picklable; ignored on the other ranks), on every rank.  By default
        an all-gather of it (every other rank contributing None): a group that can broadcast
        objects says so, and moves it once."""
        return self.all_gather_object(value if self.rank == src else None)[src]

    @abc.abstractmethod
    def send(self, buffer: np.ndarray, dst: int) -> None: ...

    @abc.abstractmethod
    def recv(self, buffer: np.ndarray, src: int) -> None: ...


Target = tuple[np.ndarray, int]
"""Where a unit lands: bytes from `start` on of a 1-D uint8 array (an output region, or a
staging buffer)."""


@dataclass
class _Unit:
    """A unit this rank needs: where it lands (the first target; copied to the others
    after), the CRC it must have, and whose it is (for errors)."""

    targets: list[Target]
    crc: int
    name: str
    data_key: str
    length: int
    strings: _Part | None  # a string entry: checked by decoding it (its CRC is not of its bytes)

    def view(self, i: int = 0) -> np.ndarray:
        array, start = self.targets[i]
        return array[start : start + self.length]


@dataclass
class _Needs:
    """What this rank needs, and how its staged parts are finished after the exchange."""

    units: dict[Unit, _Unit] = field(default_factory=dict)
    staged: list[tuple[_Part, Any, int]] = field(default_factory=list)  # (part, staging buffer, entry offset of it)
    regions: dict[int, _Part] = field(default_factory=dict)  # id of a direct part's region -> the part

    def add(self, unit: Unit, target: Target, crc: int, part: _Part) -> None:
        if unit[2] == 0:
            return
        found = self.units.get(unit)
        if found is None:
            strings = part if part.out.dtype.kind == "O" and not part.entry.chunk_crc32c else None
            self.units[unit] = _Unit([target], crc, part.name, part.data_key, unit[2], strings)
        else:
            found.targets.append(target)


def _entry_units(needs: _Needs, p: _Part, lo: int, hi: int, target: np.ndarray, base: int) -> None:
    """The units covering the entry's bytes [lo, hi) (entry-relative; whole chunks where the
    entry has chunk CRCs, else the whole entry), landing in `target` (which holds the
    entry's bytes from `base` on)."""
    entry = p.entry
    if entry.chunk_crc32c:
        size = entry.chunk_size
        for i in range(lo // size, -(-hi // size)):
            start, stop = i * size, min(entry.size, (i + 1) * size)
            needs.add((p.data_key, entry.offset + start, stop - start), (target, start - base),
                      unmask_crc(entry.chunk_crc32c[i]), p)
    else:
        needs.add((p.data_key, entry.offset, entry.size), (target, -base), unmask_crc(entry.crc32c), p)


def _extent(blocks: Sequence[tuple[Any, list[tuple[int, int]]]]) -> tuple[int, int]:
    """The bytes [base, top) of an entry a partial box's staging buffer holds: its spans and blocks."""
    spans = [s for _, ss in blocks for s in ss]
    base = min([lo for lo, _ in spans] + [b.offset for b, _ in blocks])
    top = max([hi for _, hi in spans] + [b.offset + b.length for b, _ in blocks])
    return base, top


def _staging_bytes(plan: ReadPlan) -> int:
    """Bytes of the staging buffers `_needs` allocates for `plan`."""
    return sum(p.entry.size if p.out.dtype.kind == "O" else _extent(blocks)[1] - _extent(blocks)[0]
               for p, blocks in plan.buffered)


def _needs(plan: ReadPlan) -> _Needs:
    """What this rank needs; allocates the staging buffers (`_staging_bytes`)."""
    needs = _Needs()
    for p in plan.direct:
        region = p.out[p.part.relative_to(p.request)].reshape(-1).view(np.uint8)
        needs.regions[id(region)] = p
        _entry_units(needs, p, 0, p.entry.size, region, 0)
    for p, blocks in plan.buffered:
        if p.out.dtype.kind == "O":
            staging = np.empty(p.entry.size, np.uint8)
            needs.staged.append((p, staging, 0))
            _entry_units(needs, p, 0, p.entry.size, staging, 0)
            continue
        spans = [s for _, ss in blocks for s in ss]
        base, top = _extent(blocks)
        staging = np.empty(top - base, np.uint8)  # pages never written are never resident
        needs.staged.append((p, (staging, blocks), base))
        for lo, hi in spans:
            _entry_units(needs, p, lo, hi, staging, base)
    return needs


def _contiguous(units: Sequence[_Unit]) -> np.ndarray | None:
    """The units' first targets as one array, if they follow each other in one array."""
    array, start = units[0].targets[0]
    at = start
    for u in units:
        if u.targets[0][0] is not array or u.targets[0][1] != at:
            return None
        at += u.length
    return array[start:at]


def _raise_first(errors: Sequence[Any], rank: int) -> None:
    """Another rank's error (the first), naming that rank."""
    for r, err in enumerate(errors):
        if err is not None:
            raise type(err)(f"rank {r} of the group: {err}")


def _portable(exc: Exception) -> CheckpointError:
    """The error as it can travel to the other ranks: its class and message (a
    `CheckpointError`, as which any other error travels)."""
    if isinstance(exc, CheckpointError):
        return type(exc)(str(exc))
    return CheckpointError(f"{type(exc).__name__}: {exc}")


def read_shared(checkpoint: OpenCheckpoint, requests: Sequence[tuple[str, BoxLike | None]],
                outs: Sequence[np.ndarray | None] | None, group: Collective) -> list[np.ndarray]:
    """`checkpoint.read_boxes(requests, outs)`, every rank of `group` calling it at once
    (see the module docstring).  Runs on the caller's thread (never remoteckpt's I/O loop:
    its fetches run there).  An error of any rank (a bad request, a corrupt unit) is raised
    on every rank: the rank's own, or the first other rank's, naming that rank."""
    drawn = _Drawn(checkpoint._options.memory_budget)
    try:
        return _read_shared(checkpoint, requests, outs, group, drawn)
    finally:
        drawn.give_back()


class _Drawn:
    """Bytes a group read holds of the process's memory budget.  Drawn from the caller's
    thread; counted and given back on remoteckpt's I/O loop, where the budget lives."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.budget: MemoryBudget | None = None
        self.held = 0

    def draw(self, n: int) -> None:
        """Wait for `n` bytes of the budget; once only (see the module docstring)."""
        assert self.held == 0
        if n <= 0:
            return

        async def acquire() -> None:
            budget = process_budget(self.capacity)
            await budget.acquire(n)
            self.budget, self.held = budget, n  # counted as soon as granted: `give_back` sees it

        future = loop.submit(acquire())
        try:
            future.result()
        except BaseException:
            # An interrupted wait: a grant that comes meanwhile is given back by `acquire`
            # (cancelled) or by `give_back` (which runs on the loop after the cancellation).
            future.cancel()
            raise

    def give_back(self) -> None:
        async def release() -> None:
            if self.held:
                assert self.budget is not None
                self.budget.release_now(self.held)
                self.held = 0

        loop.run(release())


def _read_shared(checkpoint: OpenCheckpoint, requests: Sequence[tuple[str, BoxLike | None]],
                 outs: Sequence[np.ndarray | None] | None, group: Collective, drawn: _Drawn) -> list[np.ndarray]:
    needs: _Needs | None = None
    error: Exception | None = None
    try:
        try:
            plan = checkpoint.plan_boxes(requests, outs, learn=True)
        except SizesNeeded as needed:  # one ranged read per data file (see `engine.read.UNSIZED_CLAIM`)
            loop.run(_explained(checkpoint, checkpoint.learn_sizes(needed.entries)))
            plan = checkpoint.plan_boxes(requests, outs)
        direct = sum(p.entry.size for p in plan.direct)
        staging = _staging_bytes(plan)
        # A temporary buffer holds one transfer of several units (at most `read_chunk`), all of them this rank's.
        temporary = min(checkpoint._options.read_chunk, direct + staging) if group.size > 1 else 0
        drawn.draw(staging + temporary)
        needs = _needs(plan)
    except Exception as exc:  # raised on every rank, after the gather
        error = exc
    gathered = group.all_gather_object(
        (pack(list(needs.units)) if needs is not None else [], os.environ.get(HOST_ENV) or socket.gethostname(),
         None if error is None else _portable(error), uuid.uuid4().hex))
    if error is not None:
        raise error
    _raise_first([g[2] for g in gathered], group.rank)
    assert needs is not None
    hosts = [g[1] for g in gathered]
    wanted = [unpack(g[0]) for g in gathered]
    transfers = plan_sharing(wanted, block=checkpoint._options.read_chunk, hosts=hosts)
    mine = [t for t in transfers if t.owner == group.rank]
    if group.size > 1 and len(set(hosts)) == 1:
        # Only what some rank receives goes through shared memory; a rank's own bytes go
        # straight into its targets.
        positions, size = layout(u for t in transfers if t.receivers for u in t.units)
        name = f"remoteckpt-{gathered[0][3]}"
        segment = open_segment(name, size)
        try:
            opened = all(group.all_gather_object(segment is not None))
        finally:
            unlink_segment(name)  # every rank has tried to open it: mapped (or none will use it)
        if opened:
            assert segment is not None
            return _read_on_one_host(checkpoint, plan, outs, needs, group, mine, segment, positions)
    ready = {(t.key, t.offset): concurrent.futures.Future[None]() for t in mine}
    fetching = loop.submit(_fetch_owned(checkpoint, mine, needs, ready, lambda u: needs.units[u].view()))
    failure: Exception | None = None
    try:
        for t in transfers:
            failure = _exchange(t, needs, group, ready, failure)
    finally:
        try:
            fetching.result()
        except Exception as exc:  # noqa: BLE001 - raised on every rank below
            failure = exc if failure is None or isinstance(failure, NotFetched) else failure
    errors = group.all_gather_object(None if failure is None else _portable(failure))
    if failure is not None:
        raise failure
    _raise_first(errors, group.rank)
    _settle(checkpoint, plan, needs)
    return plan.results


def _exchange(t: Transfer, needs: _Needs, group: Collective,
              ready: dict[tuple[str, int], concurrent.futures.Future[None]],
              failure: Exception | None) -> Exception | None:
    """This rank's side of one transfer; returns the first fetch error so far (after which
    this rank still sends, so that no receiver waits forever, and raises at the end)."""
    me = group.rank
    everyone = len(t.receivers) == group.size - 1
    if me != t.owner and me not in t.receivers:
        return failure
    units = [needs.units[u] for u in t.units]
    buffer = _contiguous(units)
    if me == t.owner:
        try:
            ready[t.key, t.offset].result()
        except Exception as exc:  # noqa: BLE001 - sent anyway, raised at the end
            failure = failure or exc
        if not t.receivers:
            return failure
        if buffer is None:
            buffer = np.concatenate([u.view() for u in units])
        if everyone:
            group.broadcast(buffer, t.owner)
        else:
            for r in t.receivers:
                group.send(buffer, r)
        return failure
    staged = buffer is None
    if buffer is None:
        buffer = np.empty(t.length, np.uint8)
    if everyone:
        group.broadcast(buffer, t.owner)
    else:
        group.recv(buffer, t.owner)
    if staged:
        at = 0
        for u in units:
            u.view()[:] = buffer[at : at + u.length]
            at += u.length
    return failure


async def _fetch_owned(checkpoint: OpenCheckpoint, mine: list[Transfer], needs: _Needs,
                       ready: dict[tuple[str, int], concurrent.futures.Future[None]],
                       target: Callable[[Unit], np.ndarray]) -> None:
    """Fetch and verify this rank's transfers (each unit into `target(unit)`), at most
    `max_concurrency` at once, in plan order; each transfer's future is resolved (or
    failed) as soon as it is done."""
    slots = asyncio.Semaphore(checkpoint._options.max_concurrency)

    async def one(t: Transfer) -> None:
        future = ready[t.key, t.offset]
        try:
            async with slots:
                await _fetch_transfer(checkpoint, t, needs, target)
        except asyncio.CancelledError:
            # Cancelled because another transfer of this rank failed (`gather_or_cancel`): an
            # ordinary error for `_exchange`, which sends the transfer anyway and raises the
            # first real failure at the end.
            future.set_exception(NotFetched(f"bytes {t.offset}..{t.offset + t.length} of {t.key} were not fetched: "
                                            "another transfer of this rank failed first"))
            raise
        except BaseException as exc:
            future.set_exception(exc)
            raise
        future.set_result(None)

    await gather_or_cancel([asyncio.ensure_future(one(t)) for t in mine])


async def _explained(checkpoint: OpenCheckpoint, work: Awaitable[None]) -> None:
    """Await `work` (reads of `checkpoint`); damage or a data file missing found while the index
    was replaced is raised as the checkpoint replaced (`OpenCheckpoint.replaced`)."""
    try:
        await work
    except (CorruptCheckpointError, CheckpointNotFoundError) as exc:
        changed = await checkpoint.replaced(exc)
        if changed is None:
            raise
        raise changed from exc


async def _fetch_transfer(checkpoint: OpenCheckpoint, t: Transfer, needs: _Needs,
                          target_of: Callable[[Unit], np.ndarray]) -> None:
    await _explained(checkpoint, _fetch_transfer_bytes(checkpoint, t, needs, target_of))


async def _fetch_transfer_bytes(checkpoint: OpenCheckpoint, t: Transfer, needs: _Needs,
                                target_of: Callable[[Unit], np.ndarray]) -> None:
    options = checkpoint._options
    pieces: list[Piece] = []
    views: dict[tuple[int, int], memoryview] = {}
    for task, unit in enumerate(t.units):
        key, offset, length = unit
        target = target_of(unit)
        for index, start in enumerate(range(offset, offset + length, options.read_chunk)):
            n = min(options.read_chunk, offset + length - start)
            pieces.append(Piece(key, start, n, task, index))
            views[task, index] = target.data[start - offset : start - offset + n]
    ops = coalesce(pieces, gap=0, max_length=max(options.read_chunk, t.length))
    crcs = await checkpoint.fetch(ops, views, lambda piece: f"tensor {needs.units[t.units[piece.task]].name!r} "
                                                            f"in {checkpoint._prefix}")
    for task, unit in enumerate(t.units):
        crc = 0
        for index, start in enumerate(range(unit[1], unit[1] + unit[2], options.read_chunk)):
            crc = crc32c_combine(crc, crcs[task, index], min(options.read_chunk, unit[1] + unit[2] - start))
        wanted = needs.units[unit]
        if wanted.strings is not None:
            checkpoint.decode_strings(wanted.strings, bytes(target_of(unit)))
        elif crc != wanted.crc:
            raise CorruptCheckpointError(
                f"tensor {wanted.name!r} in {checkpoint._prefix}: checksum mismatch in "
                f"{checkpoint._store.describe(unit[0])} (bytes {unit[1]}..{unit[1] + unit[2]})")


def _read_on_one_host(checkpoint: OpenCheckpoint, plan: ReadPlan, outs: Sequence[np.ndarray | None] | None,
                      needs: _Needs, group: Collective, mine: list[Transfer], segment: Segment,
                      positions: dict[Unit, int]) -> list[np.ndarray]:
    """Every rank on one host: the transfers fetched into the shared-memory segment
    (`engine.segment`), then outputs mapped from it or targets copied out of it."""
    def shared(unit: Unit) -> np.ndarray:
        return segment.shared[positions[unit] : positions[unit] + unit[2]]

    def target(unit: Unit) -> np.ndarray:
        return shared(unit) if unit in positions else needs.units[unit].view()

    ready = {(t.key, t.offset): concurrent.futures.Future[None]() for t in mine}
    failure: Exception | None = None
    try:
        loop.run(_fetch_owned(checkpoint, mine, needs, ready, target))
    except Exception as exc:  # noqa: BLE001 - raised on every rank below
        failure = exc
    errors = group.all_gather_object(None if failure is None else _portable(failure))
    if failure is not None:
        raise failure
    _raise_first(errors, group.rank)
    allocated = [o is None for o in outs] if outs is not None else [True] * len(plan.results)
    whole = {id(p.out): p for p in plan.direct if p.part == p.request}
    counts: dict[int, int] = {}
    for part in plan.direct + [q for q, _ in plan.buffered]:
        counts[id(part.out)] = counts.get(id(part.out), 0) + 1
    mapped: set[int] = set()  # parts whose output is now a view of the segment
    if not checkpoint._index.big_endian:
        for i, out in enumerate(plan.results):
            p = whole.get(id(out))
            if p is None or not allocated[i] or counts[id(out)] != 1 or not p.entry.size:
                continue
            units = _Needs()
            _entry_units(units, p, 0, p.entry.size, out, 0)
            if not all(u in positions for u in units.units):
                continue  # some of it was this rank's alone: not in the segment
            start = positions[next(iter(units.units))]  # the entry's first unit: the others follow it
            plan.results[i] = segment.private[start : start + p.entry.size].view(out.dtype).reshape(out.shape)
            mapped.add(id(p))
    for unit, wanted in needs.units.items():
        for k, (array, start) in enumerate(wanted.targets):
            owner = needs.regions.get(id(array))
            if owner is not None and id(owner) in mapped:
                continue
            if unit in positions:
                array[start : start + wanted.length] = shared(unit)
            elif k:
                array[start : start + wanted.length] = wanted.view()
    _settle(checkpoint, plan, needs, duplicates=False)
    return plan.results


def _settle(checkpoint: OpenCheckpoint, plan: ReadPlan, needs: _Needs, duplicates: bool = True) -> None:
    """After the exchange: duplicate views filled, big-endian bytes swapped, staged parts
    copied out, string entries decoded."""
    for unit in needs.units.values() if duplicates else ():
        for i in range(1, len(unit.targets)):
            unit.view(i)[:] = unit.view()
    if checkpoint._index.big_endian:
        for p in plan.direct:
            _byteswap(p.out[p.part.relative_to(p.request)])
    for p, staged, base in needs.staged:
        if p.out.dtype.kind == "O":
            checkpoint.decode_strings(p, bytes(staged))
            continue
        staging, blocks = staged
        for block, _ in blocks:
            checkpoint._copy_out(p, block, staging[block.offset - base : block.offset - base + block.length])
