"""TensorFlow object-based checkpoints (`tf.train.Checkpoint`'s) through remoteckpt.

    import remoteckpt.tensorflow as rtf
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)
    rtf.save(ckpt, "s3://bucket/run/ckpt-1000")          # what ckpt.write(...) would write
    future = rtf.save_async(ckpt, "s3://bucket/run/ckpt-2000")
    rtf.restore(ckpt, "s3://bucket/run/ckpt-1000").assert_existing_objects_matched()

The checkpoints are TensorFlow's, key for key (``model/.../.ATTRIBUTES/VARIABLE_VALUE``,
``save_counter/...``, ``_CHECKPOINTABLE_OBJECT_GRAPH``): ``tf.train.Checkpoint.restore``
reads what `save` writes and `restore` reads what TensorFlow writes.  TensorFlow is imported
when one of these functions is first called, not when this module is imported.
See ``docs/plugins/tensorflow.md``.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from typing import Any

from .options import DEFAULT_OPTIONS, IOOptions

__all__ = ["checkpoint_tensors", "restore", "save", "save_async"]

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def _plugin() -> "Any":
    from .plugins import tensorflow_plugin  # imports tensorflow

    return tensorflow_plugin


def save(checkpoint_or_trackable: Any, prefix: str | os.PathLike[str], *, rank: int = 0, world_size: int = 1,
         storage_options: dict[str, Any] | None = None, overwrite: bool = False,
         save_id: str | None = None, options: IOOptions = DEFAULT_OPTIONS, incremental: bool = False) -> str:
    """Write `checkpoint_or_trackable` (a `tf.train.Checkpoint` or any trackable) at exactly
    `prefix`, as `Checkpoint.write` would (no numbering; ``save_counter`` stored as is).
    Returns `prefix` once committed.  `incremental` is as for `remoteckpt.save`.  See
    `remoteckpt.plugins.tensorflow_plugin.save`."""
    return _plugin().save(checkpoint_or_trackable, prefix, rank=rank, world_size=world_size,
                          storage_options=storage_options, overwrite=overwrite, save_id=save_id,
                          options=options, incremental=incremental)


def save_async(checkpoint_or_trackable: Any, prefix: str | os.PathLike[str], *, rank: int = 0,
               world_size: int = 1, storage_options: dict[str, Any] | None = None, overwrite: bool = False,
               save_id: str | None = None, options: IOOptions = DEFAULT_OPTIONS,
               incremental: bool = False) -> "Future[str]":
    """`save` in the background; returns a `concurrent.futures.Future` of `prefix` as soon
    as the variables' values are snapshotted."""
    return _plugin().save_async(checkpoint_or_trackable, prefix, rank=rank, world_size=world_size,
                                storage_options=storage_options, overwrite=overwrite, save_id=save_id,
                                options=options, incremental=incremental)


def restore(checkpoint_or_trackable: Any, prefix: str | os.PathLike[str], *,
            storage_options: dict[str, Any] | None = None, options: IOOptions = DEFAULT_OPTIONS) -> Any:
    """Restore `checkpoint_or_trackable` from the object-based checkpoint at `prefix`;
    returns TensorFlow's `CheckpointLoadStatus`."""
    return _plugin().restore(checkpoint_or_trackable, prefix, storage_options=storage_options, options=options)


def checkpoint_tensors(checkpoint_or_trackable: Any) -> dict[str, Any]:
    """The tensors (checkpoint key -> numpy array or `Slice`s) `tf.train.Checkpoint` would
    write for `checkpoint_or_trackable`, object graph included."""
    return _plugin().checkpoint_tensors(checkpoint_or_trackable)
