"""The claim: which save attempt may write a prefix, decided once, before any data.

The coordinator (rank 0) creates ``NAME.claim`` create-only and holds it as a `lease.Lease`.
If a claim is there:
  - its own write whose acknowledgement was lost (its attempt token): it is ours;
  - a claim of a save of this very process that has ended (it failed without releasing
    it), or one whose process on this host is gone: taken over at once;
  - a claim of a save running in this very process: busy at once;
  - otherwise it is watched (`lease.watch`): renewed meanwhile -> `CheckpointBusyError`,
    raised before a byte is written; unchanged for ``lease_timeout`` -> dead, taken over with
    a conditional PUT on the version watched (two saves taking over at once: one wins).
A dead attempt's leftovers never matter to the new one: the new attempt has its own token,
and its coordinator clears the dead attempt's data files before its workers write
(`coordinator.clear_leftovers`).

Workers (ranks > 0) never read the claim to start: they wait for their group's notice
(`layout.notice`) to name an attempt of their save id and world size in state "writing".  A
notice of another job sends them to the claim, watched like the coordinator does: alive is
`CheckpointBusyError`, a committed index `CheckpointExistsError`.

Workers recognise each other by save id (``save_id=`` / ``$REMOTECKPT_SAVE_ID`` / the
launcher's run id): jobs that may race for one prefix need distinct ids.  Callers with a
rendezvous of their own (the PyTorch DCP plugin) claim through `acquire` on their coordinator
and tell their workers the attempt themselves.
"""

from __future__ import annotations

import os
import random
import socket
import uuid
from collections.abc import Container

from ..errors import (
    CheckpointBusyError,
    CheckpointChangedError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    SaveFailedError,
)
from ..options import IOOptions
from ..storage.base import Store, StoredObject
from . import poll
from .layout import SaveLayout
from .lease import Lease, Verdict, watch
from .records import MAX_RECORD_BYTES, ClaimRecord, Failure, Notice

FIRST_LOOK = 0.25
"""Share of the lease a worker waits for its group's notice before it first looks for a
committed index or another job's claim itself (plus its own share of `poll.spread`; 1 s at
least): a coordinator that is coming has invited it by then, so a join costs no look.  What
stops a coordinator before it invites (a committed checkpoint, another job's live claim) the
workers find by this look, a quarter lease later than their coordinator did; another job's
claim is then watched for a whole lease anyway.  (A failure of the coordinator's own `check`,
which they could not see, is published to them as a failed verdict instead.)"""

CLAIM_ATTEMPTS = 4
"""Create-only PUTs the coordinator tries before giving up: each failed one either finds a
live claim (and stops) or took over / saw the release of a dead one, so only a crowd of saves
all clearing dead claims at the same moment needs more than two."""

_held_here: set[str] = set()
"""Attempt tokens of the claims that saves running in this process hold (on the I/O loop)."""


def new_attempt() -> str:
    return uuid.uuid4().hex[:20]


async def read_claim(store: Store, layout: SaveLayout) -> tuple[ClaimRecord | None, StoredObject] | None:
    """The claim's record (None if its bytes are not one) and the object, or None."""
    try:
        held = await store.get_object(layout.claim, max_size=MAX_RECORD_BYTES)
    except CheckpointNotFoundError:
        return None
    return ClaimRecord.decode(held.data), held


def lease_of(record: ClaimRecord | None, options: IOOptions) -> float:
    """How long to watch a claim before judging it dead: the lease its holder stated (junk,
    which states none, is watched for this save's own lease timeout)."""
    return record.lease if record is not None else options.lease_timeout


def busy(store: Store, layout: SaveLayout, record: ClaimRecord | None) -> CheckpointBusyError:
    holder = record.describe() if record else "another save"
    return CheckpointBusyError(
        f"{store.describe(layout.index)} is being saved by {holder}, which holds "
        f"{store.describe(layout.claim)} and keeps renewing it; this save (save id {layout.save_id!r}) gave up "
        "without writing. Give racing jobs distinct save ids, or wait for the other save to end.")


def _holder_here(record: ClaimRecord) -> bool:
    return record.host == socket.gethostname()


def _running_here(record: ClaimRecord) -> bool:
    """A claim held by a save running in this very process (known alive without watching)."""
    return _holder_here(record) and record.pid == os.getpid() and record.attempt in _held_here


def _may_take_over_now(record: ClaimRecord) -> bool:
    """A claim whose holder is known to be finished without watching it: a save of this
    process that has ended (it failed without releasing it), or a process of this host that
    is gone (no worker of its attempt can commit without it: fencing keeps the others out).
    A live process of this host is watched like any other holder: it may be paused."""
    if not _holder_here(record):
        return False
    if record.pid == os.getpid():
        return record.attempt not in _held_here
    return not _process_alive(record.pid)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # someone else's process, or a pid that cannot be ours
    return True


