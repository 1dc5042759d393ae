"""A worker's steps (every rank > 0; rank 0 runs `write_part` too).

    join      wait for the group notice naming an attempt of this save ("writing")
    write     stream the tensors into ``NAME.data-R-of-N``, create-only (`write_part`)
    report    ``NAME.tmp-ATTEMPT/worker-R``: the table and the data file's identity, or the
              failure (then the worker waits for the verdict too: every rank raises the same)
    verdict   poll the group notice until it names this attempt "committed" or "failed";
              acknowledge it (``ack-R``: the coordinator cleans up once all have; a verdict
              judged alone, see below, is not acknowledged: no coordinator waits for it)
A worker that comes late, when its attempt has already failed (another worker's failure
ended it before this one joined), learns the verdict from the notice all the same, and
raises it: every rank of an attempt raises the same error.

A worker whose coordinator vanished judges by the storage itself: once the claim has not been
renewed for a lease timeout (or names another attempt), its attempt committed if and only if
``NAME.index`` exists and its data file is still the version it wrote (the coordinator fenced
every data file just before committing, and no later attempt could reuse this version).  A
worker whose attempt was taken over by a newer attempt of its own job (the same save id and
world size: a retry, or a restart that kept the save id after all of its processes died)
joins that one; one taken over by another save stops without touching anything.  A save id
names one running instance of a job: a job restarted while processes of its last instance
may still live (paused, partitioned) needs a new one, as the launchers' restart counts give.
"""

from __future__ import annotations

import enum
import io
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..engine.incremental import Incremental, open_base, stream_incremental
from ..engine.plan import BundlePlan, plan_bundle
from ..engine.write import stream_plan
from ..errors import (
    CheckpointChangedError,
    CheckpointError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    SaveFailedError,
)
from ..faults import crash_point
from ..format.bundle import BundleIndex, decode_index, encode_index, make_header
from ..options import IOOptions
from ..progress import Reporter
from ..storage.base import Store
from . import claim as claims
from . import poll
from .layout import SaveLayout
from .records import DataIdentity, Failure, Report

log = logging.getLogger("remoteckpt")

REJOINS = 3
"""Times a worker follows its job into a newer attempt before it gives up."""

concluded: set[tuple[str, int]] = set()
"""(attempt, rank) of the verdicts this process's workers have read (a later save of the same
job must not take an earlier attempt's failure, still on the notices, for its own); by rank,
as the workers of one save may be threads of one process, each to read the verdict itself."""


@dataclass(frozen=True)
class _ConcludedBy:
    """The attempts whose verdict worker `rank` of this process has read."""

    rank: int

    def __contains__(self, attempt: object) -> bool:
        return (attempt, self.rank) in concluded


@dataclass
class SaveReport:
    """What one worker's save did, with timings in seconds."""

    prefix: str
    rank: int
    world_size: int
    bytes_written: int = 0
    bytes_copied: int = 0
    """Of `bytes_written`, those an incremental save had the store copy from its base."""
    write_seconds: float = 0.0
    wait_seconds: float = 0.0
    merge_seconds: float = 0.0
    commit_seconds: float = 0.0
    attempt: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def table_bytes(plan: BundlePlan) -> bytes:
    """A worker's table: a one-shard TensorFlow index of its entries."""
    out = io.BytesIO()
    encode_index(make_header(1), plan.entries, out)
    return out.getvalue()


def read_table(data: bytes, rank: int, index: str) -> BundleIndex:
    """Worker `rank`'s table, decoded and checked; errors name the worker and the index
    (`index`, described) it was for."""
    view = memoryview(data)
    try:
        return decode_index(lambda o, k: view[o : o + k], len(view))
    except CheckpointError as exc:
        raise type(exc)(f"worker {rank}'s table for {index}: {exc}") from None


