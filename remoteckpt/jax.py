"""JAX pytrees (sharded `jax.Array`s included) as TensorFlow checkpoints, through remoteckpt.

    import remoteckpt.jax as rjax
    rjax.save({"params": params, "step": 1000}, "s3://bucket/run/ckpt-1000")
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=new_sharding), params)
    restored = rjax.restore("s3://bucket/run/ckpt-1000", target={"params": abstract, "step": 0})

Tensor names are the leaves' key paths joined with ``/`` (``params/dense/kernel``).  Each
device's shard is written once (``replica_id == 0``) as a box of the global array, and a
restore reads, per target device, only the box that device holds.  JAX is imported when one
of these functions is first called, not when this module is imported.
See ``docs/plugins/jax.md``.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from typing import Any

from .options import DEFAULT_OPTIONS, IOOptions

__all__ = ["restore", "save", "save_async", "tensors_of"]


def _plugin() -> Any:
    from .plugins import jax_plugin  # imports jax

    return jax_plugin


def save(pytree: Any, prefix: str | os.PathLike[str], *, rank: int | None = None, world_size: int | None = None,
         storage_options: dict[str, Any] | None = None, overwrite: bool = False,
         save_id: str | None = None, options: IOOptions = DEFAULT_OPTIONS, incremental: bool = False,
         local_tier: Any = None) -> str:
    """Save `pytree` at `prefix`; returns `prefix` once committed.  In a multi-process job
    every process calls it; `rank`/`world_size` default to `jax.process_index()` /
    `jax.process_count()`.  `incremental` is as for `remoteckpt.save`."""
    return _plugin().save(pytree, prefix, rank=rank, world_size=world_size, storage_options=storage_options,
                          overwrite=overwrite, save_id=save_id, options=options, incremental=incremental,
                          local_tier=local_tier)


def save_async(pytree: Any, prefix: str | os.PathLike[str], *, rank: int | None = None,
               world_size: int | None = None, storage_options: dict[str, Any] | None = None,
               overwrite: bool = False, save_id: str | None = None,
               options: IOOptions = DEFAULT_OPTIONS, incremental: bool = False,
               local_tier: Any = None) -> "Future[str]":
    """`save` in the background: a `concurrent.futures.Future` of `prefix`, returned once the
    shards are copied to host memory."""
    return _plugin().save_async(pytree, prefix, rank=rank, world_size=world_size,
                                storage_options=storage_options, overwrite=overwrite, save_id=save_id,
                                options=options, incremental=incremental, local_tier=local_tier)


def restore(prefix: str | os.PathLike[str], target: Any = None, *, storage_options: dict[str, Any] | None = None,
            options: IOOptions = DEFAULT_OPTIONS, local_tier: Any = None) -> Any:
    """Restore the pytree at `prefix` into the structure, shardings and dtypes of `target`
    (leaves: `jax.Array`, `jax.ShapeDtypeStruct` with a ``sharding``, numpy arrays or scalars,
    Python scalars, str, bytes); without `target`, nested dicts of numpy arrays.  `local_tier`:
    see `remoteckpt.save` (saves) and `remoteckpt.load` (restores, from the nearest tier)."""
    return _plugin().restore(prefix, target, storage_options=storage_options, options=options,
                             local_tier=local_tier)


def tensors_of(pytree: Any, *, rank: int | None = None) -> dict[str, Any]:
    """The tensors (name -> array, `Slice` or list of `Slice`s) this process writes for `pytree`."""
    return _plugin().tensors_of(pytree, rank=rank)
