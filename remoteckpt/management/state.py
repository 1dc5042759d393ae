"""The ``checkpoint`` state file beside checkpoints: TensorFlow's CheckpointState, text format.

    model_checkpoint_path: "model.ckpt-30"            the latest
    all_model_checkpoint_paths: "model.ckpt-20"       oldest first; the last is the latest
    all_model_checkpoint_paths: "model.ckpt-30"
    all_model_checkpoint_timestamps: 1795310858.44   parallel to the paths (optional)
    last_preserved_timestamp: 1795310857.37

We write paths relative to the directory, one object or file replaced atomically.  When
reading, a path may be relative (no ``..``), or absolute / a URL inside the directory (TF1's
Saver writes absolute paths); anything that points elsewhere is refused, never followed.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import Any

from google.protobuf import text_format

from .. import faults
from .._proto import checkpoint_state_pb2
from ..errors import CheckpointNotFoundError, CorruptCheckpointError
from ..format.bundle import index_filename
from ..storage import Store, on_store

STATE_FILENAME = "checkpoint"
"""TF's default `latest_filename`."""

MAX_STATE_BYTES = 16 * 2**20
"""A state file lists paths; anything this large is not one."""


@dataclass(frozen=True)
class CheckpointState:
    """A parsed state file.  Paths are names relative to `directory` (``model.ckpt-30``)."""

    directory: str
    model_checkpoint_path: str
    all_model_checkpoint_paths: tuple[str, ...] = ()
    all_model_checkpoint_timestamps: tuple[float, ...] = ()
    last_preserved_timestamp: float = 0.0

    def prefix(self, name: str) -> str:
        """The full prefix (path or URL) of checkpoint `name`."""
        return join(self.directory, name)

    @property
    def latest(self) -> str:
        return self.prefix(self.model_checkpoint_path)

    @property
    def all_prefixes(self) -> list[str]:
        return [self.prefix(n) for n in self.all_model_checkpoint_paths]


def join(directory: str, name: str) -> str:
    if "://" in directory:
        return f"{directory.rstrip('/')}/{name}"
    return os.path.join(directory, name)


def _relative(directory: str, path: str, file: str) -> str:
    """`path` as written in the state file -> a name relative to `directory`, or raise."""
    refuse = CorruptCheckpointError(
        f"{file} names checkpoint {path!r}, which lies outside {directory}; refusing to follow it")
    if not path or "\x00" in path:
        raise CorruptCheckpointError(f"{file} has an empty or invalid checkpoint path")
    if "://" in path:
        base = directory.rstrip("/") + "/"
        if not path.startswith(base):
            raise refuse
        path = path[len(base):]
    elif os.path.isabs(path) or path.startswith("/"):
        if "://" in directory:
            raise refuse
        base = os.path.normpath(os.path.abspath(directory))
        normal = os.path.normpath(path)
        if not normal.startswith(base + os.sep):
            raise refuse
        path = os.path.relpath(normal, base)
    parts = path.replace("\\", "/").split("/")
    if any(p in ("..", "") for p in parts) or path.startswith("/"):
        raise refuse
    return posixpath.join(*parts)


def parse_state(text: bytes, directory: str, file: str) -> CheckpointState:
    """Parse a state file's bytes; raise `CorruptCheckpointError` naming `file` if it is not a
    state file or names a checkpoint outside `directory`."""
    proto = checkpoint_state_pb2.CheckpointState()
    try:
        text_format.Parse(text.decode("utf-8"), proto)
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(f"{file} is not a checkpoint state file: {exc}") from None
    if not proto.model_checkpoint_path:
        raise CorruptCheckpointError(f"{file} has no model_checkpoint_path")
    latest = _relative(directory, proto.model_checkpoint_path, file)
    paths = tuple(_relative(directory, p, file) for p in proto.all_model_checkpoint_paths)
    if not paths or paths[-1] != latest:  # as TF's generate_checkpoint_state_proto
        paths = tuple(p for p in paths if p != latest) + (latest,)
    stamps = tuple(proto.all_model_checkpoint_timestamps)
    if stamps and len(stamps) != len(proto.all_model_checkpoint_paths):
        stamps = ()
    return CheckpointState(directory, latest, paths, stamps[-len(paths):] if stamps else (),
                           proto.last_preserved_timestamp)