async def write_part(store: Store, layout: SaveLayout, tensors: Mapping[str, Any], *, options: IOOptions,
                     attempt: str = "", progress: Reporter | None = None,
                     report: SaveReport | None = None,
                     incremental: Incremental | None = None) -> tuple[DataIdentity, bytes]:
    """Stream `tensors` into ``layout.data(layout.rank)``, create-only, and return which
    version was written and the worker's table.  Called once the coordinator holds the claim
    for `attempt` and has cleared the prefix.  A data file found in the way (written by a
    worker of a dead attempt after the coordinator cleared the prefix) is replaced, by its
    version, if this attempt still holds the claim and nothing is committed.  `incremental`:
    every entry gets its content digest, and tensors unchanged since the base are copied from
    it by the store (`engine.incremental`); a base that vanishes meanwhile makes it write them."""
    progress = progress or Reporter(None, layout.name)
    start = time.monotonic()
    plan = plan_bundle(tensors)
    progress.emit("staged", plan.size, plan.size)
    crash_point("staged")
    key = layout.data(layout.rank)
    base = None
    if incremental is not None and incremental.base is not None and incremental.base != layout.name:
        base = await open_base(store, incremental.base)
    copied, cleared = 0, False
    for tries in range(3):
        if tries:
            plan = plan_bundle(tensors)  # streaming fills in the entries' checksums: a fresh plan
        try:
            async with store.writer(key, exclusive=True, size_hint=plan.size) as writer:
                if base is not None and writer.server_side_copy:
                    copies = await stream_incremental(writer, plan, base, options,
                                                      lambda n: progress.add("written", n, plan.size),
                                                      unchanged_last=incremental is not None
                                                      and incremental.unchanged_last)
                    written, copied = copies.written + copies.copied, copies.copied
                    log.info("%s: %d of %d bytes copied from %s by the store (%d unchanged tensors)",
                             store.describe(key), copied, written, store.describe(base.name), copies.unchanged)
                else:
                    written = await stream_plan(writer, plan, options, lambda n: progress.add("written", n, plan.size),
                                                digests=incremental is not None)
            break
        except (CheckpointChangedError, CheckpointNotFoundError) as exc:
            if base is None:
                raise
            log.warning("incremental save of %s: the base %s changed or vanished while it was copied from (%s); "
                        "writing every tensor", store.describe(key), store.describe(base.name), exc)
            base = None
        except CheckpointExistsError:
            if await store.exists(layout.index):
                raise CheckpointExistsError.committed(store.describe(layout.index)) from None
            if cleared or not await _clear_way(store, layout, key, attempt):
                raise CheckpointExistsError(
                    f"{store.describe(key)} appeared while this save was writing it, and this save may not replace "
                    f"it: another attempt of this save holds {store.describe(layout.claim)}") from None
            cleared = True
    crash_point("data-written")
    if report is not None:
        report.bytes_written = written
        report.bytes_copied = copied
        report.write_seconds = time.monotonic() - start
    return DataIdentity(key=key, size=written, etag=writer.etag), table_bytes(plan)


async def _holds_claim(store: Store, layout: SaveLayout, attempt: str) -> bool:
    found = await claims.read_claim(store, layout)
    return found is not None and found[0] is not None and found[0].attempt == attempt


async def _claim_moved_on(store: Store, layout: SaveLayout, attempt: str) -> str:
    """Who holds the claim now, if not `attempt`: "job" (a newer attempt of this save id and
    world size, which this worker joins), "other" (another save), or "" (still this attempt,
    or nobody)."""
    try:
        found = await claims.read_claim(store, layout)
    except CheckpointError:
        return ""
    if found is None or (found[0] is not None and found[0].attempt == attempt):
        return ""
    return "job" if found[0] is not None and found[0].same_job(layout.save_id, layout.world_size) else "other"


async def _clear_way(store: Store, layout: SaveLayout, key: str, attempt: str) -> bool:
    """Delete the data file in the way if this attempt may: the version seen first, then the
    claim checked (still this attempt's), then no index, then the delete of that version."""
    head = await store.head(key)
    if head is None:
        return True
    if not await _holds_claim(store, layout, attempt) or await store.exists(layout.index):
        return False
    log.info("replacing %s, written by an earlier attempt of this save", store.describe(key))
    return await store.delete(key, if_match=head.etag)


async def _holds_table(store: Store, layout: SaveLayout, table: bytes) -> bool:
    """Whether the committed index holds this worker's data entries as its `table` gives them."""
    try:
        data = await store.get(layout.index)
        view = memoryview(data)
        index = decode_index(lambda o, k: view[o : o + k], len(view))
        mine = read_table(table, layout.rank, store.describe(layout.index))
    except CheckpointError:
        return False
    for key, entry in mine.entries.items():
        if entry.slices:
            continue
        there = index.entries.get(key)
        if (there is None or there.shard_id != layout.rank or there.offset != entry.offset
                or there.size != entry.size or there.crc32c != entry.crc32c):
            return False
    return True


