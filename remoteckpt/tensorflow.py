"""TensorFlow object-based checkpoints (`tf.train.Checkpoint`'s) through remoteckpt.

    import remoteckpt.tensorflow as rtf
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)
    rtf.save(ckpt, "s3://bucket/run/ckpt-1000")          # what ckpt.write(...) would write
    future = rtf.save_async(ckpt, "s3://bucket/run/ckpt-2000")
    rtf.restore(ckpt, "s3://bucket/run/ckpt-1000").assert_existing_objects_matched()
    rtf.export_saved_model(model, "s3://bucket/models/mnist", keep=3)   # s3://.../mnist/1, /2, ...
    served = rtf.load_saved_model("s3://bucket/models/mnist")           # its newest version

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

__all__ = ["checkpoint_tensors", "export_saved_model", "load_saved_model", "restore", "save", "save_async"]

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def _plugin() -> "Any":
    from .plugins import tensorflow_plugin  # imports tensorflow

    return tensorflow_plugin


def save(checkpoint_or_trackable: Any, prefix: str | os.PathLike[str], *, rank: int = 0, world_size: int = 1,
         storage_options: dict[str, Any] | None = None, overwrite: bool = False,
         save_id: str | None = None, options: IOOptions = DEFAULT_OPTIONS, incremental: bool = False,
         local_tier: Any = None) -> str:
    """Write `checkpoint_or_trackable` (a `tf.train.Checkpoint` or any trackable) at exactly
    `prefix`, as `Checkpoint.write` would (no numbering; ``save_counter`` stored as is).
    Returns `prefix` once committed.  `incremental` is as for `remoteckpt.save`.  See
    `remoteckpt.plugins.tensorflow_plugin.save`."""
    return _plugin().save(checkpoint_or_trackable, prefix, rank=rank, world_size=world_size,
                          storage_options=storage_options, overwrite=overwrite, save_id=save_id,
                          options=options, incremental=incremental, local_tier=local_tier)


def save_async(checkpoint_or_trackable: Any, prefix: str | os.PathLike[str], *, rank: int = 0,
               world_size: int = 1, storage_options: dict[str, Any] | None = None, overwrite: bool = False,
               save_id: str | None = None, options: IOOptions = DEFAULT_OPTIONS,
               incremental: bool = False, local_tier: Any = None) -> "Future[str]":
    """`save` in the background; returns a `concurrent.futures.Future` of `prefix` as soon
    as the variables' values are snapshotted."""
    return _plugin().save_async(checkpoint_or_trackable, prefix, rank=rank, world_size=world_size,
                                storage_options=storage_options, overwrite=overwrite, save_id=save_id,
                                options=options, incremental=incremental, local_tier=local_tier)


def restore(checkpoint_or_trackable: Any, prefix: str | os.PathLike[str], *,
            storage_options: dict[str, Any] | None = None, options: IOOptions = DEFAULT_OPTIONS,
            local_tier: Any = None) -> Any:
    """Restore `checkpoint_or_trackable` from the object-based checkpoint at `prefix`;
    returns TensorFlow's `CheckpointLoadStatus`.  `local_tier`: see `remoteckpt.save`
    (saves) and `remoteckpt.load` (restores, from the nearest tier)."""
    return _plugin().restore(checkpoint_or_trackable, prefix, storage_options=storage_options, options=options,
                             local_tier=local_tier)


def checkpoint_tensors(checkpoint_or_trackable: Any) -> dict[str, Any]:
    """The tensors (checkpoint key -> numpy array or `Slice`s) `tf.train.Checkpoint` would
    write for `checkpoint_or_trackable`, object graph included."""
    return _plugin().checkpoint_tensors(checkpoint_or_trackable)


def export_saved_model(obj: Any, base: str | os.PathLike[str], *, signatures: Any = None, version: int | None = None,
                       keep: int | None = None, save_options: Any = None,
                       storage_options: dict[str, Any] | None = None, options: IOOptions = DEFAULT_OPTIONS) -> str:
    """`tf.saved_model.save` into the numbered version ``BASE/N/`` of `base` (any store),
    ``saved_model.pb`` committed last and create-only; returns the version's directory.
    See `remoteckpt.plugins.tensorflow_saved_model.export_saved_model`."""
    from .plugins import tensorflow_saved_model  # imports tensorflow

    return tensorflow_saved_model.export_saved_model(obj, base, signatures=signatures, version=version, keep=keep,
                                                     save_options=save_options, storage_options=storage_options,
                                                     options=options)


def load_saved_model(url: str | os.PathLike[str], tags: Any = None, *, load_options: Any = None,
                     storage_options: dict[str, Any] | None = None, options: IOOptions = DEFAULT_OPTIONS) -> Any:
    """`tf.saved_model.load` of the SavedModel at `url` (or a base directory's newest complete
    version), its variables read from the store.  See
    `remoteckpt.plugins.tensorflow_saved_model.load_saved_model`."""
    from .plugins import tensorflow_saved_model  # imports tensorflow

    return tensorflow_saved_model.load_saved_model(url, tags, load_options=load_options,
                                                   storage_options=storage_options, options=options)
