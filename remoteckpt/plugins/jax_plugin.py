"""JAX backend of `remoteckpt.jax`: pytrees of (sharded) `jax.Array`s as TensorFlow checkpoints.

Names: a leaf's key path joined with ``/`` (dict keys, sequence indices, attribute names,
flattened-index keys), e.g. ``{"params": {"dense": {"kernel": w}}}`` -> ``params/dense/kernel``
and ``{"layers": [a, b]}`` -> ``layers/0``, ``layers/1``.

Save: each `jax.Array` contributes its addressable shards with ``replica_id == 0`` (so every
element is written exactly once across devices and processes), each as a `remoteckpt.Slice`
of the global shape; a shard covering the whole array is stored as a plain tensor.  Other
leaves (numpy arrays, numpy and Python scalars, str/bytes) are written by rank 0.  In a
multi-process job every process calls `save` (rank = `jax.process_index()`, world size =
`jax.process_count()` by default) and remoteckpt's protocol commits one checkpoint.

Restore into any sharding: for every addressable device of the target sharding, the box of
the global array it holds is read with ranged reads (`CheckpointReader.read_boxes`, all
leaves' boxes fetched concurrently, in batches of about `IOOptions.memory_budget` bytes),
put on that device, and the array is assembled with `jax.make_array_from_single_device_arrays`.
Devices holding the same box (replicas) share one read.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import Any

import jax
import numpy as np

from .. import api, dtypes
from ..engine import loop
from ..engine.plan import Slice
from ..errors import InvalidTensorsError, ShapeMismatchError, UnsupportedDTypeError
from ..options import DEFAULT_OPTIONS, IOOptions
from ..reader import CheckpointReader

__all__ = ["key_name", "restore", "save", "save_async", "tensors_of"]

_SCALARS = (bool, int, float, complex)
_STRINGS = (str, bytes)


# --- names ----------------------------------------------------------------------------------

def _key_part(key: Any) -> str:
    tu = jax.tree_util
    if isinstance(key, tu.DictKey):
        return str(key.key)
    if isinstance(key, tu.SequenceKey):
        return str(key.idx)
    if isinstance(key, tu.GetAttrKey):
        return str(key.name)
    if isinstance(key, tu.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def key_name(path: Sequence[Any]) -> str:
    """The tensor name of a leaf's key path: its parts joined with ``/``."""
    name = "/".join(_key_part(k) for k in path)
    if not name:
        raise InvalidTensorsError("a bare leaf has no key path to name it: save a dict (e.g. {'x': array})")
    return name