class Verdict(enum.Enum):
    COMMITTED = "committed"
    FAILED = "failed"
    REJOIN = "rejoin"


Part = Callable[[str], Awaitable[tuple[DataIdentity | None, bytes]]]
"""A worker's part written another way than `write_part` (given the attempt): the identity of
the data file written in the store, or None when it lies elsewhere (a local tier), and the
worker's table (`table_bytes`)."""


async def run_worker(store: Store, layout: SaveLayout, tensors: Mapping[str, Any], *, overwrite: bool,
                     options: IOOptions, progress: Reporter, report: SaveReport,
                     incremental: Incremental | None = None, part: Part | None = None) -> SaveReport:
    """Ranks > 0: the steps of the module docstring, until this save commits or fails.  With
    `part`, the worker's part is written by it instead of `write_part`."""
    for _ in range(REJOINS + 1):
        begun = poll.clock()
        attempt, ended = await claims.join(store, layout, options, overwrite=overwrite,
                                           concluded=_ConcludedBy(layout.rank))
        report.attempt = attempt
        if ended is not None:  # the attempt failed before this worker joined it
            await _acknowledge(store, layout, attempt)
            raise ended.error()
        try:
            if part is not None:
                identity, table = await part(attempt)
            else:
                identity, table = await write_part(store, layout, tensors, options=options, attempt=attempt,
                                                   progress=progress, report=report, incremental=incremental)
        except BaseException as exc:
            if isinstance(exc, CheckpointExistsError) and exc.index_committed:
                raise  # the step is saved already: every rank finds its index, and says so
            moved = await _claim_moved_on(store, layout, attempt) if isinstance(exc, Exception) else ""
            if moved == "job":  # this worker joined an attempt that died; its job has a newer one
                log.info("worker %d: attempt %s of %s was taken over; joining the new one", layout.rank, attempt,
                         store.describe(layout.index))
                continue
            if moved == "other":
                raise SaveFailedError(
                    f"worker {layout.rank}: attempt {attempt} of the save of {store.describe(layout.index)} was "
                    "taken over by another save while this worker was paused or cut off; it stopped without "
                    "touching the other save's files") from exc
            if not await _report(store, layout, Report(attempt=attempt, rank=layout.rank, state="failed",
                                                       error=Failure.of(exc, rank=layout.rank))):
                raise
            verdict, failure = await await_verdict(store, layout, attempt, None, options)
            raise (failure.error() if failure else SaveFailedError(str(exc))) from exc
        await store.put(layout.report(attempt, layout.rank),
                        Report(attempt=attempt, rank=layout.rank, state="ready", data=identity, table=table).encode())
        crash_point("table-written")
        start = time.monotonic()
        verdict, failure = await await_verdict(store, layout, attempt, identity, options, table=table, begun=begun)
        report.wait_seconds += time.monotonic() - start
        if verdict is Verdict.COMMITTED:
            return report
        if verdict is Verdict.FAILED:
            assert failure is not None
            raise failure.error()
        log.info("worker %d: attempt %s of %s was taken over; joining the new one", layout.rank, attempt,
                 store.describe(layout.index))
    raise SaveFailedError(f"worker {layout.rank}: {store.describe(layout.index)} changed hands {REJOINS + 1} times "
                          "while this save ran; giving up")


async def _report(store: Store, layout: SaveLayout, report: Report) -> bool:
    try:
        await store.put(layout.report(report.attempt, report.rank), report.encode())
        return True
    except Exception:  # the original error matters more
        log.warning("could not report worker %d's failure under %s", layout.rank,
                    store.describe(layout.staging(report.attempt)))
        return False