def format_state(latest: str, names: list[str], timestamps: list[float] | None = None,
                 last_preserved_timestamp: float | None = None) -> bytes:
    """The text TF writes for these names (relative to the directory), oldest first."""
    proto = checkpoint_state_pb2.CheckpointState(model_checkpoint_path=latest)
    proto.all_model_checkpoint_paths.extend(names)
    if timestamps is not None:
        proto.all_model_checkpoint_timestamps.extend(timestamps)
    if last_preserved_timestamp is not None:
        proto.last_preserved_timestamp = last_preserved_timestamp
    return text_format.MessageToString(proto).encode("utf-8")


async def read_state(store: Store, directory: str, filename: str = STATE_FILENAME) -> CheckpointState | None:
    """The state file in `store`'s root (None if there is none)."""
    try:
        data = await store.get(filename, max_size=MAX_STATE_BYTES)
    except CheckpointNotFoundError:
        return None
    except CorruptCheckpointError as exc:  # refused from its size, unread
        raise CorruptCheckpointError(f"{exc}: not a checkpoint state file") from None
    return parse_state(data, directory, store.describe(filename))


async def write_state(store: Store, data: bytes, filename: str = STATE_FILENAME) -> None:
    """Replace the state file atomically (local: temp, fsync, rename; S3: one PUT)."""
    with faults.within("state-replacing"):
        await store.put(filename, data)


async def previous_checkpoint(store: Store, directory: str, name: str) -> str | None:
    """The base of an incremental save of checkpoint `name`: the latest checkpoint the state
    file in `store`'s root names, if it is committed and is not `name` itself; without a state
    file (plain `save` calls keep none), the checkpoint of that directory whose index was
    committed last; None otherwise (an unreadable state file included: the save then writes
    every tensor)."""
    try:
        state = await read_state(store, directory)
    except CorruptCheckpointError:
        return None
    if state is None:
        return await _newest_committed(store, name)
    if state.model_checkpoint_path == name:
        return None
    if not await store.exists(index_filename(state.model_checkpoint_path)):
        return None
    return state.model_checkpoint_path


async def _newest_committed(store: Store, name: str) -> str | None:
    """The checkpoint of the directory `name` is in whose index is the newest, but `name`."""
    folder = name.rpartition("/")[0]
    within = f"{folder}/" if folder else ""
    indexes = [i for i in await store.list_info(within) if i.key.endswith(".index")
               and "/" not in i.key[len(within):] and i.key != index_filename(name)]
    if not indexes:
        return None
    newest = max(indexes, key=lambda i: (i.mtime, i.key))
    return newest.key[: -len(".index")]


def directory_of(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    return text.rstrip("/") if "://" in text else os.path.abspath(text)


def get_checkpoint_state(directory: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None,
                         latest_filename: str = STATE_FILENAME) -> CheckpointState | None:
    """The directory's state file, parsed (as `tf.train.get_checkpoint_state`), or None."""
    root = directory_of(directory)
    return on_store(root, lambda store: read_state(store, root, latest_filename), storage_options)


def latest_checkpoint(directory: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None,
                      latest_filename: str = STATE_FILENAME) -> str | None:
    """The prefix of the latest committed checkpoint in `directory` (as
    `tf.train.latest_checkpoint`): None if there is no state file or its latest checkpoint
    has no `.index`.  (`remoteckpt.latest_checkpoint` adds the local tier: `directory`.)"""
    root = directory_of(directory)

    async def latest(store: Store) -> str | None:
        state = await read_state(store, root, latest_filename)
        if state is None or not await store.exists(index_filename(state.model_checkpoint_path)):
            return None
        return state.latest

    return on_store(root, latest, storage_options)
