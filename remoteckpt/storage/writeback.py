"""Early writeback: ask the kernel to start writing a just-written range of a file to disk.

A durable save ends in fsync, which by itself waits for every dirty page of the file to
reach the disk, after the last byte was written.  Starting writeback of each block right
after it is written overlaps that disk work with the rest of the save (RocksDB's
``bytes_per_sync`` does the same), so the final fsync waits for the tail only, and dirty pages
do not pile up in memory.  Linux's ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` starts
writeback without waiting for it; it makes nothing durable (no metadata, no disk cache
flush): the fsync at commit still does that.  Where the call does not exist this is a no-op.

Python's `os` lacks the call (it has fsync and fdatasync only), hence ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

SYNC_FILE_RANGE_WRITE = 2
"""From <fcntl.h>: start writeback of the dirty pages in the range, do not wait for it."""

MIN_RANGE = 1 * 2**20
"""Ranges smaller than this are left to the final fsync: a system call (and a thread hop)
per small write would cost more than the overlap gains."""


def _load() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


_sync_file_range = _load()

available = _sync_file_range is not None
"""Whether `start` does anything on this platform."""


def wanted(length: int) -> bool:
    """Whether a range of `length` bytes is worth a `start` (callers check, then hop to a
    thread: a range not worth it costs neither)."""
    return available and length >= MIN_RANGE


def start(fd: int, offset: int, length: int) -> None:
    """Start writing bytes [offset, offset + length) of `fd` back to disk; do not wait.
    Blocking is possible (a congested device queue), so call it from a worker thread, for
    ranges that are `wanted`.  Failures are ignored: this is only a head start for the fsync
    that follows."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)