async def await_verdict(store: Store, layout: SaveLayout, attempt: str, identity: DataIdentity | None,
                        options: IOOptions, *, table: bytes = b"",
                        begun: float | None = None) -> tuple[Verdict, Failure | None]:
    """Wait for the coordinator's word on `attempt` (see the module docstring), and acknowledge
    it; a verdict judged alone is not acknowledged (no coordinator waits for it).  `begun`:
    when this worker began to join the attempt (`poll.clock`), from which its verdict's
    time is learned and expected (`poll.Waits`)."""
    deadline = poll.clock() + options.commit_timeout
    claim_seen: str | None = None
    look_every = max(options.lease_timeout, poll.spread(layout.world_size))  # every worker reads the claim
    look_at_claim = poll.clock() + look_every * random.uniform(1.0, 1.5)
    first = max(options.poll_interval * 4, 0.02, layout.world_size / poll.COMMIT_RATE)
    # No poll at once: the verdict cannot be there yet (the coordinator has this report still to
    # find, then the merge, the commit and the notices to write).
    # The verdict comes at about the same time into every save of a job in its rhythm, counted
    # from the worker's join (when this worker's report lands in it varies from save to save).
    kind = claims.wait_kind(store, layout, "verdict")
    async for _ in poll.backoff_polls(first, deadline, cap=poll.interval_cap(layout.world_size),
                                      share=poll.WAIT_SHARE, at_once=False, since=begun,
                                      not_before=None if begun is None else poll.waits.not_before(kind, begun)):
        notice = await claims.read_notice(store, layout)
        if notice is not None and notice.attempt == attempt and notice.state != "writing":
            if begun is not None:
                poll.waits.learn(kind, poll.clock() - begun)
            await _acknowledge(store, layout, attempt)  # the coordinator's word: it waits for this
            if notice.state == "committed":
                return Verdict.COMMITTED, None
            return Verdict.FAILED, notice.error or Failure(type="SaveFailedError", message="the coordinator failed")
        taken_over = (notice is not None and notice.attempt != attempt and notice.state == "writing"
                      and notice.save_id == layout.save_id and notice.world_size == layout.world_size)
        if taken_over or poll.clock() >= look_at_claim:
            found = await claims.read_claim(store, layout)
            held = found is not None and found[0] is not None and found[0].attempt == attempt
            if held and found is not None and found[1].etag != claim_seen:
                claim_seen, look_at_claim = found[1].etag, poll.clock() + look_every * random.uniform(1.0, 1.5)
                continue  # the coordinator is alive: keep waiting
            # No coordinator to acknowledge to: withdraw the report instead (a newer attempt
            # has cleared this one's staging, or will find it dead).
            concluded.add((attempt, layout.rank))
            try:
                await store.delete(layout.report(attempt, layout.rank))
            except CheckpointError:
                log.debug("could not withdraw worker %d's report", layout.rank, exc_info=True)
            return await _judge_alone(store, layout, identity, rejoin=taken_over or not held, table=table)
    raise SaveFailedError(f"timed out after {options.commit_timeout:g} s waiting for the coordinator (worker 0) "
                          f"to commit {store.describe(layout.index)}")


async def _acknowledge(store: Store, layout: SaveLayout, attempt: str) -> None:
    concluded.add((attempt, layout.rank))
    try:
        await store.put(layout.ack(attempt, layout.rank), b"")
    except CheckpointError:  # the coordinator stops waiting after a while
        log.debug("could not acknowledge worker %d's verdict", layout.rank, exc_info=True)


async def _judge_alone(store: Store, layout: SaveLayout, identity: DataIdentity | None,
                       *, rejoin: bool, table: bytes = b"") -> tuple[Verdict, Failure | None]:
    """The verdict without the coordinator's word (see the module docstring).  A worker whose
    data file lies outside the store (no `identity`) judges by its `table`: committed if the
    index holds its entries as its table gives them."""
    if await store.exists(layout.index):
        head = await store.head(identity.key) if identity is not None else None
        if identity is not None and head is not None and head.etag == identity.etag and head.size == identity.size:
            return Verdict.COMMITTED, None
        if identity is None and table and await _holds_table(store, layout, table):
            return Verdict.COMMITTED, None
        # Committed, but not by this worker's attempt: the step is saved already.
        return Verdict.FAILED, Failure(type="CheckpointExistsError",
                                       message=str(CheckpointExistsError.committed(store.describe(layout.index))))
    if rejoin:
        found = await claims.read_claim(store, layout)
        if found is not None and found[0] is not None and found[0].same_job(layout.save_id, layout.world_size):
            return Verdict.REJOIN, None
    return Verdict.FAILED, Failure(
        type="SaveFailedError",
        message=f"worker {layout.rank}'s attempt to save {store.describe(layout.index)} ended without a verdict "
                "reaching it: its coordinator (worker 0) stopped renewing its claim before committing (it died, "
                "or lost the storage), or the attempt was taken over by a newer one")
