"""The claim: which save may write a prefix, decided once, before any data.

    NAME.claim    JSON {"save_id", "world_size", "token", "host", "pid"}, created by rank 0
                  with a create-only PUT; deleted once the save commits or fails

Without it, two jobs racing for one prefix would each create some of the data files (every
data file is create-only), and each job would then have a worker that lost: both fail and
the winners' files block the prefix.  With it, exactly one job proceeds:

- rank 0 creates the claim before writing anything.  If one is there it reads it: its own
  save id and world size (a retry of this save) it takes over, and so a claim left by a
  save of this very process that has ended; another save's claim older than
  ``commit_timeout`` (a crashed save) it removes and tries again; a live one is
  `CheckpointBusyError`, raised before a byte of data is written.
- ranks > 0 wait for a claim naming their save id and world size, then write.  A live claim
  naming another save is `CheckpointBusyError` at once; a failure note from their rank 0, or
  a committed index appearing meanwhile, ends the wait too.

Workers recognise each other by save id (``save_id=`` / ``$REMOTECKPT_SAVE_ID``): jobs that
may race for one prefix must use distinct ids.  ``overwrite=True`` allows replacing a
committed checkpoint, not trampling a live save: the claim works the same with it.
Single-worker saves claim too where create-only streamed writes can race (S3-compatible
servers whose conditional CompleteMultipartUpload is not atomic: `StoreCapabilities.
atomic_streamed_create`); a single worker also takes over the claim of a single-worker save
whose process on this host is gone.  On local disk the create-only data file (a link)
decides.  Callers with a rendezvous of their own (the PyTorch DCP plugin) claim through
`acquire`/`release` on their coordinator and `forget` a claim whose save failed elsewhere.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass

from ..errors import CheckpointBusyError, CheckpointError, CheckpointExistsError, CheckpointNotFoundError, \
    SaveFailedError
from ..options import IOOptions
from ..storage.base import Store
from .layout import SaveLayout
from .poll import backoff_polls

CLAIM_ATTEMPTS = 4
"""Create-only PUTs rank 0 tries before giving up: each failed one either finds a live claim
(and stops) or removed a dead one, so only a crowd of saves all clearing dead claims at the
same moment needs more than two."""


@dataclass(frozen=True, kw_only=True)
class ClaimRecord:
    save_id: str
    world_size: int
    token: str
    host: str = ""
    pid: int = 0

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> ClaimRecord | None:
        """The record, or None for bytes that are not one (a claim being written, or junk)."""
        try:
            raw = json.loads(data)
            return cls(save_id=str(raw["save_id"]), world_size=int(raw["world_size"]), token=str(raw["token"]),
                       host=str(raw.get("host", "")), pid=int(raw.get("pid", 0)))
        except (ValueError, TypeError, KeyError):
            return None

    def is_for(self, layout: SaveLayout) -> bool:
        return self.save_id == layout.save_id and self.world_size == layout.world_size

    def describe(self) -> str:
        who = f"save id {self.save_id!r}" if self.save_id else "a save without a save id"
        where = f" from {self.host} (pid {self.pid})" if self.host else ""
        return f"{who} ({self.world_size} data files){where}"


@dataclass(frozen=True)
class HeldClaim:
    record: ClaimRecord | None
    age: float


def new_record(layout: SaveLayout) -> ClaimRecord:
    return ClaimRecord(save_id=layout.save_id, world_size=layout.world_size, token=uuid.uuid4().hex,
                       host=socket.gethostname(), pid=os.getpid())


async def read_claim(store: Store, layout: SaveLayout) -> HeldClaim | None:
    """The claim on `layout`'s prefix and its age in seconds (by the store's clock), or None."""
    infos = [i for i in await store.list_info(layout.claim) if i.key == layout.claim]
    if not infos:
        return None
    try:
        data = await store.get(layout.claim)
    except CheckpointNotFoundError:
        return None
    return HeldClaim(ClaimRecord.decode(data), max(0.0, time.time() - infos[0].mtime))


def _busy(store: Store, layout: SaveLayout, held: HeldClaim) -> CheckpointBusyError:
    holder = held.record.describe() if held.record else "another save"
    return CheckpointBusyError(
        f"{store.describe(layout.index)} is being saved by {holder}, which claimed it {held.age:.0f} s ago "
        f"({store.describe(layout.claim)}); this save (save id {layout.save_id!r}) gave up without writing. "
        "Give racing jobs distinct save ids, wait, or run remoteckpt.gc once the other save is dead.")


async def acquire(store: Store, layout: SaveLayout, options: IOOptions) -> ClaimRecord:
    """Rank 0: make the claim ours (see the module docstring) and return what it says."""
    mine = new_record(layout)
    for _ in range(CLAIM_ATTEMPTS):
        try:
            await store.put(layout.claim, mine.encode(), exclusive=True)
            _held_here.add(mine.token)
            return mine
        except CheckpointExistsError:
            pass
        held = await read_claim(store, layout)
        if held is None:
            continue  # released meanwhile
        if held.record == mine:
            _held_here.add(mine.token)
            return mine  # our own PUT, whose acknowledgement was lost
        if held.record is not None and _may_take_over(held.record, layout):
            await store.put(layout.claim, mine.encode())
            _held_here.add(mine.token)
            return mine
        if held.age <= options.commit_timeout:
            raise _busy(store, layout, held)
        # A dead save's.  Another save may have cleared it and claimed meanwhile: delete only
        # what still is the dead claim (S3 has no conditional delete, so this narrows the
        # window to one round trip rather than closing it).
        again = await read_claim(store, layout)
        if again is not None and again.record == held.record:
            await store.delete(layout.claim)
    raise CheckpointBusyError(f"{store.describe(layout.claim)}: could not claim the prefix in "
                              f"{CLAIM_ATTEMPTS} attempts; other saves keep claiming it")


def _may_take_over(record: ClaimRecord, layout: SaveLayout) -> bool:
    """Whether `record` may be taken over by this save: a claim of this process whose save is
    no longer running (it failed without releasing it), this save's own rank 0 restarted (same
    save id and world size), or a single-worker save whose process is gone (a sole writer that
    is dead writes nothing more).  Two single-worker jobs, or two threads of one, share the
    default save id, so for them the id alone proves nothing."""
    here = record.host == socket.gethostname()
    if here and record.pid == os.getpid() and record.token not in _held_here:
        return True
    if layout.world_size > 1:
        return record.is_for(layout)
    return here and record.world_size == 1 and record.pid != os.getpid() and not _process_alive(record.pid)


_held_here: set[str] = set()
"""Tokens of the claims that saves running in this process hold (on the I/O loop)."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # someone else's process, or a pid that cannot be ours
    return True


