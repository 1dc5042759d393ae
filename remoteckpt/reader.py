"""`CheckpointReader`: the API of `tf.train.load_checkpoint`, on any store.

Opening a checkpoint: its id is located (`remoteckpt.locate`: a prefix, ``PREFIX.index``, a
directory), then its `.index` is fetched in one request and validated whole: no listing, no
HEAD.  Its data files' versions are pinned as the reads meet them (`engine.versions`): the
first answer for a data file names its version and size, every later read of it is pinned
to that version (``If-Match`` on S3), so a reader racing an overwrite or a deletion gets the
bytes it started with or `CheckpointChangedError`, never a mix of two versions of a file; and
every byte is checked against the index's CRCs, a mismatch while the index itself was replaced
being reported as the checkpoint replaced.  The reads themselves are `engine.read`'s: only the
byte ranges needed, many at once, verified.

A host cache (`IOOptions.host_cache`) names the bytes it shares by their data file's version
before it fetches them, and a local tier holding a copy routes each data file by its size:
there the data files are listed when the checkpoint is opened (one request per thousand
files), and reads are pinned to the versions listed.

A job that restores on many ranks can open the checkpoint once: one rank's reader hands its
`Opening` (the index as fetched, its version, the data files as listed) to the others through
whatever the job broadcasts with (a torch process group: `remoteckpt.torch`'s
``StorageReader(process_group=)`` does this; MPI; JAX's multihost utilities), and they open with
`CheckpointReader.from_opening`, sending no request until their first read.  One index GET per
job instead of one per rank: at a thousand ranks that is the difference between the index being
the hottest key of the bucket and being read once.
"""

from __future__ import annotations

import io
import logging
import os
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import dtypes
from .engine import loop
from .engine.hostcache import host_cache
from .engine.read import BoxLike, OpenCheckpoint
from .errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from .format.bundle import BundleEntry, BundleIndex, decode_index_bytes, encode_index, entry_shape, index_filename
from .locate import DIRECTORY_CHECKPOINT, in_directory, is_directory_id, strip_file_suffix
from .options import DEFAULT_OPTIONS, IOOptions
from .progress import ProgressCallback
from .storage import ObjectInfo, Store, open_store, split_prefix
from .tiers.layout import TierLike, as_tier
from .tiers.nearest import NearestStore, open_nearest

__all__ = ["BoxLike", "CheckpointReader", "MAX_INDEX_BYTES", "Opening", "being_read"]

log = logging.getLogger("remoteckpt")

MAX_INDEX_BYTES = 2**30
"""An index is about 100 bytes per tensor (or per slice): a million-tensor checkpoint's is
~100 MiB.  Larger than this, it is refused before a byte is read (a hostile file must not
make a reader allocate what it claims)."""


