"""The async store interface every backend implements.

A `Store` is rooted at a directory (local path or URL); keys are '/'-separated names relative
to that root (a checkpoint's files are ``<name>.index`` and ``<name>.data-...``).  All methods
are coroutines meant to run on remoteckpt's event loop (`remoteckpt.engine.loop`); a store is
bound to the loop it was first used on.

Contract, per method (every backend passes `tests/test_store_conformance.py`):

- Reads (`size`, `get`, `read_scatter`, `read_into`) raise `CheckpointNotFoundError` for a
  missing key and never return fewer bytes silently: they report how many bytes they
  delivered, which the caller checks.  A zero-length read issues no request.
- Every object has an *etag*, the identity of one version of it: S3's ETag (unquoted), on local
  disk ``inode.mtime_ns.size`` (a replaced file is a new inode).  `head`, `list_info`,
  `get_object`, `read_scatter` and a committed writer report it; it is never assumed to be a
  digest.  `read_scatter` reports the version its bytes came from and the object's size as
  the answer stated it (`ScatterResult`), so that a reader can pin every later read of the
  object to the version its first read met, without listing or HEAD first.
- `writer(key)` streams one object.  Nothing is visible at `key` until `commit()` returns, and
  then the whole object is (local: temp file, fsync, rename, fsync of the directory; S3: one
  PUT or one CompleteMultipartUpload); the writer's `etag` is then the new version's.
  `abort()` (or leaving an ``async with`` block on an exception) leaves nothing behind.
  With ``exclusive=True`` the commit fails with `CheckpointExistsError` if `key` already
  exists; with ``if_match=ETAG`` it fails with `CheckpointChangedError` unless `key` is that
  version.  Both are atomic where `capabilities.conditional_writes` says so.
- `writer.copy(source, start, length)` appends bytes ``[start, start + length)`` of another
  object of the same store, as `write` would, but without them passing through this process
  where `writer.server_side_copy` says so (S3: UploadPartCopy; local disk: copy_file_range,
  a reflink where the file system shares blocks); elsewhere it reads and writes them.  A
  copy may begin only where `bytes_before_copy()` is 0 (S3: at a part boundary), and one
  shorter than `copy_granule` must be the last thing written (S3: the last part).  With
  `etag`, the bytes come from that version of `source` or `CheckpointChangedError` is raised.
- `put` is `writer` for data already in memory, returning the new etag.
- `delete` of a missing key is not an error; with `if_match` it deletes only that version
  and returns False if another version is there.  `delete_many` removes keys whatever their
  version, in as few requests as the backend allows.  `list` returns the keys under a key
  prefix.
- Backend exceptions are translated by `storage.errors.translate`, the original chained.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType

from ..errors import CheckpointNotFoundError, CorruptCheckpointError

Buffer = bytes | bytearray | memoryview

DELETE_CONCURRENCY = 64
"""Deletes in flight in `Store.delete_many` where a backend deletes one key per request: as
many as an S3 client's connection pool, more than a local disk needs."""


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
    """What `Store.read_scatter` delivered: bytes in all, the CRC32C of each target as filled
    (computed while the bytes were in cache, by whichever thread moved them), and the version
    read: its `etag` (as `head` reports it) and `size`, the whole object's length as the
    answer stated it (S3: after the slash of Content-Range; local disk: ``fstat`` of the file
    read).  A range reaching past the end of the object delivers fewer bytes (none when it
    starts at or past the end) and still states `size` where the backend can (S3's 416
    answers ``Content-Range: bytes */N``).  `etag` is "" only when the answer named no
    version (S3's 416, or no request sent); `size` None when it stated no length."""

    delivered: int
    crcs: tuple[int, ...]
    etag: str
    size: int | None

    @staticmethod
    def nothing(targets: Sequence[tuple[int, memoryview]]) -> "ScatterResult":
        """The result of a read that sent no request (empty targets)."""
        return ScatterResult(0, tuple(0 for _ in targets), "", None)


