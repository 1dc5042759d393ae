"""Progress of saves, loads and copies: events for training loops, a bar for terminals.

A callback receives a `ProgressEvent` each time a batch of bytes moves (every few MiB), on
remoteckpt's I/O thread: keep it quick, and hand anything slow to your own thread.

    def report(event):
        if event.kind == "committed":
            print(f"{event.prefix}: {event.total / 1e9:.1f} GB committed")
    remoteckpt.save(tensors, prefix, progress=report)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TextIO

Kind = Literal["staged", "written", "committed", "read", "durable"]


@dataclass(frozen=True)
class ProgressEvent:
    """`done` of `total` bytes of one worker's part of one checkpoint.

    kinds: ``staged`` (tensors snapshotted or planned), ``written`` (bytes durable in data
    files), ``committed`` (the checkpoint is committed: done == total), ``read`` (restored),
    ``durable`` (a save with a local tier: the drain has committed it remotely; docs/tiered.md)."""

    prefix: str
    rank: int
    world_size: int
    kind: Kind
    done: int
    total: int


ProgressCallback = Callable[[ProgressEvent], None]


class Reporter:
    """Turns byte counts into events for one (prefix, rank, kind); never raises."""

    def __init__(self, callback: ProgressCallback | None, prefix: str, rank: int = 0, world_size: int = 1) -> None:
        self._callback = callback
        self._prefix, self._rank, self._world = prefix, rank, world_size
        self._done: dict[str, int] = {}

    def __bool__(self) -> bool:
        return self._callback is not None

    def emit(self, kind: Kind, done: int, total: int) -> None:
        if self._callback is None:
            return
        try:
            self._callback(ProgressEvent(self._prefix, self._rank, self._world, kind, done, total))
        except Exception:  # a broken callback must not break a save
            self._callback = None

    def add(self, kind: Kind, n: int, total: int) -> None:
        if self._callback is None:
            return
        self._done[kind] = self._done.get(kind, 0) + n
        self.emit(kind, self._done[kind], total)


class ProgressBar:
    """A one-line bar (bytes, rate, ETA) on a terminal; silent when `stream` is not a tty."""

    def __init__(self, label: str, stream: TextIO | None = None, *, min_interval: float = 0.1) -> None:
        self._stream = stream or sys.stderr
        self._enabled = self._stream.isatty()
        self._label = label
        self._start = time.monotonic()
        self._last = 0.0
        self._min_interval = min_interval

    def __call__(self, event: ProgressEvent) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        if now - self._last < self._min_interval and event.done < event.total:
            return
        self._last = now
        elapsed = max(now - self._start, 1e-6)
        rate = event.done / elapsed
        fraction = event.done / event.total if event.total else 1.0
        eta = (event.total - event.done) / rate if rate > 0 else 0.0
        width = 24
        bar = "#" * int(fraction * width) + "-" * (width - int(fraction * width))
        self._stream.write(f"\r{self._label} {event.kind:<9} [{bar}] {_size(event.done)}/{_size(event.total)} "
                           f"{_size(rate)}/s ETA {eta:4.0f}s ")
        self._stream.flush()

    def close(self) -> None:
        if self._enabled:
            self._stream.write("\n")
            self._stream.flush()


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}TiB"
