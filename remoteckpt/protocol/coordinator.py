"""The coordinator's steps (rank 0), around its own worker's part.

    prepare   with the claim held: list the prefix once; refuse a committed index (unless
              overwriting: then retire it, index first); clear what dead attempts left
              (their data files, by the versions listed; their staging; their uploads)
    invite    write the group notices: "attempt A is writing"
    collect   every worker's report: one listing, then a GET per report still missing
              (a listing again while many are); a failed report ends the wait
    commit    merge the tables, renew the lease, fence the data files, commit the index
    publish   the verdict on every notice; once the workers have read it (each acknowledges
              with a key of its own), remove the notices, the staging and the claim
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import CheckpointError, CheckpointExistsError, CheckpointNotFoundError, SaveFailedError
from ..options import IOOptions
from ..storage.base import ObjectInfo, Store
from . import poll
from .layout import DATA_FILE, SaveLayout
from .lease import Lease
from .records import Failure, Notice, Report

log = logging.getLogger("remoteckpt")

CONCURRENT_REQUESTS = 64
"""Small requests (notices, reports, deletes) the coordinator keeps in flight at once."""

_TEMPORARY = re.compile(r"\.tempstate\d+$")

RELIST_ABOVE = 64
"""While more reports than this are missing, one listing (a request per thousand keys)
finds them cheaper than a GET each."""

ACK_TIMEOUT = 30.0
"""How long the coordinator waits for workers to read the verdict before it removes the
notices anyway (a worker that missed it judges by the committed index, see `worker`)."""


async def bounded(calls: Iterable[Awaitable[object]], limit: int = CONCURRENT_REQUESTS) -> None:
    """Run `calls` with at most `limit` in flight; the first error is raised."""
    slots = asyncio.Semaphore(limit)

    async def one(call: Awaitable[object]) -> None:
        async with slots:
            await call

    await asyncio.gather(*(one(c) for c in calls))


class WorkerFailed(Exception):
    """A worker reported a failure: the save ends with it, on every rank."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass
class Leftovers:
    """What a listing of the prefix found before this attempt wrote anything."""

    index: ObjectInfo | None = None
    data: list[ObjectInfo] = field(default_factory=list)
    staging: list[ObjectInfo] = field(default_factory=list)
    temporary: list[ObjectInfo] = field(default_factory=list)
    """Temp files of writers that died (local disk: ``*.tempstate<digits>``), except the
    claim's, which belong to saves racing for it right now."""


async def survey(store: Store, layout: SaveLayout) -> Leftovers:
    found = Leftovers()
    for info in await store.list_info(f"{layout.name}."):
        rest = info.key[len(layout.name):]
        if info.key == layout.index:
            found.index = info
        elif (m := DATA_FILE.match(info.key)) and m.group("name") == layout.name:
            found.data.append(info)
        elif rest.startswith(".tmp/") or rest.startswith(".tmp-"):
            found.staging.append(info)
        elif _TEMPORARY.search(info.key) and not info.key.startswith(f"{layout.claim}."):
            # A claim's temp file is another save's create-only PUT in flight (local disk):
            # removing it would fail that save with a missing file; `gc` clears dead ones.
            found.temporary.append(info)
    return found


async def prepare(store: Store, layout: SaveLayout, lease: Lease, *, overwrite: bool) -> None:
    """With the claim held, make the prefix ready for this attempt's workers (see the module
    docstring).  Everything is deleted by the version listed, so nothing this attempt writes
    later can be hit."""
    found = await survey(store, layout)
    if found.index is not None:
        if not overwrite:
            raise CheckpointExistsError.committed(store.describe(layout.index))
        # Retire the old checkpoint before touching any of its data files: from here on no
        # reader finds an index over half-replaced data.
        if not await store.delete(layout.index, if_match=found.index.etag):
            raise SaveFailedError(f"{store.describe(layout.index)} changed while this save was retiring it")
    lease.check()
    ours = {layout.notice(g) for g in range(layout.groups)}
    doomed: list[Awaitable[object]] = [store.delete(i.key, if_match=i.etag) for i in found.data]
    doomed += [store.delete(i.key) for i in found.staging if i.key not in ours]
    doomed += [store.delete(i.key, if_match=i.etag) for i in found.temporary]
    await bounded(doomed)
    uploads = await store.pending_uploads(layout.data_prefix)
    await bounded(store.abort_upload(u) for u in uploads)
    if found.data or found.staging or found.temporary or uploads:
        log.info("%s: cleared %d data file(s), %d staging object(s), %d temp file(s) and %d upload(s) left by "
                 "earlier attempts", store.describe(layout.index), len(found.data), len(found.staging),
                 len(found.temporary), len(uploads))