PROBE_PREFIX = ".remoteckpt-probe-"
"""Scratch objects a store writes beside the checkpoints to learn what the server enforces
(S3's conditional-write probe) and deletes at once; one left by a process that died in between
is `gc`'s."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object: its key, size in bytes, last-modified time (epoch seconds, by the store's
    clock: for display and `gc`'s age, never to judge whether a save is alive) and etag."""

    key: str
    size: int
    mtime: float
    etag: str = ""


@dataclass(frozen=True)
class StoredObject:
    """An object's bytes and the etag of the version they came from."""

    data: bytes
    etag: str


@dataclass(frozen=True)
class PendingUpload:
    """An upload begun but neither completed nor aborted (S3 multipart)."""

    key: str
    upload_id: str
    initiated: float


@dataclass(frozen=True, kw_only=True)
class StoreCapabilities:
    """What a backend guarantees; each flag decides what the save protocol does there."""

    conditional_writes: bool
    """Create-only writes, ``if_match`` writes and ``if_match`` deletes of one object are
    atomic (local disk: ``link()`` and a lock; S3: ``If-None-Match`` / ``If-Match``, checked
    by a probe at first use).  Without them saves that can race (several workers, a claim)
    are refused: they would only pretend to be safe."""


class ObjectWriter(abc.ABC):
    """Streams one object; see the module docstring for visibility and atomicity."""

    key: str
    etag: str = ""
    """The committed version's etag (set by `commit`)."""

    @abc.abstractmethod
    async def write(self, data: Buffer, release: Callable[[], None] | None = None) -> None:
        """Append `data`.  The writer may keep a reference to the buffer (not a copy) until
        `commit` or `abort` returns: the caller must not change it before then.

        `release`, for a buffer the caller made for this write and counts in its memory
        budget (`engine.budget`): called exactly once, on the event loop, as soon as the
        writer keeps no reference to `data`: when `write` returns (or fails) for a writer that
        keeps none, else once the upload parts holding it are sent, failed or cancelled.  A
        writer never waits for more of the caller's bytes while it keeps such a buffer (what
        would wait in a part still being filled is copied), so a caller that waits on its
        budget before its next write waits only for uploads in flight."""

    checks_while_writing: bool = False
    """Whether `write_checked` runs each piece's check and its write together in one worker
    thread (a local file), so that a caller checksumming its bytes should hand them over
    with `write_checked` rather than checksum a block ahead and `write` it."""

    async def write_checked(self, data: Buffer, check: Callable[[memoryview], None], step: int) -> None:
        """Append `data` (a buffer the caller keeps unchanged until `commit`; no `release`),
        calling ``check(piece)`` on each consecutive piece of `step` bytes (the last may be
        shorter), in order, before that piece is written.  A writer with
        `checks_while_writing` calls `check` in the worker thread that writes, right before
        the piece's write, while the piece is still in the CPU's cache: the bytes cross
        memory once for both.  This default checks every piece in a worker thread, then
        writes.  An exception from `check` fails the write (nothing of its piece, or after it, is
        written) and may leave the writer aborted, as any failed write does: abort it."""
        view = memoryview(data).cast("B")
        await asyncio.to_thread(check_pieces, view, check, step)
        await self.write(data)

    server_side_copy: bool = False
    """Whether `copy` moves the bytes inside the store (else it reads and writes them)."""

    copy_granule: int = 0
    """A `copy` shorter than this must be the last thing written (S3: the 5 MiB minimum part)."""

    def bytes_before_copy(self) -> int:
        """Bytes still to `write` before a `copy` may begin here (0: now); see `copy`."""
        return 0

    async def copy(self, source: str, start: int, length: int, *, etag: str | None = None) -> None:
        """Append bytes ``[start, start + length)`` of object `source` (a key of the same store,
        committed, not this writer's own), from version `etag` if given.  Preconditions:
        ``bytes_before_copy() == 0``, and nothing written after a copy shorter than
        `copy_granule` (`ValueError` otherwise: a caller's mistake, never the data's).  A
        source shorter than the range is `CorruptCheckpointError`; a missing source
        `CheckpointNotFoundError`.  Every backend's writer has one; a writer wrapping another
        (tests do) may leave it out, and is then never asked to copy."""
        raise NotImplementedError(f"{type(self).__name__} cannot copy")

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