def _named_leaves(tree: Any, is_leaf: Any = None) -> tuple[list[tuple[str, Any]], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    named = [(key_name(path), leaf) for path, leaf in flat]
    seen: set[str] = set()
    for name, _ in named:
        if name in seen:
            raise InvalidTensorsError(f"two leaves of the pytree have the name {name!r}")
        seen.add(name)
    return named, treedef


# --- save -----------------------------------------------------------------------------------

def _start(index: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(s.indices(d)[0] for s, d in zip(index, shape)) + (0,) * (len(shape) - len(index))


def _check_dtype(name: str, dtype: Any) -> None:
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        raise UnsupportedDTypeError(f"leaf {name!r} holds PRNG keys: save jax.random.key_data(key) instead")


def tensors_of(pytree: Any, *, rank: int | None = None, copy: bool = False) -> dict[str, Any]:
    """What process `rank` writes for `pytree`: tensor name -> array, `Slice` or list of
    `Slice`s.  `copy` makes private host copies (for saves that outlive the call)."""
    rank = jax.process_index() if rank is None else rank
    named, _ = _named_leaves(pytree)
    tensors: dict[str, Any] = {}
    pending: list[tuple[str, jax.Array, list[Any]]] = []
    for name, leaf in named:
        if isinstance(leaf, jax.Array):
            _check_dtype(name, leaf.dtype)
            if leaf.size == 0:
                if rank == 0:
                    tensors[name] = np.zeros(leaf.shape, leaf.dtype)
                continue
            shards = [s for s in leaf.addressable_shards if s.replica_id == 0]
            for shard in shards:
                shard.data.copy_to_host_async()  # start every device-to-host copy before waiting on one
            pending.append((name, leaf, shards))
            tensors[name] = None  # keep the pytree's order
        elif isinstance(leaf, (np.ndarray, np.generic, *_SCALARS, *_STRINGS)):
            if rank == 0:
                array = np.asarray(leaf, dtype=object) if isinstance(leaf, _STRINGS) else np.asarray(leaf)
                tensors[name] = np.array(array, copy=True) if copy else array
        else:
            raise InvalidTensorsError(f"leaf {name!r}: cannot save a {type(leaf).__name__} "
                                      "(expected jax.Array, numpy array or scalar, str or bytes)")
    for name, leaf, shards in pending:
        shape = tuple(leaf.shape)
        parts = []
        for shard in shards:
            data = np.array(shard.data, copy=True) if copy else np.asarray(shard.data)
            parts.append(Slice(data, shape, _start(shard.index, shape)))
        if parts:
            tensors[name] = parts
        else:
            del tensors[name]  # held by another process's devices
    return tensors


def _job(rank: int | None, world_size: int | None) -> tuple[int, int]:
    return (jax.process_index() if rank is None else rank,
            jax.process_count() if world_size is None else world_size)


def save(pytree: Any, prefix: str | os.PathLike[str], *, rank: int | None = None, world_size: int | None = None,
         storage_options: dict[str, Any] | None = None, overwrite: bool = False, save_id: str | None = None,
         options: IOOptions = DEFAULT_OPTIONS, incremental: bool = False, local_tier: Any = None) -> str:
    """Save `pytree` as a TensorFlow checkpoint at `prefix`; returns `prefix` once committed.
    In a multi-process job every process calls it (defaults: `jax.process_index()`,
    `jax.process_count()`) and writes the shards its devices hold.  `save_id`, `incremental` and
    `local_tier` are as for `remoteckpt.save`."""
    rank, world_size = _job(rank, world_size)
    tensors = tensors_of(pytree, rank=rank)
    return api.save(tensors, os.fspath(prefix), rank=rank, world_size=world_size, overwrite=overwrite,
                    save_id=save_id, storage_options=storage_options, options=options,
                    incremental=incremental, local_tier=local_tier)


_snapshot_lock = threading.Lock()


def save_async(pytree: Any, prefix: str | os.PathLike[str], *, rank: int | None = None,
               world_size: int | None = None, storage_options: dict[str, Any] | None = None,
               overwrite: bool = False, save_id: str | None = None,
               options: IOOptions = DEFAULT_OPTIONS, incremental: bool = False,
               local_tier: Any = None) -> "Future[str]":
    """`save` in the background: returns a `concurrent.futures.Future` of `prefix` once every
    shard is copied to host memory (one copy per shard; the arrays may then be donated or
    deleted).  One save of this module is in flight at a time; errors come out of the future."""
    rank, world_size = _job(rank, world_size)
    text = os.fspath(prefix)
    with _snapshot_lock:
        api.wait_for_saves()  # the previous save's buffers are freed before this snapshot is taken
        tensors = tensors_of(pytree, rank=rank, copy=True)
        return api.save_async(tensors, text, rank=rank, world_size=world_size, overwrite=overwrite,
                              save_id=save_id, storage_options=storage_options, options=options, copy=False,
                              incremental=incremental, local_tier=local_tier)


# --- restore --------------------------------------------------------------------------------

def _box(index: Any, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    start: list[int] = []
    size: list[int] = []
    for d, dim in enumerate(shape):
        s = index[d] if d < len(index) else slice(None)
        a, b, step = s.indices(dim)
        if step != 1:
            raise ShapeMismatchError(f"sharding index {index} has a step")
        start.append(a)
        size.append(max(0, b - a))
    return tuple(start), tuple(size)


class _Leaf:
    """One target leaf: the boxes to read and how to build the restored value."""

    def __init__(self, name: str, leaf: Any, stored_shape: list[int], stored_dtype: np.dtype) -> None:
        self.name = name
        self.leaf = leaf
        self.requests: list[tuple[tuple[int, ...], tuple[int, ...]] | None] = []
        self.devices: list[list[Any]] = []
        shape, dtype = tuple(stored_shape), stored_dtype
        if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)):
            _check_dtype(name, leaf.dtype)
            self._check_shape(tuple(leaf.shape), shape)
            self.dtype = np.dtype(leaf.dtype)
            sharding = getattr(leaf, "sharding", None)
            if sharding is None:
                sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            self.sharding = sharding
            self.shape = shape
            by_box: dict[tuple[tuple[int, ...], tuple[int, ...]], list[Any]] = {}
            for device, index in sharding.addressable_devices_indices_map(shape).items():
                by_box.setdefault(_box(index, shape), []).append(device)
            for box, devices in by_box.items():
                self.requests.append(box)
                self.devices.append(devices)
        elif isinstance(leaf, np.ndarray):
            self._check_shape(tuple(leaf.shape), shape)
            self.dtype = leaf.dtype
            self.requests.append(None)
        elif isinstance(leaf, (np.generic, *_SCALARS, *_STRINGS)):
            self._check_shape((), shape)
            self.dtype = leaf.dtype if isinstance(leaf, np.generic) else dtype
            self.requests.append(None)
        else:
            raise InvalidTensorsError(
                f"leaf {name!r}: cannot restore into a {type(leaf).__name__} (expected jax.Array, "
                "jax.ShapeDtypeStruct, numpy array or scalar, Python scalar, str, bytes)")
        self.nbytes = sum(int(np.prod(r[1] if r else shape)) for r in self.requests) * max(1, stored_dtype.itemsize)

    def _check_shape(self, wanted: tuple[int, ...], stored: tuple[int, ...]) -> None:
        if wanted != stored:
            raise ShapeMismatchError(f"tensor {self.name!r} has shape {list(stored)} in the checkpoint, "
                                     f"the target leaf has shape {list(wanted)}")

    def build(self, arrays: list[np.ndarray]) -> Any:
        leaf = self.leaf
        if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)):
            singles = []
            for array, devices in zip(arrays, self.devices):
                array = array.astype(self.dtype, copy=False)
                singles += [jax.device_put(array, device) for device in devices]
            return jax.make_array_from_single_device_arrays(self.shape, self.sharding, singles)
        (array,) = arrays
        if isinstance(leaf, np.ndarray):
            return array.astype(self.dtype, copy=False)
        if isinstance(leaf, np.generic):
            return array.astype(self.dtype, copy=False)[()]
        value = array[()]
        if isinstance(leaf, _STRINGS):
            if isinstance(value, bytes) and isinstance(leaf, str):
                return value.decode("utf-8")
            return value
        return type(leaf)(value.item() if hasattr(value, "item") else value)


