"""The version of each data file a reader reads, pinned by the first answer that names it.

A reader opens a checkpoint with one GET of its index: it knows its data files' names (from
the index) but neither their versions nor their sizes.  Each read answers both
(`storage.base.ScatterResult`: the version's etag, the object's size), so

    first answer   for a data file pins its version (etag) and size
    later reads    are sent pinned to it (``If-Match`` on S3; the open file's identity on
                   local disk), and refused with `CheckpointChangedError` if it is gone
    every answer   must name the pinned version: reads in flight together, sent before any
                   answer pinned one, are compared as they land, so that two versions of one
                   file are never mixed in one reader, whichever answers first

A reader that listed its data files (a host cache or a local tier need versions before they
fetch) starts with every listed file pinned, and `complete` says that a file not listed is
missing.  The sizes learned let `engine.read` refuse an entry outside its data file before
it fetches (or, before any answer, from the answer: S3's 416, a short read).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import CheckpointChangedError
from ..storage.base import ObjectInfo, ScatterResult


@dataclass(frozen=True)
class Pin:
    """One data file's version as far as it is known: its etag ("" until an answer names
    it) and size in bytes (None until an answer states it)."""

    etag: str
    size: int | None


class Versions:
    """The pinned versions of one reader's data files (keys of its store)."""

    def __init__(self, listed: Mapping[str, ObjectInfo] | None = None) -> None:
        self._pins: dict[str, Pin] = {}
        self.complete = False
        self.reset(listed)

    def reset(self, listed: Mapping[str, ObjectInfo] | None) -> None:
        """Forget every pin; with `listed` (a listing of every data file), pin those."""
        self.complete = listed is not None
        self._pins = {k: Pin(i.etag, i.size) for k, i in (listed or {}).items()}

    def pin(self, key: str) -> Pin | None:
        return self._pins.get(key)

    def etag(self, key: str) -> str | None:
        """The version reads of `key` are pinned to, or None before an answer named one."""
        pin = self._pins.get(key)
        return pin.etag if pin is not None and pin.etag else None

    def size(self, key: str) -> int | None:
        pin = self._pins.get(key)
        return None if pin is None else pin.size

    def observe(self, key: str, result: ScatterResult, what: str) -> None:
        """Record what an answer for `key` (named `what` in messages) said of its version:
        the first etag pins it, the first size is kept.  `CheckpointChangedError` if the
        answer names another version (or, naming none, states another size) than pinned."""
        pin = self._pins.get(key)
        etag, size = result.etag, result.size
        if pin is None:
            if etag or size is not None:
                self._pins[key] = Pin(etag, size)
            return
        if etag and pin.etag and etag != pin.etag:
            raise CheckpointChangedError(f"{what} changed while it was being read (version {pin.etag}, then "
                                         f"{etag}: replaced or deleted: open the checkpoint again)")
        if size is not None and pin.size is not None and size != pin.size:
            raise CheckpointChangedError(f"{what} changed while it was being read ({pin.size} bytes, then "
                                         f"{size}: replaced or deleted: open the checkpoint again)")
        if (etag and not pin.etag) or (size is not None and pin.size is None):
            self._pins[key] = Pin(pin.etag or etag, pin.size if pin.size is not None else size)