def _decode_name(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def _sendable(exc: Exception) -> Exception:
    """`exc` if it survives pickling (the other ranks raise it as it is), else a
    `CheckpointError` with its class name and message."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return CheckpointError(f"{type(exc).__name__}: {exc}")
    return exc


def _collective(process_group: Any) -> Any:
    """`process_group` as an `engine.group.Collective` (a torch group is wrapped)."""
    from .engine.group import Collective

    if isinstance(process_group, Collective):
        return process_group
    from .plugins.torch_group import as_collective

    return as_collective(process_group)


@dataclass(frozen=True)
class Opening:
    """What opening a checkpoint read, for readers in other processes to open it from without
    a request (`CheckpointReader.opening`, `CheckpointReader.from_opening`).  Picklable; its
    size is the index's (about 100 bytes per tensor or slice) plus the listing's.

    `index` is the index encoded again from the decoded one (the same entries, validated
    where it was read, and decoded again where it is used); `index_etag` the version it was
    read at; `data_files` the data files as listed when the reader listed them (a host cache's
    reader), else None: every reader then pins the data files' versions as its reads meet them,
    so readers opened from one `Opening` agree on the index, and each still detects a
    checkpoint replaced under it."""

    prefix: str
    index: bytes
    index_etag: str
    data_files: tuple[ObjectInfo, ...] | None = None


class CheckpointReader:
    """Reads the checkpoint at `prefix` (``PREFIX.index`` + ``PREFIX.data-*``) on local disk or
    any fsspec URL.  Raises `CheckpointNotFoundError` if there is no ``PREFIX.index`` and
    `CorruptCheckpointError` if the index is invalid.  Safe to use from several threads."""

    _given: Opening | None = None  # set by `from_opening`: opened from another reader's opening

    def __init__(self, prefix: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None,
                 options: IOOptions = DEFAULT_OPTIONS, local_tier: TierLike | None = None) -> None:
        self._options = options
        self._storage_options = storage_options
        self._tier = as_tier(local_tier)  # remote `prefix`, read from its nearest tier (`tiers.nearest`)
        self._data_files: dict[str, ObjectInfo] | None = None  # None: not listed (pinned as read)
        self._index_etag = ""
        text = strip_file_suffix(prefix)
        if is_directory_id(text):
            text = loop.run(self._in_directory(
                text, f"checkpoint not found: {text.rstrip('/')}/{DIRECTORY_CHECKPOINT}.index does not exist",
                storage_options))
        try:
            self._store, self._index = loop.run(self._open(text, storage_options))
        except CheckpointNotFoundError as missing:
            if not getattr(missing, "index_missing", False):
                raise
            text = loop.run(self._in_directory(text, str(missing.args[0]), storage_options))
            self._store, self._index = loop.run(self._open(text, storage_options))
        self._prefix = text
        directory, self._name = split_prefix(text)
        self._reading = (directory, self._name)
        _reading[self._reading] = _reading.get(self._reading, 0) + 1
        self._finalizer = weakref.finalize(self, _close_soon, self._store, self._reading)
        self._checkpoint = OpenCheckpoint(self._store, self._index, self._prefix, self._name, self._data_files,
                                          self._options, self._index_etag)
        self._names = self._checkpoint._names

    async def _in_directory(self, text: str, missing: str, storage_options: dict[str, Any] | None) -> str:
        """The checkpoint directory id `text` names (see `remoteckpt.locate`), or the error
        saying what was looked for."""
        found = await in_directory(text, storage_options, self._options)
        if found is None:
            raise CheckpointNotFoundError(
                f"{missing}; nor is {text.rstrip('/')}/ a directory holding "
                "a checkpoint (ckpt.index, or a `checkpoint` state file naming one)")
        return found

    async def _open(self, prefix: str, storage_options: dict[str, Any] | None) -> tuple[Store, BundleIndex]:
        """The store and the decoded index (its etag in `_index_etag`); the data files listed
        into `_data_files` where the reads need their versions before fetching."""
        if self._given is not None:
            return await self._open_given(self._given, storage_options)
        if self._tier is not None:
            self._data_files = {}
            nearest, index = await open_nearest(prefix, self._tier, storage_options, self._options, self._data_files)
            if not nearest.listed:
                self._data_files = None
            return nearest, index
        directory, name = split_prefix(prefix)
        store = open_store(directory, storage_options, self._options)
        key = index_filename(name)
        try:
            if host_cache(self._options.host_cache, self._options.host_cache_bytes) is not None:
                # The data files first, then the index: a checkpoint replaced in between leaves
                # this reader with data versions older than its index, and its reads then fail
                # their version check instead of mixing the two.
                self._data_files = {i.key: i for i in await store.list_info(f"{name}.data-")}
            try:
                found = await store.get_object(key, max_size=MAX_INDEX_BYTES)
            except CheckpointNotFoundError:
                missing = CheckpointNotFoundError(f"checkpoint not found: {store.describe(key)} does not exist")
                missing.index_missing = True  # type: ignore[attr-defined]
                raise missing from None
            self._index_etag = found.etag
            try:
                return store, decode_index_bytes(found.data)
            except CorruptCheckpointError as exc:
                raise CorruptCheckpointError(f"{store.describe(key)}: {exc}") from None
        except BaseException:
            await store.close()  # whatever failed, the store's connections are released
            raise

    async def _open_given(self, given: Opening,
                          storage_options: dict[str, Any] | None) -> tuple[Store, BundleIndex]:
        directory, name = split_prefix(given.prefix)
        store = open_store(directory, storage_options, self._options)
        self._index_etag = given.index_etag
        self._data_files = None if given.data_files is None else {i.key: i for i in given.data_files}
        try:
            return store, decode_index_bytes(given.index)
        except CorruptCheckpointError as exc:
            await store.close()
            raise CorruptCheckpointError(f"{store.describe(index_filename(name))}: {exc}") from None

    @classmethod
    def from_opening(cls, opening: Opening, *, storage_options: dict[str, Any] | None = None,
                     options: IOOptions = DEFAULT_OPTIONS) -> CheckpointReader:
        """A reader of the checkpoint another reader opened (`opening`), made without a
        request: the index is `opening`'s.  `storage_options` and `options` are this
        process's (its credentials, its memory budget)."""
        reader = cls.__new__(cls)
        reader._given = opening
        reader.__init__(opening.prefix, storage_options=storage_options, options=options)  # type: ignore[misc]
        return reader

    @classmethod
    def opened_once(cls, prefix: str | os.PathLike[str], process_group: Any, *,
                    storage_options: dict[str, Any] | None = None,
                    options: IOOptions = DEFAULT_OPTIONS) -> CheckpointReader:
        """A reader on every rank of `process_group` (a `torch.distributed` group, e.g.
        ``torch.distributed.group.WORLD``, or an `engine.group.Collective`), which every rank
        calls at once: the group's rank 0 opens the checkpoint and broadcasts its `Opening`,
        or its error, which every rank then raises; the others open from it.  One index GET
        per group instead of one per rank."""
        group = _collective(process_group)
        mine: CheckpointReader | None = None
        payload: tuple[str, Any] | None = None
        if group.rank == 0:
            try:
                mine = cls(prefix, storage_options=storage_options, options=options)
                payload = ("ok", mine.opening())
            except Exception as exc:  # every rank raises it
                if mine is not None:
                    mine.close()
                    mine = None
                payload = ("error", _sendable(exc))
        try:
            kind, value = group.broadcast_object(payload, 0)
        except BaseException:
            if mine is not None:
                mine.close()
            raise
        if kind == "error":
            raise value
        if mine is not None:
            return mine
        return cls.from_opening(value, storage_options=storage_options, options=options)

    def opening(self) -> Opening:
        """This reader's `Opening`, to open the same checkpoint in other processes without a
        request (`from_opening`).  A reader through a local tier has none (`ValueError`): its
        reads are routed by what its own host's tier holds."""
        if self._tier is not None:
            raise ValueError(f"{self._prefix}: a reader through a local tier cannot hand its opening on; "
                             "open the remote prefix without `local_tier` to share one")
        if self._given is not None:
            return self._given
        out = io.BytesIO()
        encode_index(self._index.header, self._index.entries, out)
        listed = None if self._data_files is None else tuple(self._data_files.values())
        return Opening(self._prefix, out.getvalue(), self._index_etag, listed)

    # --- what is in it -------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def store(self) -> Store:
        return self._store

    @property
    def index(self) -> BundleIndex:
        """The decoded index (header and raw entries), for tools that inspect the layout."""
        return self._index

    def has_tensor(self, name: str) -> bool:
        return name in self._names

    def get_variable_to_shape_map(self) -> dict[str, list[int]]:
        return {n: list(entry_shape(self._index.entries[k])) for n, k in self._names.items()}

    def get_variable_to_dtype_map(self) -> dict[str, np.dtype]:
        """Numpy dtypes (bfloat16 & co from ml_dtypes, ``object`` for strings).  A tensor whose
        dtype numpy cannot hold raises `UnsupportedDTypeError` here and on read."""
        return {n: dtypes.to_numpy(self._index.entries[k].dtype) for n, k in self._names.items()}

    def get_dtype(self, name: str) -> np.dtype:
        """The numpy dtype of one tensor (raises `UnsupportedDTypeError` for one numpy lacks)."""
        _, entry = self._entry(name)
        try:
            return dtypes.to_numpy(entry.dtype)
        except CheckpointError as exc:
            raise type(exc)(f"tensor {name!r} in {self._prefix}: {exc}") from None

    def _entry(self, name: str) -> tuple[bytes, BundleEntry]:
        return self._checkpoint.entry(name)


    # --- reading -------------------------------------------------------------------------

    def get_tensor(self, name: str) -> np.ndarray:
        """The whole tensor `name` as a numpy array (strings: ``object`` array of bytes)."""
        return loop.run(self.read(name))

    def get_slice(self, name: str, box: BoxLike) -> np.ndarray:
        """The part of tensor `name` inside `box`: ``(start, size)`` per dimension, a tuple
        of slices (step 1), or a `Box`.  Only the bytes of that box are fetched (to the
        granularity of remoteckpt's CRC chunks, so that they are verified)."""
        return loop.run(self.read(name, box))

    async def read(self, name: str, box: BoxLike | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Coroutine behind `get_tensor`/`get_slice`: run it on remoteckpt's loop."""
        return (await self.read_boxes([(name, box)], [out]))[0]

    async def read_many(self, names: Iterable[str], out: Mapping[str, np.ndarray] | None = None,
                        progress: ProgressCallback | None = None) -> dict[str, np.ndarray]:
        """Read several whole tensors at once (into `out`'s arrays where given)."""
        names = list(names)
        arrays = await self.read_boxes([(n, None) for n in names], [(out or {}).get(n) for n in names], progress)
        return dict(zip(names, arrays))

    async def read_boxes(self, requests: Sequence[tuple[str, BoxLike | None]],
                         outs: Sequence[np.ndarray | None] | None = None,
                         progress: ProgressCallback | None = None) -> list[np.ndarray]:
        """Read every (name, box or None for all) request; `outs` are optional caller-owned
        destination arrays (shape and dtype must match); `progress` gets ``read`` events."""
        store = self._store
        try:
            result = await self._checkpoint.read_boxes(requests, outs, progress)
        except CheckpointError as exc:
            if not isinstance(store, NearestStore) or not store.uses_local:
                raise
            log.warning("reading %s from the local tier failed (%s); reading it from %s", self._prefix, exc,
                        store.remote.url)
            other = await store.confirm()
            await self._fall_back(store)
        else:
            if not isinstance(store, NearestStore):
                return result
            other = await store.confirm()
            if other is None:
                return result
            log.warning("%s was replaced remotely since the local tier's copy was drained; reading the remote one",
                        self._prefix)
            await self._fall_back(store)
        if other is not None:  # the remote checkpoint is another one: its index from now on
            self._index = decode_index_bytes(other)
            self._checkpoint = OpenCheckpoint(self._store, self._index, self._prefix, self._name, self._data_files,
                                              self._options)
            self._names = self._checkpoint._names
        return await self._checkpoint.read_boxes(requests, outs, progress)

    async def _fall_back(self, store: NearestStore) -> None:
        """Read everything from the remote prefix from now on (its data files listed)."""
        if self._data_files is None:
            self._data_files = {}
        await store.fall_back(self._data_files, self._name)
        self._checkpoint.relisted(self._data_files)

    def read_boxes_shared(self, requests: Sequence[tuple[str, BoxLike | None]],
                          outs: Sequence[np.ndarray | None] | None, process_group: Any) -> list[np.ndarray]:
        """`read_boxes` by every rank of `process_group` at once, each with its own requests:
        every byte range any of them needs is fetched by one rank only and sent to the
        others (`engine.group`).  A `torch.distributed` process group (``None`` is not
        one: pass ``torch.distributed.group.WORLD``) or an `engine.group.Collective`.
        Call from the caller's thread, on every rank of the group."""
        from .engine.group import read_shared

        return read_shared(self._checkpoint, requests, outs, _collective(process_group))


    def close(self) -> None:
        """Release the store's connections (also done when the reader is garbage-collected)."""
        if self._finalizer.detach():
            _stop_reading(self._reading)
            loop.run(self._store.close())

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CheckpointReader({self._prefix!r}, {len(self._names)} tensors)"


_reading: dict[tuple[str, str], int] = {}
"""Open readers of this process per checkpoint (directory, name): retention leaves these be."""


def being_read(directory: str, name: str) -> bool:
    """Whether a `CheckpointReader` of this process has checkpoint `name` of `directory` open."""
    return _reading.get((directory, name), 0) > 0


def _stop_reading(which: tuple[str, str]) -> None:
    count = _reading.get(which, 0) - 1
    if count > 0:
        _reading[which] = count
    else:
        _reading.pop(which, None)


def _close_soon(store: Store, which: tuple[str, str]) -> None:
    _stop_reading(which)
    try:
        loop.submit(store.close())
    except RuntimeError:  # interpreter shutting down
        pass

