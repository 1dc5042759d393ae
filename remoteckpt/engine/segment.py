"""The bytes a group's ranks on one host share: one file in shared memory (``/dev/shm``).

When every rank of a group read (`engine.group`) is on one host, bytes need not travel
between them at all: each rank fetches its share of the transfers straight into one
shared-memory file, and every rank then takes what it needs from there.

    layout   (PURE, `layout`) every unique unit of the group, sorted; units that follow each
             other in a data file are one run; each run starts at the next page boundary
             plus its offset's place in a page, so arrays keep the alignment they have in
             the data file
    fill     each rank fetches and verifies its transfers into the file through a shared
             mapping (the file's pages are reserved first: a full /dev/shm fails then, as an
             error every rank agrees on, never as a SIGBUS later)
    use      once every rank's fetches are done, an output array the read allocated that is
             one whole entry becomes a view of a private (copy-on-write) mapping of the
             file: the ranks share its pages until one of them writes to it; every other
             target (caller-owned arrays, partial boxes, strings) is copied from the file

The file is unlinked once every rank has mapped it; its memory is freed when the last array
viewing it is.  Until a rank writes to such an array, the host holds one copy of the bytes
for all its ranks instead of one per rank.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable

import numpy as np

from .share import Unit

SHM_DIR = "/dev/shm"
"""Linux's shared-memory file system (tmpfs): files there are memory, never written to disk."""

PAGE = mmap.PAGESIZE


def layout(units: Iterable[Unit]) -> tuple[dict[Unit, int], int]:
    """Where each unit lives in the file, and the file's size (see the module docstring)."""
    positions: dict[Unit, int] = {}
    size = 0
    last: Unit | None = None
    for unit in sorted(set(units)):
        key, offset, length = unit
        if last is not None and last[0] == key and last[1] + last[2] == offset:
            positions[unit] = positions[last] + last[2]
        else:
            positions[unit] = -(-size // PAGE) * PAGE + offset % PAGE
        size = max(size, positions[unit] + length)
        last = unit
    return positions, size


class Segment:
    """The shared-memory file `name` of `size` bytes, mapped twice: `shared` (the bytes every
    rank writes and copies from) and `private` (copy-on-write, for output arrays).  Opening
    it reserves its pages (``posix_fallocate``): OSError if /dev/shm has no room."""

    def __init__(self, name: str, size: int) -> None:
        self.path = os.path.join(SHM_DIR, name)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if size:
                os.posix_fallocate(fd, 0, size)
            length = max(size, 1)
            if os.fstat(fd).st_size < length:
                os.ftruncate(fd, length)
            self._shared = mmap.mmap(fd, length, flags=mmap.MAP_SHARED)
            self._private = mmap.mmap(fd, length, access=mmap.ACCESS_COPY)
        finally:
            os.close(fd)
        self.shared = np.frombuffer(self._shared, np.uint8)
        self.private = np.frombuffer(self._private, np.uint8)


def open_segment(name: str, size: int) -> Segment | None:
    """The segment, or None if shared memory cannot hold it (no /dev/shm, no room).  The
    file stays even then (other ranks may have it open): `unlink_segment` removes it, on
    every rank, once all have tried."""
    if not os.path.isdir(SHM_DIR):
        return None
    try:
        return Segment(name, size)
    except OSError:
        return None


def unlink_segment(name: str) -> None:
    """Remove segment `name`'s file (mapped arrays keep their memory); gone already is fine."""
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except OSError:
        pass
