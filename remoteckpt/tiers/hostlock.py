"""A checkpoint's lock among the workers of one host, for what they read or write once for all.

    TIER/NAME.lock   empty; `flock` on it is the lock

Its users (per-host tiers): the first worker of a host to take it fetches the local commit's
index for the host (`hosts.index_once_per_host`); under DCP, the holder is the host's one
looker for the local commit, holding it through that wait (`collective`); each worker adds
what it sent to the durable marker under it (`sent.mark_durable_with`), and eviction removes
the checkpoint under it (`layout.delete_local`).  Only the looker holds it for long, and no
other user of the same checkpoint's lock can come before the looker is done (the drain that
marks it durable needs every worker's report, the looker's included).

`flock` belongs to an open file description, so every `HostLock` is a holder of its own: the
workers may be processes or tasks of one process, and a dead holder's lock goes with it.  A
forked child closes its copies at once, so that a process forked while a lock is held (a
DataLoader's workers) never keeps it.  A file unlinked while held (eviction) is noticed by the
next taker, which opens the path anew.  The lock saves requests and keeps a marker's
additions together; it guards no data: a wait for it is bounded, then the worker goes on
without it, and a file system without `flock` makes every taker its holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator

log = logging.getLogger("remoteckpt")

LOCK = ".lock"

LOCK_POLL_FIRST, LOCK_POLL_MAX = 0.002, 0.05
"""Seconds between tries of a lock another worker holds: the short holders hold it for a GET
of a small object or a local write, milliseconds."""

LOCK_TIMEOUT = 60.0
"""Seconds a worker waits for a lock before it goes on without it (logged): a holder that never
lets go (a process stopped, not dead) must not stop the host's saves."""

UNSUPPORTED = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})
"""`flock` errors of a file system that has no such locks (NFS without lockd, Lustre mounted
with ``noflock``)."""

_open: weakref.WeakSet[HostLock] = weakref.WeakSet()
_guard = threading.Lock()
"""Held while a descriptor is opened and registered, or closed and unregistered, and across a
fork: a child never inherits a descriptor it does not know of, nor closes one twice."""


class HostLock:
    """Checkpoint `prefix`'s lock (see the module docstring)."""

    def __init__(self, prefix: str) -> None:
        self.path = prefix + LOCK
        self.held = False
        self._fd: int | None = None
        self._open()

    def _open(self) -> None:
        with _guard:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            _open.add(self)

    def try_take(self) -> bool:
        """Take the lock if no other holder has it; whether this one holds it now."""
        while not self.held and self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno not in UNSUPPORTED:
                    raise
                log.debug("%s: no flock on this file system (%s); going on unlocked", self.path, exc)
                self.held = True
                break
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = -1
            if current == os.fstat(self._fd).st_ino:
                self.held = True
            else:  # unlinked (its checkpoint evicted) or replaced meanwhile: the path's file is the lock
                self.close()
                self._open()
        return self.held

    async def take(self, timeout: float = LOCK_TIMEOUT) -> bool:
        """Wait (bounded) for the lock; whether it is held (else logged: the caller goes on)."""
        deadline, pause = time.monotonic() + timeout, LOCK_POLL_FIRST
        while not self.try_take():
            if time.monotonic() >= deadline:
                log.warning("%s was held by another worker of this host for %g s; going on without it",
                            self.path, timeout)
                return False
            await asyncio.sleep(pause)
            pause = min(2 * pause, LOCK_POLL_MAX)
        return True

    def unlink(self) -> None:
        """Remove the lock's file, while holding it (its checkpoint is gone)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def close(self) -> None:
        """Let go of the lock (if held) and of the file."""
        with _guard:
            fd, self._fd, self.held = self._fd, None, False
            _open.discard(self)
            if fd is not None:
                os.close(fd)


def _close_in_child() -> None:
    for lock in list(_open):
        fd, lock._fd, lock.held = lock._fd, None, False
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
    _open.clear()
    _guard.release()


os.register_at_fork(before=_guard.acquire, after_in_parent=_guard.release, after_in_child=_close_in_child)


@contextlib.asynccontextmanager
async def host_locked(prefix: str, timeout: float = LOCK_TIMEOUT) -> AsyncIterator[HostLock | None]:
    """Checkpoint `prefix`'s `HostLock` for the block if it could be taken, else None (its
    directory gone or unwritable, or the wait ran out: the caller goes on without it)."""
    try:
        lock: HostLock | None = HostLock(prefix)
    except OSError as exc:
        log.debug("%s: no lock (%s)", prefix + LOCK, exc)
        lock = None
    try:
        yield lock if lock is not None and await lock.take(timeout) else None
    finally:
        if lock is not None:
            lock.close()
