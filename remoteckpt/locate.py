"""Checkpoint ids: what a path or URL given by a user names.

    PREFIX                     TensorFlow's form: PREFIX.index + PREFIX.data-*
    PREFIX.index               the same checkpoint (readers)
    PREFIX.data-00000-of-00004 the same checkpoint (readers)
    DIR/                       a directory-style id (PyTorch DCP's, most trainers' step-N/):
                               the checkpoint DIR/ckpt inside it; readers also take the
                               latest checkpoint of DIR's `checkpoint` state file, as
                               `tf.train.load_checkpoint(DIR)` does
    DIR (an existing local directory, or, for readers, a prefix with no index whose
         directory holds a checkpoint)   as DIR/
    s3://bucket, s3://bucket/  a bucket's root: always a directory

A trailing slash always means a directory; TensorFlow's prefix form keeps working as it is.
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import Any

from .errors import CheckpointNotFoundError
from .format.bundle import index_filename
from .management.state import read_state
from .options import DEFAULT_OPTIONS, IOOptions
from .storage import open_store, split_prefix
from .storage.url import is_url_root

DIRECTORY_CHECKPOINT = "ckpt"
"""The checkpoint's name inside a directory-style id (``step-100/ckpt.index``)."""

_FILE_SUFFIX = re.compile(r"\.(index|data-\d{5,}-of-\d{5,})$")


def _is_directory_id(text: str) -> bool:
    return (text.endswith("/") or text.endswith(os.sep) or is_url_root(text)
            or ("://" not in text and os.path.isdir(text)))


def for_writing(checkpoint_id: str | os.PathLike[str]) -> str:
    """The prefix a save writes for `checkpoint_id` (a directory id: ``DIR/ckpt``)."""
    text = os.fspath(checkpoint_id)
    if _is_directory_id(text):
        return f"{text.rstrip('/').rstrip(os.sep)}/{DIRECTORY_CHECKPOINT}"
    return text


def strip_file_suffix(checkpoint_id: str | os.PathLike[str]) -> str:
    """``PREFIX.index`` or ``PREFIX.data-...`` as ``PREFIX``; anything else as it is."""
    return _FILE_SUFFIX.sub("", os.fspath(checkpoint_id))


async def in_directory(directory: str, storage_options: dict[str, Any] | None = None,
                       options: IOOptions = DEFAULT_OPTIONS) -> str | None:
    """The checkpoint a directory id names (``DIR/ckpt``, else the state file's latest), or
    None when the directory holds neither."""
    root = directory.rstrip("/") if "://" in directory else os.path.abspath(directory)
    store = open_store(root, storage_options, options)
    try:
        if await store.exists(index_filename(DIRECTORY_CHECKPOINT)):
            return f"{root}/{DIRECTORY_CHECKPOINT}"
        try:
            state = await read_state(store, root)
        except CheckpointNotFoundError:
            return None
        if state is not None and await store.exists(index_filename(state.model_checkpoint_path)):
            return state.latest
        return None
    finally:
        await store.close()


def _not_found(first: str, directory: str) -> CheckpointNotFoundError:
    return CheckpointNotFoundError(
        f"checkpoint not found: {first} does not exist; nor is {directory.rstrip('/')}/ a directory holding "
        "a checkpoint (ckpt.index, or a `checkpoint` state file naming one)")


async def for_reading(checkpoint_id: str | os.PathLike[str], storage_options: dict[str, Any] | None = None,
                      options: IOOptions = DEFAULT_OPTIONS) -> str:
    """The prefix of the committed checkpoint a reader's `checkpoint_id` names (any form of
    this module's table), or `CheckpointNotFoundError` naming every reading tried."""
    text = strip_file_suffix(checkpoint_id)
    if _is_directory_id(text):
        found = await in_directory(text, storage_options, options)
        if found is None:
            raise _not_found(f"{text.rstrip('/')}/{index_filename(DIRECTORY_CHECKPOINT)}", text)
        return found
    directory, name = split_prefix(text)
    store = open_store(directory, storage_options, options)
    try:
        exists = await store.exists(index_filename(name))
        where = store.describe(index_filename(name))
    finally:
        await store.close()
    if exists:
        return text
    found = await in_directory(text, storage_options, options)
    if found is None:
        raise _not_found(where, text)
    return found


def is_directory_id(checkpoint_id: str) -> bool:
    """Whether `checkpoint_id` can only name a directory (a trailing slash, a bucket's root,
    or an existing local directory)."""
    return _is_directory_id(checkpoint_id)


def name_to_keep(source_prefix: str) -> str:
    """The name a checkpoint keeps when copied into a folder: its prefix's last component, or
    for a directory-style checkpoint (``.../step-100/ckpt``) its directory with it
    (``step-100/ckpt``)."""
    directory, name = split_prefix(source_prefix)
    if name != DIRECTORY_CHECKPOINT or is_url_root(directory):
        return name
    parent = posixpath.basename(directory.rstrip("/")) if "://" in directory else os.path.basename(directory)
    return f"{parent}/{name}" if parent else name
