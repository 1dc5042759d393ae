"""The async store interface every backend implements.

A `Store` is rooted at a directory (local path or URL); keys are '/'-separated names relative
to that root (a checkpoint's files are ``<name>.index`` and ``<name>.data-...``).  All methods
are coroutines meant to run on remoteckpt's event loop (`remoteckpt.engine.loop`); a store is
bound to the loop it was first used on.

Contract, per method (every backend passes `tests/test_store_conformance.py`):

- Reads (`size`, `get`, `read_scatter`, `read_into`) raise `CheckpointNotFoundError` for a
  missing key and never return fewer bytes silently: they report how many bytes they
  delivered, which the caller checks.  A zero-length read issues no request.
- `writer(key)` streams one object.  Nothing is visible at `key` until `commit()` returns, and
  then the whole object is (local: temp file, fsync, rename, fsync of the directory; S3: one
  PUT or one CompleteMultipartUpload).  `abort()` (or leaving an ``async with`` block on an
  exception) leaves nothing behind.  With ``exclusive=True`` the commit fails with
  `CheckpointExistsError` if `key` already exists, atomically where the backend can
  (`capabilities.conditional_put`).
- `put` is `writer` for data already in memory.
- `delete` of a missing key is not an error.  `list` returns the keys under a key prefix.
- Backend exceptions are translated by `storage.errors.translate`, the original chained.
"""

from __future__ import annotations

import builtins

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from ..errors import CorruptCheckpointError

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``[start, start + length)`` of one object."""

    key: str
    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class ScatterResult:
    """What `Store.read_scatter` delivered: bytes in all, and the CRC32C of each target as
    filled (computed while the bytes were in cache, by whichever thread moved them)."""

    delivered: int
    crcs: tuple[int, ...]


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its key, size in bytes and last-modified time (epoch seconds)."""

    key: str
    size: int
    mtime: float


@dataclass(frozen=True)
class PendingUpload:
    """An upload begun but neither completed nor aborted (S3 multipart)."""

    key: str
    upload_id: str
    initiated: float


@dataclass(frozen=True, kw_only=True)
class StoreCapabilities:
    atomic_rename: bool
    """A rename replaces a key atomically (local POSIX disk)."""
    conditional_put: bool
    """Create-only writes are atomic on the server (S3 ``If-None-Match: *``)."""
    atomic_streamed_create: bool = True
    """Of two create-only *streamed* writes of one key racing (`Store.writer` with
    ``exclusive=True``: a multipart upload on S3), exactly one lands.  When False, a
    single-worker save claims its prefix first (`protocol.claim`), as multi-worker saves do."""


class ObjectWriter(abc.ABC):
    """Streams one object; see the module docstring for visibility and atomicity."""

    key: str

    @abc.abstractmethod
    async def write(self, data: Buffer) -> None:
        """Append `data`.  The writer may keep a reference to the buffer (not a copy) until
        `commit` or `abort` returns: the caller must not change it before then."""

    @abc.abstractmethod
    async def commit(self) -> None:
        """Make the object durable and visible, whole."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Discard everything written; idempotent."""

    async def __aenter__(self) -> "ObjectWriter":
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            await self.commit()
        else:
            await self.abort()


def too_large(what: str, size: int, max_size: int) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"{what} is {size} bytes, more than the {max_size} such a file can take")


class Store(abc.ABC):
    """An async byte store rooted at `url`; see the module docstring for the contract."""

    url: str
    """The root, for messages: never contains credentials."""
    capabilities: StoreCapabilities

    def describe(self, key: str) -> str:
        """`key` as a full path or URL, for error messages."""
        return f"{self.url.rstrip('/')}/{key}"

    @abc.abstractmethod
    async def size(self, key: str) -> int: ...

    @abc.abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    async def get(self, key: str, *, max_size: int | None = None) -> bytes:
        """The whole object.  With `max_size`, an object larger than that is refused
        (`CorruptCheckpointError`) before its bytes are read: callers bound what a hostile
        file can make them allocate."""

    async def read_into(self, key: str, start: int, out: memoryview) -> int:
        """Read up to ``len(out)`` bytes at `start` into `out`; return the count read."""
        return (await self.read_scatter(key, start, [(start, out)])).delivered

    @abc.abstractmethod
    async def read_scatter(self, key: str, start: int, targets: Sequence[tuple[int, memoryview]]) -> ScatterResult:
        """Fill every ``(offset, view)`` of `targets` (sorted, disjoint, none before `start`)
        from `key`, in one request where the backend allows (bytes between targets are
        discarded).  `delivered` is the sum of the views' lengths unless the object ends
        early; `crcs` are the CRC32C of each view's bytes.  No request for empty targets."""

    @abc.abstractmethod
    def writer(self, key: str, *, exclusive: bool = False) -> ObjectWriter: ...

    async def put(self, key: str, data: Buffer | Sequence[Buffer], *, exclusive: bool = False) -> None:
        chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
        async with self.writer(key, exclusive=exclusive) as w:
            for chunk in chunks:
                await w.write(chunk)

    @abc.abstractmethod
    async def delete(self, key: str) -> None: ...

    @abc.abstractmethod
    async def list(self, prefix: str = "") -> builtins.list[str]:
        """Keys (relative to the root) that start with `prefix`, sorted."""

    @abc.abstractmethod
    async def list_info(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        """`list` with sizes and modification times."""

    async def pending_uploads(self, prefix: str = "") -> builtins.list[PendingUpload]:
        """Uploads under `prefix` begun and never finished (none where the backend has none)."""
        return []

    async def abort_upload(self, upload: PendingUpload) -> None:
        """Discard a pending upload and its parts."""

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