async def acquire(store: Store, layout: SaveLayout, options: IOOptions) -> Lease:
    """The coordinator: make the claim this attempt's (see the module docstring) and return
    its lease, renewing in the background."""
    mine = ClaimRecord(save_id=layout.save_id, world_size=layout.world_size, attempt=new_attempt(),
                       host=socket.gethostname(), pid=os.getpid(), lease=options.lease_timeout)
    for _ in range(CLAIM_ATTEMPTS):
        try:
            etag = await store.put(layout.claim, mine.encode(), exclusive=True)
            return _held(store, layout, mine, etag, options)
        except CheckpointExistsError:
            pass
        found = await read_claim(store, layout)
        if found is None:
            continue  # released meanwhile
        record, held = found
        if record is not None and record.attempt == mine.attempt:
            return _held(store, layout, mine, held.etag, options)  # our PUT, its acknowledgement lost
        if record is not None and _running_here(record):
            raise busy(store, layout, record)
        if record is None or not _may_take_over_now(record):
            verdict = await watch(store, layout.claim, held.etag, lease_of(record, options))
            if verdict is Verdict.ALIVE:
                again = await read_claim(store, layout)
                raise busy(store, layout, again[0] if again else record)
            if verdict is Verdict.GONE:
                continue
        try:  # a dead claim: replace exactly the version judged dead
            etag = await store.put(layout.claim, mine.encode(), if_match=held.etag)
            return _held(store, layout, mine, etag, options)
        except CheckpointChangedError:
            continue  # another save took it over first, or it was released
    found = await read_claim(store, layout)
    raise busy(store, layout, found[0] if found else None)


def _held(store: Store, layout: SaveLayout, record: ClaimRecord, etag: str, options: IOOptions) -> Lease:
    _held_here.add(record.attempt)
    lease = Lease(store, layout.claim, record, etag, options.lease_timeout)
    lease.start()
    return lease


def forget(lease: Lease) -> None:
    """The save holding `lease` has ended in this process without releasing it: a later save
    of this process may take the claim over at once (`release` does this too)."""
    _held_here.discard(lease.attempt)


async def release(lease: Lease) -> None:
    """After the commit or a failure: stop renewing, delete the claim if still ours."""
    forget(lease)
    await lease.release()


async def join(store: Store, layout: SaveLayout, options: IOOptions, *, overwrite: bool,
               concluded: Container[str] = ()) -> tuple[str, Failure | None]:
    """A worker (rank > 0): wait for its group's notice to name an attempt of this save in
    state "writing" and return its token, or an attempt that failed before this worker came
    (its claim still held: the coordinator is waiting for acknowledgements), with its
    failure.  Attempts in `concluded` (their verdict read already) are an earlier save's.
    Raises `CheckpointBusyError` if another live save holds the prefix,
    `CheckpointExistsError` if a committed checkpoint is there (unless overwriting),
    `SaveFailedError` when nobody came within ``commit_timeout``."""
    start = poll.clock()
    deadline = start + options.commit_timeout
    # A look at the index and the claim, in case rank 0 never comes (a committed checkpoint, another
    # job's save): soon, at a time of this worker's own within the spread every worker's looks take.
    spread = poll.spread(layout.world_size)
    first_look = max(1.0, FIRST_LOOK * options.lease_timeout)
    next_look = start + first_look + random.uniform(0.0, spread)
    # The first sleep is two poll intervals: the coordinator's path to the invitation is several
    # round trips (claim, listing, notices), so a look sooner finds nothing new.
    kind = wait_kind(store, layout, "join")
    async for _ in poll.backoff_polls(2 * options.poll_interval, deadline, cap=poll.interval_cap(layout.world_size),
                                      share=poll.WAIT_SHARE, not_before=poll.waits.not_before(kind, start)):
        notice = await read_notice(store, layout)
        ours = notice is not None and notice.save_id == layout.save_id and notice.world_size == layout.world_size
        if notice is not None and ours:
            if notice.state == "writing":
                poll.waits.learn(kind, poll.clock() - start)
                return notice.attempt, None
            if notice.state == "failed" and notice.attempt not in concluded:
                found = await read_claim(store, layout)
                if found is not None and found[0] is not None and found[0].attempt == notice.attempt:
                    return notice.attempt, notice.error or Failure(type="SaveFailedError", message="the save failed")
            # Otherwise the end of an earlier attempt, left behind (its coordinator died before
            # removing it): wait for this one, looking at the index and the claim on schedule
            # (that attempt may have committed the step).
        if (notice is not None and not ours) or poll.clock() >= next_look:
            looked_early = poll.clock() >= start + first_look
            next_look = poll.clock() + max(options.lease_timeout / 2, spread) * random.uniform(1.0, 1.5)
            if not overwrite and looked_early and await store.exists(layout.index):
                raise CheckpointExistsError.committed(store.describe(layout.index))
            await _refuse_foreign_claim(store, layout, options)
    raise SaveFailedError(
        f"timed out after {options.commit_timeout:g} s waiting for the coordinator (worker 0) to start saving "
        f"{store.describe(layout.index)} ({store.describe(layout.my_notice)} never named save id {layout.save_id!r})")


def wait_kind(store: Store, layout: SaveLayout, what: str) -> tuple[str, str, str, int, int]:
    """What names one of a worker's waits among the waits `poll.waits` remembers: the step
    (`what`), the directory, and the job and worker."""
    return what, store.url, layout.save_id, layout.world_size, layout.rank


async def read_notice(store: Store, layout: SaveLayout) -> Notice | None:
    try:
        return Notice.decode(await store.get(layout.my_notice, max_size=MAX_RECORD_BYTES))
    except CheckpointNotFoundError:
        return None


async def _refuse_foreign_claim(store: Store, layout: SaveLayout, options: IOOptions) -> None:
    """Raise `CheckpointBusyError` if another job's claim on the prefix is alive."""
    found = await read_claim(store, layout)
    if found is None:
        return
    record, held = found
    if record is not None and record.same_job(layout.save_id, layout.world_size):
        return  # ours (our coordinator is about to write the notices), or our job's dead one
    if record is not None and _running_here(record):
        raise busy(store, layout, record)
    if await watch(store, layout.claim, held.etag, lease_of(record, options)) is Verdict.ALIVE:
        again = await read_claim(store, layout)
        if again is not None and again[0] is not None and not again[0].same_job(layout.save_id, layout.world_size):
            raise busy(store, layout, again[0])