def _batches(leaves: Iterable[_Leaf], budget: int) -> Iterable[list[_Leaf]]:
    batch: list[_Leaf] = []
    size = 0
    for leaf in leaves:
        batch.append(leaf)
        size += leaf.nbytes
        if size >= budget:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _nest(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, last = name.split("/")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InvalidTensorsError(f"tensor {name!r} is nested under another tensor; pass target=")
        if last in node:
            raise InvalidTensorsError(f"tensor {name!r} collides with a group of the same name; pass target=")
        node[last] = value
    return out


def restore(prefix: str | os.PathLike[str], target: Any = None, *, storage_options: dict[str, Any] | None = None,
            options: IOOptions = DEFAULT_OPTIONS, local_tier: Any = None) -> Any:
    """Restore a pytree from the checkpoint at `prefix`.

    With `target` (a pytree of `jax.Array`s, whose sharding is reused, of
    `jax.ShapeDtypeStruct`s, whose ``sharding`` is used (one default device if None), or of
    numpy arrays / scalars / Python scalars / str / bytes), returns a pytree of the same
    structure: each `jax.Array` leaf is assembled on the target's devices from ranged reads of
    just the boxes those devices hold, cast to the target's dtype; other leaves come back as
    their own type.  Without `target`, returns every tensor as a numpy array in nested dicts
    (names split at ``/``).
    """
    with CheckpointReader(prefix, storage_options=storage_options, options=options,
                          local_tier=local_tier) as reader:
        if target is None:
            names = list(reader.get_variable_to_shape_map())
            return _nest(loop.run(reader.read_many(names)))
        named, treedef = _named_leaves(target)
        shapes = reader.get_variable_to_shape_map()
        leaves = []
        for name, leaf in named:
            if name not in shapes:
                reader.get_tensor(name)  # raises TensorNotFoundError naming the checkpoint
            # only the dtypes of the tensors asked for (the others may be ones numpy cannot hold)
            stored = dtypes.to_numpy(reader.index.entries[name.encode("utf-8", "surrogateescape")].dtype)
            leaves.append(_Leaf(name, leaf, shapes[name], stored))
        results: dict[str, Any] = {}
        for batch in _batches(leaves, options.memory_budget):
            requests = [(leaf.name, box) for leaf in batch for box in leaf.requests]
            arrays = iter(loop.run(reader.read_boxes(requests)))
            for leaf in batch:
                results[leaf.name] = leaf.build([next(arrays) for _ in leaf.requests])
        return jax.tree_util.tree_unflatten(treedef, [results[name] for name, _ in named])
