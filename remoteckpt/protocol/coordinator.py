"""The coordinator's steps (rank 0), around its own worker's part.

    prepare   with the claim held: list the prefix once; refuse a committed index (unless
              overwriting: then retire it, index first); clear what dead attempts left
              (their data files, by the versions listed; their staging; their uploads)
    invite    write the group notices: "attempt A is writing"
    collect   every worker's report (`await_keys`: listings while many are missing, spaced
              further apart as they go, each report fetched and its table decoded as soon
              as it is seen; a GET per report once few are missing); a failed report ends
              the wait
    commit    merge the tables, renew the lease, fence the data files, commit the index
    publish   the verdict on every notice; once the workers have read it (each acknowledges
              with a key of its own, awaited like the reports), remove the notices, the
              staging and the claim

The waits cost the coordinator a few listings in all, not one per poll: while many keys are
missing it asks for `PROBES` of them by name per round (a request each) and lists only once
one of them was there (reports: each is fetched as soon as it is seen), or once all of a
round's were (most have come: the end is near; acknowledgements, whose presence is all that
matters, are listed only then); listings are `LIST_GAP` apart at least, that gap doubling
after each.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field

from ..errors import CheckpointError, CheckpointExistsError, CheckpointNotFoundError, SaveFailedError
from ..format.bundle import BundleIndex
from ..options import IOOptions
from ..storage.base import ObjectInfo, Store
from . import poll
from .layout import DATA_FILE, SaveLayout
from .lease import Lease
from .records import Failure, Notice, Report
from .worker import read_table

log = logging.getLogger("remoteckpt")

CONCURRENT_REQUESTS = 64
"""Small requests (notices, reports, deletes) the coordinator keeps in flight at once."""

_TEMPORARY = re.compile(r"\.tempstate\d+$")

RELIST_ABOVE = 64
"""While more keys than this are missing, listings (a request per thousand keys) find them
cheaper than a GET each; with this many or fewer, each is asked for by name every round."""

PROBES = 2
"""Missing keys asked for by name per round while many are missing: whether (and, by the share
found, how many) have arrived since the last listing, for a request each."""

LIST_GAP = (0.25, 8.0)
"""Seconds between two listings of the keys being awaited: the first gap, doubled after every
listing up to the second."""

ROUND_CAP = 0.5
"""Longest sleep between two rounds of the coordinator's waits: once few keys are missing, one
that arrives is seen within this (the commit follows the last report by about this much)."""

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
    doomed.append(store.delete_many(i.key for i in found.staging if i.key not in ours))
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


async def await_keys(store: Store, prefix: str, rank_of: Callable[[str], int | None], missing: set[int],
                     fetch: Callable[[int], Awaitable[bool]], *, first: float, deadline: float,
                     check: Callable[[], None] = lambda: None, fetch_listed: bool = True) -> None:
    """Wait until every rank of `missing` has its key, removing each as it comes, or until
    `deadline`.  Keys are found by listing `prefix` (`rank_of` names the rank of a listed key)
    while many are missing, by asking for each once few are (see the module docstring):
    ``fetch(rank)`` asks, and returns whether the key was there (and taken).  A listed key is
    fetched too, unless not `fetch_listed`: then its presence is all that is awaited, and
    listings wait until most keys are there (every key asked for in a round was)."""
    start, last_list = poll.clock(), None
    gap = LIST_GAP[0]
    hits = last_hits = 0

    async def take(ranks: Iterable[int]) -> int:
        found: list[int] = []

        async def one(rank: int) -> None:
            if await fetch(rank):
                found.append(rank)

        await bounded(one(r) for r in ranks)
        missing.difference_update(found)
        return len(found)

    async for _ in poll.backoff_polls(first, deadline, cap=ROUND_CAP):
        if len(missing) <= RELIST_ABOVE:
            await take(sorted(missing))
        else:
            since = poll.clock() - (start if last_list is None else last_list)
            arriving = fetch_listed and (last_list is None or (hits and since >= gap))
            # Reports: list as soon as most are there (the commit waits on the last ones).
            # Acknowledgements, awaited only to clean up, trickle in as each worker polls: their
            # listings keep the growing gap too, so a slow trickle costs a few listings, not one
            # every round.
            most_there = last_hits == PROBES and since >= (LIST_GAP[0] if fetch_listed else gap)
            if arriving or most_there:
                present = {r for key in await store.list(prefix) if (r := rank_of(key)) is not None}
                if fetch_listed:
                    await take(sorted(missing & present))
                else:
                    missing.difference_update(present)
                last_list, gap, hits, last_hits = poll.clock(), min(2 * gap, LIST_GAP[1]), 0, 0
            else:
                last_hits = await take(random.sample(sorted(missing), PROBES))
                hits += last_hits
        check()
        if not missing:
            return


async def collect(store: Store, layout: SaveLayout, attempt: str, options: IOOptions, lease: Lease,
                  tables: dict[int, BundleIndex] | None = None) -> list[Report]:
    """The reports of workers 1..n-1 of `attempt`, in rank order (their tables decoded into
    `tables` as they come, by rank).  Raises the failure a worker reported (as every rank
    will), or `SaveFailedError` naming the missing ranks after ``commit_timeout``."""
    deadline = poll.clock() + options.commit_timeout
    reports: dict[int, Report] = {}
    missing = set(range(1, layout.world_size))

    async def fetch(rank: int) -> bool:
        try:
            data = await store.get(layout.report(attempt, rank))
        except CheckpointNotFoundError:
            return False
        report = Report.decode(data)
        if report is None or report.attempt != attempt or report.rank != rank:
            return False  # not (yet) a whole report of this attempt
        if tables is not None and report.state == "ready":
            tables[rank] = read_table(report.table, rank, store.describe(layout.index))
        reports[rank] = report
        return True

    def check() -> None:
        lease.check()
        failed = sorted(r for r, rep in reports.items() if rep.state != "ready")
        if failed:
            first = reports[failed[0]]
            raise WorkerFailed(first.error or Failure(type="SaveFailedError", message=f"worker {failed[0]} failed"))

    await await_keys(store, layout.prefix_of(attempt), lambda key: layout.rank_of(attempt, key), missing,
                     fetch, first=options.poll_interval, deadline=deadline, check=check)
    if not missing:
        return [reports[r] for r in range(1, layout.world_size)]
    raise SaveFailedError(
        f"timed out after {options.commit_timeout:g} s waiting for worker(s) {_ranks(missing)} to write "
        f"{store.describe(layout.index)} (their reports under {store.describe(layout.staging(attempt))})")


def _ranks(ranks: Iterable[int]) -> str:
    ordered = sorted(ranks)
    more = f", ... ({len(ordered) - 20} more)" if len(ordered) > 20 else ""
    return "[" + ", ".join(map(str, ordered[:20])) + more + "]"


async def finish(store: Store, layout: SaveLayout, attempt: str, notices: dict[str, str], options: IOOptions,
                 reported: Collection[int] | None = None) -> None:
    """After the verdict is published: wait (bounded) for every worker to acknowledge it,
    then remove this attempt's notices (exactly the versions written) and staging: the
    reports of `reported` and the acknowledgements by name, or (`reported` None: an attempt
    that failed, whose reports are not all known) whatever a listing of the staging finds."""
    deadline = poll.clock() + min(ACK_TIMEOUT, options.commit_timeout)
    waiting = set(range(1, layout.world_size))

    async def acknowledged(rank: int) -> bool:
        return await store.exists(layout.ack(attempt, rank))

    await await_keys(store, layout.prefix_of(attempt, "ack"), lambda key: layout.rank_of(attempt, key, "ack"), waiting,
                     acknowledged, first=options.poll_interval * 4, deadline=deadline, fetch_listed=False)
    if waiting:
        log.info("%d worker(s) of %s did not acknowledge the verdict in time; removing it anyway",
                 len(waiting), store.describe(layout.index))
    if reported is None:
        leftovers = await store.list(layout.staging(attempt))
    else:
        leftovers = [*(layout.report(attempt, r) for r in reported),
                     *(layout.ack(attempt, r) for r in range(1, layout.world_size) if r not in waiting)]
    await asyncio.gather(bounded(store.delete(k, if_match=e) for k, e in notices.items()),
                         store.delete_many(leftovers))


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