async def notify(store: Store, layout: SaveLayout, notice: Notice) -> dict[str, str]:
    """Write `notice` to every group's key; their etags (to remove exactly these later)."""
    written: dict[str, str] = {}
    body = notice.encode()

    async def one(key: str) -> None:
        written[key] = await store.put(key, body)

    await bounded(one(layout.notice(g)) for g in range(layout.groups))
    return written


async def collect(store: Store, layout: SaveLayout, attempt: str, options: IOOptions, lease: Lease) -> list[Report]:
    """The reports of workers 1..n-1 of `attempt`, in rank order.  Raises the failure a
    worker reported (as every rank will), or `SaveFailedError` naming the missing ranks after
    ``commit_timeout``."""
    deadline = poll.clock() + options.commit_timeout
    reports: dict[int, Report] = {}
    missing = set(range(1, layout.world_size))

    async def fetch(rank: int) -> None:
        try:
            data = await store.get(layout.report(attempt, rank))
        except CheckpointNotFoundError:
            return
        report = Report.decode(data)
        if report is not None and report.attempt == attempt and report.rank == rank:
            reports[rank] = report

    listed = True  # the first round lists: most reports may be there already
    async for _ in poll.backoff_polls(options.poll_interval, deadline, cap=poll.interval_cap(len(missing))):
        lease.check()
        if listed or len(missing) > RELIST_ABOVE:
            ranks = (layout.rank_of(attempt, k) for k in await store.list(layout.staging(attempt)))
            present = {r for r in ranks if r is not None}
            wanted = missing & present
        else:
            wanted = set(missing)
        listed = False
        await bounded(fetch(r) for r in sorted(wanted))
        failed = sorted(r for r, rep in reports.items() if rep.state != "ready")
        if failed:
            first = reports[failed[0]]
            raise WorkerFailed(first.error or Failure(type="SaveFailedError", message=f"worker {failed[0]} failed"))
        missing -= set(reports)
        if not missing:
            return [reports[r] for r in range(1, layout.world_size)]
    raise SaveFailedError(
        f"timed out after {options.commit_timeout:g} s waiting for worker(s) {_ranks(missing)} to write "
        f"{store.describe(layout.index)} (their reports under {store.describe(layout.staging(attempt))})")


def _ranks(ranks: Iterable[int]) -> str:
    ordered = sorted(ranks)
    return "[" + ", ".join(map(str, ordered[:20])) + (f", ... ({len(ordered) - 20} more)" if len(ordered) > 20 else "") + "]"


async def finish(store: Store, layout: SaveLayout, attempt: str, notices: dict[str, str], options: IOOptions) -> None:
    """After the verdict is published: wait (bounded) for every worker to acknowledge it,
    then remove this attempt's notices (exactly the versions written) and staging."""
    deadline = poll.clock() + min(ACK_TIMEOUT, options.commit_timeout)
    staging = layout.staging(attempt)
    listed: Sequence[str] = []
    acked: set[int] = set()
    async for _ in poll.backoff_polls(options.poll_interval * 4, deadline, cap=poll.interval_cap(layout.world_size)):
        listed = await store.list(staging)
        acked = {r for k in listed if (r := layout.rank_of(attempt, k, "ack")) is not None}
        if len(acked) >= layout.world_size - 1:
            break
    else:
        log.info("%d worker(s) of %s did not acknowledge the verdict in time; removing it anyway",
                 layout.world_size - 1 - len(acked), store.describe(layout.index))
    await bounded([*(store.delete(k, if_match=e) for k, e in notices.items()),
                   *(store.delete(k) for k in listed)])


async def publish(store: Store, layout: SaveLayout, notice: Notice) -> dict[str, str]:
    """Write the verdict; a failure to write a *failed* verdict is logged (the error that
    caused it matters more), one of a committed verdict raised."""
    try:
        return await notify(store, layout, notice)
    except CheckpointError:
        log.warning("could not publish the verdict of %s", store.describe(layout.index), exc_info=True)
        if notice.state == "committed":
            raise
        return {}