def forget(mine: ClaimRecord) -> None:
    """The save holding `mine` has ended in this process without releasing it: a later save
    of this process may take the claim over (`release` does this too)."""
    _held_here.discard(mine.token)


async def release(store: Store, layout: SaveLayout, mine: ClaimRecord) -> None:
    """Rank 0, after the commit or a failure: remove the claim if it is still ours."""
    forget(mine)
    held = await read_claim(store, layout)
    if held is not None and held.record == mine:
        await store.delete(layout.claim)


async def await_claim(store: Store, layout: SaveLayout, options: IOOptions, *, overwrite: bool = False) -> None:
    """Ranks > 0: return once rank 0 holds the claim for this save; raise if another live save
    holds it, if rank 0 failed meanwhile, or (unless overwriting) if a committed checkpoint
    appeared."""
    started = time.time()
    deadline = time.monotonic() + options.commit_timeout
    async for _ in backoff_polls(options, deadline):
        held = await read_claim(store, layout)
        if held is not None:
            if held.record is not None and held.record.is_for(layout):
                return
            if held.record is not None and held.age <= options.commit_timeout:
                raise _busy(store, layout, held)
            continue
        if not overwrite and await store.exists(layout.index):
            raise CheckpointExistsError.committed(store.describe(layout.index))
        if note := await _fresh_failure_note(store, layout, since=started - CLOCK_SKEW):
            raise SaveFailedError(f"the coordinator (worker 0) failed: {note}")
    raise SaveFailedError(
        f"timed out after {options.commit_timeout:g} s waiting for the coordinator (worker 0) to claim "
        f"{store.describe(layout.index)} ({store.describe(layout.claim)} never named save id {layout.save_id!r})")


CLOCK_SKEW = 2.0
"""Seconds by which the store's clock may trail ours: a failure note of rank 0 written up to
this long before a worker started waiting still counts as this save's (older ones are left by
an earlier attempt that rank 0 has not cleared yet)."""


async def _fresh_failure_note(store: Store, layout: SaveLayout, *, since: float) -> str | None:
    key = layout.failure(0)
    infos = [i for i in await store.list_info(key) if i.key == key and i.mtime >= since]
    if not infos:
        return None
    try:
        return (await store.get(key)).decode(errors="replace")
    except CheckpointError:
        return None