def check_pieces(view: memoryview, check: Callable[[memoryview], None], step: int) -> None:
    """``check(piece)`` on each consecutive `step`-byte piece of `view`, in order."""
    for at in range(0, len(view), step):
        check(view[at : at + step])


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

    async def size(self, key: str) -> int:
        info = await self.head(key)
        if info is None:
            raise CheckpointNotFoundError(f"{self.describe(key)}: no such file or object")
        return info.size

    async def exists(self, key: str) -> bool:
        return await self.head(key) is not None

    @abc.abstractmethod
    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size, time and etag, or None if there is none."""

    @abc.abstractmethod
    async def get_object(self, key: str, *, max_size: int | None = None) -> StoredObject:
        """The whole object and its etag, in one request.  With `max_size`, an object larger
        than that is refused (`CorruptCheckpointError`) before its bytes are read: callers
        bound what a hostile file can make them allocate."""

    async def get(self, key: str, *, max_size: int | None = None) -> bytes:
        """`get_object` without the etag."""
        return (await self.get_object(key, max_size=max_size)).data

    async def read_into(self, key: str, start: int, out: memoryview) -> int:
        """Read up to ``len(out)`` bytes at `start` into `out`; return the count read."""
        return (await self.read_scatter(key, start, [(start, out)])).delivered

    @abc.abstractmethod
    async def read_scatter(self, key: str, start: int, targets: Sequence[tuple[int, memoryview]], *,
                           etag: str | None = None) -> ScatterResult:
        """Fill every ``(offset, view)`` of `targets` (sorted, disjoint, none before `start`)
        from `key`, in one request where the backend allows (bytes between targets are
        discarded).  `delivered` is the sum of the views' lengths unless the object ends
        early; `crcs` are the CRC32C of each view's bytes; `etag` and `size` the version the
        bytes came from (see `ScatterResult`).  No request for empty targets.  With `etag`,
        the bytes come from that version or `CheckpointChangedError` is raised (also where a
        server ignores ``If-Match``: the answer's own ETag is compared)."""

    @abc.abstractmethod
    def writer(self, key: str, *, exclusive: bool = False, if_match: str | None = None,
               size_hint: int | None = None) -> ObjectWriter:
        """A writer of `key` (see `ObjectWriter`).  `size_hint`: about the bytes it will be
        given, when known; a store may size its upload parts by it (S3: an object within its
        limit of 10,000 parts)."""

    async def put(self, key: str, data: Buffer | Sequence[Buffer], *, exclusive: bool = False,
                  if_match: str | None = None) -> str:
        """Write the object whole; its new etag."""
        chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
        async with self.writer(key, exclusive=exclusive, if_match=if_match) as w:
            for chunk in chunks:
                await w.write(chunk)
        return w.etag

    @abc.abstractmethod
    async def delete(self, key: str, *, if_match: str | None = None) -> bool:
        """Remove `key` (with `if_match`: only that version).  False if another version is
        there; True otherwise, a missing key included."""

    async def delete_many(self, keys: Iterable[str]) -> None:
        """Remove every key of `keys` whatever its version (missing ones included): the
        cleanup of a save's staging.  S3 sends one request per `DELETE_BATCH` keys; other
        backends delete them one by one, `DELETE_CONCURRENCY` at a time."""
        slots = asyncio.Semaphore(DELETE_CONCURRENCY)

        async def one(key: str) -> None:
            async with slots:
                await self.delete(key)

        await asyncio.gather(*(one(k) for k in dict.fromkeys(keys)))

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

    async def prepare_conditional_writes(self) -> None:
        """Check, once per store and process, that the backend really enforces conditional
        writes (S3-compatible servers exist that ignore the headers); afterwards
        `capabilities.conditional_writes` is the finding.  Nothing to check by default."""

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
