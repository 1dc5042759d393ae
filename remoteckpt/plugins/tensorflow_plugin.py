"""TensorFlow backend of `remoteckpt.tensorflow`: object-based checkpoints of TF trackables.

Saving asks TensorFlow's own serializer (`save_util.serialize_graph_view`, what
`tf.train.Checkpoint.write` runs inside `TrackableSaver`) for the object graph and the tensors
of every trackable, with TF's checkpoint keys (``model/kernel/.ATTRIBUTES/VARIABLE_VALUE``...),
adds the serialized `TrackableObjectGraph` under ``_CHECKPOINTABLE_OBJECT_GRAPH`` exactly as TF
does, and hands the arrays to remoteckpt's engine: the bytes go from the tensors' memory to
local disk or S3, with no local copy of the checkpoint.

Restoring runs TensorFlow's own matching of the stored object graph to live objects
(`CheckpointPosition`, `_CheckpointRestoreCoordinator`: children by name, slot variables,
deferred restoration of objects created later, `CheckpointLoadStatus` assertions) with one
replacement: the step that reads tensor values (`restore_saveables`) fetches them through a
remoteckpt `CheckpointReader` (concurrent ranged reads, every byte CRC-checked) instead of
TF's file-based ``RestoreV2``, then calls each saveable's own restore function.

TensorFlow internals used (checked against TF 2.21): ``Checkpoint._saver``
(`TrackableSaver`), its ``_graph_view`` and ``_object_map``,
``Checkpoint._maybe_create_save_counter``, `save_util.serialize_graph_view`,
`checkpoint._CheckpointRestoreCoordinator`, `checkpoint.CheckpointLoadStatus`,
`restore.CheckpointPosition`, `saveable_object_util.validate_and_slice_inputs`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2
from tensorflow.python.checkpoint import checkpoint as tf_checkpoint
from tensorflow.python.checkpoint import checkpoint_options as tf_checkpoint_options
from tensorflow.python.checkpoint import graph_view as graph_view_lib
from tensorflow.python.checkpoint import restore as restore_lib
from tensorflow.python.checkpoint import save_util
from tensorflow.python.eager import context
from tensorflow.python.framework import ops
from tensorflow.python.trackable import base as trackable_base
from tensorflow.python.training.saving import saveable_object, saveable_object_util

from .. import api
from ..engine import loop
from ..engine.plan import Slice
from ..errors import (
    CheckpointError,
    InvalidTensorsError,
    ShapeMismatchError,
    TensorNotFoundError,
    UnsupportedDTypeError,
)
from ..options import DEFAULT_OPTIONS, IOOptions
from ..reader import CheckpointReader

OBJECT_GRAPH_KEY: str = trackable_base.OBJECT_GRAPH_PROTO_KEY
"""``_CHECKPOINTABLE_OBJECT_GRAPH``: the DT_STRING scalar holding the serialized
`TrackableObjectGraph` of an object-based checkpoint."""

__all__ = ["OBJECT_GRAPH_KEY", "checkpoint_tensors", "graph_view_tensors", "restore", "save", "save_async",
           "share_of"]

_gather_lock = threading.RLock()


# --- what to save ----------------------------------------------------------------------------

def _require_eager(what: str) -> None:
    if not context.executing_eagerly() or ops.inside_function():
        raise RuntimeError(f"remoteckpt.tensorflow.{what} runs eagerly only (not in graph mode or inside "
                           "a tf.function)")


def _graph_view(obj: Any) -> tuple[graph_view_lib.ObjectGraphView, Any]:
    """(object graph view, object map) of a `tf.train.Checkpoint` or of any trackable.

    For a `Checkpoint` its ``save_counter`` is created first if missing (as
    `Checkpoint.save` and `Checkpoint.restore` do), so the keys are those `Checkpoint.save`
    writes.  Any other trackable is the root of its own graph, exactly as in
    ``tf.train.Checkpoint(root=obj).write(...)`` (no ``save_counter``)."""
    if isinstance(obj, (tf_checkpoint.Checkpoint, tf_checkpoint.CheckpointV1)):
        obj._maybe_create_save_counter()  # pylint: disable=protected-access
        saver = obj._saver  # pylint: disable=protected-access
        return saver._graph_view, getattr(saver, "_object_map", None)  # pylint: disable=protected-access
    if isinstance(obj, trackable_base.Trackable):
        # TF's own wrapper, so the object graph is the same (its root lists itself as "root").
        return tf_checkpoint.Checkpoint(root=obj)._saver._graph_view, None  # pylint: disable=protected-access
    raise TypeError(f"expected a tf.train.Checkpoint or a trackable object (tf.Module, tf.Variable, Keras "
                    f"model, optimizer, ...), got {type(obj).__name__}")


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "numpy"):  # a string tensor (DTensor keys)
        return _as_text(value.numpy())
    return str(value)


def _parse_slice_spec(name: str, spec: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(full shape, offset, size) of TF's slice spec ``"d0 d1 s0,n0:-"`` (`SaveSliceInfo.spec`)."""
    parts = spec.split()
    try:
        full = tuple(int(p) for p in parts[:-1])
        extents = parts[-1].split(":") if parts else []
        if len(extents) != len(full):
            raise ValueError
        offset: list[int] = []
        size: list[int] = []
        for extent, dim in zip(extents, full):
            start, length = (0, dim) if extent == "-" else (int(x) for x in extent.split(","))
            offset.append(start)
            size.append(length)
    except ValueError:
        raise InvalidTensorsError(f"tensor {name!r}: cannot parse TensorFlow slice spec {spec!r}") from None
    return full, tuple(offset), tuple(size)


def _to_numpy(name: str, value: Any) -> np.ndarray:
    if isinstance(value, tf.Variable):
        value = value.read_value()
    if not hasattr(value, "numpy"):
        value = tf.convert_to_tensor(value)
    dtype = value.dtype.base_dtype
    if dtype in (tf.resource, tf.variant):
        raise UnsupportedDTypeError(f"tensor {name!r}: dtype {dtype.name} holds TensorFlow runtime objects "
                                    "and cannot be checkpointed")
    try:
        array = value.numpy()
    except Exception as exc:  # a symbolic tensor
        raise InvalidTensorsError(f"tensor {name!r}: could not get its value ({exc})") from None
    return np.asarray(array, dtype=object) if dtype == tf.string else np.asarray(array)


def checkpoint_tensors(checkpoint_or_trackable: Any) -> dict[str, Any]:
    """The tensors `tf.train.Checkpoint` writes for `checkpoint_or_trackable`, as remoteckpt
    takes them: checkpoint key -> numpy array (or list of `Slice`s for a variable saved in
    slices), plus ``_CHECKPOINTABLE_OBJECT_GRAPH`` (a 0-d object array of the serialized
    `TrackableObjectGraph`).

    Values are snapshots: reading a resource variable yields a tensor that later updates of
    the variable do not change (TF copies the buffer before updating it in place while a read
    of it is alive), and the arrays here are views of those tensors on CPU."""
    _require_eager("save")
    with _gather_lock:  # creating save_counter and walking the graph are not thread-safe in TF
        view, object_map = _graph_view(checkpoint_or_trackable)
        return graph_view_tensors(view, object_map)


def graph_view_tensors(view: graph_view_lib.ObjectGraphView, object_map: Any = None) -> dict[str, Any]:
    """`checkpoint_tensors` of the object graph seen through `view` (the one a
    `TrackableSaver` of that view writes: a SavedModel's variables are those of its
    augmented view, signatures included).  Eager only; the caller serializes calls."""
    with _gather_lock:
        serialized, _, registered_savers, graph_proto = save_util.serialize_graph_view(view, object_map)
    if registered_savers:
        raise NotImplementedError(
            "objects with registered savers (tf.saved_model.experimental registered checkpoint savers, "
            f"e.g. {sorted(registered_savers)}) write their own files and are not supported by remoteckpt")
    tensors: dict[str, Any] = {}
    for tensor_dict in serialized.values():
        for key, value in tensor_dict.items():
            key = _as_text(key)
            slices = value if isinstance(value, dict) else {"": value}
            for slice_spec, item in slices.items():
                if isinstance(item, saveable_object.SaveSpec):
                    device = item.device if isinstance(item.device, str) or item.device is None \
                        else item.device.to_string()
                    with ops.device(device):
                        item = item.tensor
                if item is None:  # recorded in the object graph, no value saved (TF's convention)
                    continue
                array = _to_numpy(key, item)
                slice_spec = _as_text(slice_spec).strip()
                if slice_spec:
                    full, offset, size = _parse_slice_spec(key, slice_spec)
                    if tuple(array.shape) != size:
                        raise ShapeMismatchError(f"tensor {key!r}: slice {slice_spec!r} has shape {list(array.shape)}")
                    part = Slice(array, full, offset)
                    existing = tensors.setdefault(key, [])
                    if not isinstance(existing, list):
                        raise InvalidTensorsError(f"tensor {key!r} is given both whole and in slices")
                    existing.append(part)
                else:
                    if key in tensors:
                        raise InvalidTensorsError(f"tensor {key!r} is given twice by the object graph")
                    tensors[key] = array
    if OBJECT_GRAPH_KEY in tensors:
        raise InvalidTensorsError(f"a trackable saves a tensor named {OBJECT_GRAPH_KEY!r}")
    tensors[OBJECT_GRAPH_KEY] = np.array(graph_proto.SerializeToString(), dtype=object)
    return tensors


def _split_weight(value: Any) -> int:
    """A tensor's weight in the split: its bytes for numbers, its element count for strings.
    Both follow from dtype and shape alone, which every worker agrees on even where contents
    differ (a string's length, Keras's automatic names in the object graph)."""
    if isinstance(value, list):
        return sum(_split_weight(part.array) for part in value)
    return int(value.size if value.dtype.kind == "O" else value.nbytes)


def share_of(tensors: Mapping[str, Any], rank: int, world_size: int) -> dict[str, Any]:
    """The tensors worker `rank` of `world_size` writes when every worker holds the same
    variables (same names, dtypes and shapes): a deterministic split balancing bytes (largest
    tensors first, each to the least loaded worker, ties to the lowest rank), computed from
    names, dtypes and shapes only, so that every worker computes the same one.  The object
    graph, whose bytes depend on the process, is rank 0's.  Order within the share is kept."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    if world_size == 1:
        return dict(tensors)
    loads = [0] * world_size
    owner: dict[str, int] = {OBJECT_GRAPH_KEY: 0}
    for name in sorted((n for n in tensors if n != OBJECT_GRAPH_KEY), key=lambda n: (-_split_weight(tensors[n]), n)):
        r = min(range(world_size), key=lambda i: (loads[i], i))
        owner[name] = r
        loads[r] += max(1, _split_weight(tensors[name]))
    return {n: v for n, v in tensors.items() if owner[n] == rank}


# --- save ---------------------------------------------------------------------------------

def save(checkpoint_or_trackable: Any, prefix: str | os.PathLike[str], *, rank: int = 0, world_size: int = 1,
         storage_options: dict[str, Any] | None = None, overwrite: bool = False, save_id: str | None = None,
         options: IOOptions = DEFAULT_OPTIONS, incremental: bool = False, local_tier: Any = None) -> str:
    """Write the checkpoint `tf.train.Checkpoint` would write for `checkpoint_or_trackable`,
    at exactly `prefix` (like `Checkpoint.write`: no numbering, ``save_counter`` is stored as
    it is, no ``checkpoint`` state file).  Returns `prefix` once committed.

    With `world_size` > 1, every worker calls `save` with the same (replicated) state and its
    own `rank`; the tensors are split between the workers (`share_of`), which write their data
    files in parallel, and rank 0 commits one index.  `save_id`, `incremental` and `local_tier`
    are as for `remoteckpt.save`."""
    text = os.fspath(prefix)
    tensors = share_of(checkpoint_tensors(checkpoint_or_trackable), rank, world_size)
    return api.save(tensors, text, rank=rank, world_size=world_size, overwrite=overwrite, save_id=save_id,
                    storage_options=storage_options, options=options,
                    incremental=incremental, local_tier=local_tier)


_snapshot_lock = threading.Lock()


def save_async(checkpoint_or_trackable: Any, prefix: str | os.PathLike[str], *, rank: int = 0,
               world_size: int = 1, storage_options: dict[str, Any] | None = None, overwrite: bool = False,
               save_id: str | None = None, options: IOOptions = DEFAULT_OPTIONS,
               incremental: bool = False, local_tier: Any = None) -> "Future[str]":
    """`save` in the background: returns a `concurrent.futures.Future` of `prefix` once the
    values are snapshotted (variable reads, on the caller's thread), so training may go on and
    update the variables at once.  The snapshot is not copied again: a read of a resource
    variable is already immutable.  One save of this module is in flight at a time (this call
    waits for the previous one); errors come out of the future."""
    text = os.fspath(prefix)
    with _snapshot_lock:
        api.wait_for_saves()  # the previous save's buffers are freed before this snapshot is taken
        tensors = share_of(checkpoint_tensors(checkpoint_or_trackable), rank, world_size)
        return api.save_async(tensors, text, rank=rank, world_size=world_size, overwrite=overwrite,
                              save_id=save_id, storage_options=storage_options, options=options, copy=False,
                              incremental=incremental, local_tier=local_tier)


# --- restore ------------------------------------------------------------------------------

class _RemoteReader:
    """What TensorFlow's restore machinery asks of its `CheckpointReader`, answered from a
    remoteckpt `CheckpointReader` (no TensorFlow file system involved)."""

    def __init__(self, reader: CheckpointReader) -> None:
        self.reader = reader
        self._enums = {k.decode("utf-8", "surrogateescape"): reader.index.entries[k].dtype
                       for k in reader.index.tensor_keys()}

    def dtype_enum(self, name: str) -> int:
        try:
            return self._enums[name]
        except KeyError:
            raise TensorNotFoundError(f"tensor {name!r} not found in checkpoint {self.reader.prefix}") from None

    def get_variable_to_dtype_map(self) -> dict[str, tf.DType]:
        return {n: tf.dtypes.as_dtype(e) for n, e in self._enums.items()}

    def get_variable_to_shape_map(self) -> dict[str, list[int]]:
        return self.reader.get_variable_to_shape_map()

    def has_tensor(self, name: str) -> bool:
        return self.reader.has_tensor(name)

    def get_tensor(self, name: str) -> Any:
        array = self.reader.get_tensor(name)
        return array[()] if array.ndim == 0 and array.dtype.kind == "O" else array


class _RemoteRestoreCoordinator(tf_checkpoint._CheckpointRestoreCoordinator):  # pylint: disable=protected-access
    """TF's restore coordinator, reading values through remoteckpt."""

    def __init__(self, remote: _RemoteReader, io_options: IOOptions, **kwargs: Any) -> None:
        self.remote = remote
        self.io_options = io_options
        super().__init__(reader=remote, **kwargs)

    def restore_saveables(self, tensor_saveables: Mapping[str, Any], python_positions: Sequence[Any],
                          registered_savers: Mapping[str, Any] | None = None, reader: Any = None) -> list[Any]:
        if registered_savers:
            raise NotImplementedError(
                f"objects with registered savers ({sorted(registered_savers)}) cannot be restored by remoteckpt")
        for position in python_positions:
            key = position.object_proto.attributes[0].checkpoint_key
            position.trackable.deserialize(self.remote.get_tensor(key))
        if tensor_saveables:
            flat = saveable_object_util.validate_and_slice_inputs(tensor_saveables)
            device = self.options.experimental_io_device or "cpu:0"
            _restore_saveables(self.remote, flat, device, self.io_options)
        return []  # eager: everything is assigned already


def _restore_saveables(remote: _RemoteReader, saveables: Sequence[Any], device: str, options: IOOptions) -> None:
    """Read the values of `saveables` (in batches of about `memory_budget` bytes, each batch
    one concurrent ranged read) and call each saveable's restore."""
    shapes = remote.get_variable_to_shape_map()
    batch: list[tuple[Any, list[tuple[str, Any, Any]]]] = []
    batch_bytes = 0

    def flush() -> None:
        nonlocal batch, batch_bytes
        if not batch:
            return
        requests = [(name, box) for _, specs in batch for name, box, _ in specs]
        arrays = iter(loop.run(remote.reader.read_boxes(requests)))
        with ops.device(device):
            for saveable, specs in batch:
                values = [tf.constant(next(arrays), dtype=dtype) for _, _, dtype in specs]
                saveable.restore(values, None)
        batch, batch_bytes = [], 0

    for saveable in saveables:
        specs = []
        for spec in saveable.specs:
            name, slice_spec = _as_text(spec.name), _as_text(spec.slice_spec or "").strip()
            stored = tf.dtypes.as_dtype(remote.dtype_enum(name))
            wanted = tf.dtypes.as_dtype(spec.dtype).base_dtype
            if stored != wanted:
                raise ShapeMismatchError(f"tensor {name!r} in {remote.reader.prefix} is {stored.name}, "
                                         f"the object restoring it expects {wanted.name}")
            box = None
            count = int(np.prod(shapes[name]))
            if slice_spec:
                full, offset, size = _parse_slice_spec(name, slice_spec)
                if list(full) != list(shapes[name]):
                    raise ShapeMismatchError(f"tensor {name!r} in {remote.reader.prefix} has shape {shapes[name]}, "
                                             f"the object restoring it expects {list(full)}")
                box, count = (offset, size), int(np.prod(size))
            specs.append((name, box, wanted))
            batch_bytes += count * (wanted.size if wanted != tf.string else 16)
        batch.append((saveable, specs))
        if batch_bytes >= options.memory_budget:
            flush()
    flush()


def restore(checkpoint_or_trackable: Any, prefix: str | os.PathLike[str], *,
            storage_options: dict[str, Any] | None = None,
            options: IOOptions = DEFAULT_OPTIONS, local_tier: Any = None) -> Any:
    """Restore `checkpoint_or_trackable` (a `tf.train.Checkpoint` or any trackable) from the
    object-based checkpoint at `prefix` (written by TensorFlow or by `save`), on local disk or
    any remoteckpt store.  Matching is TensorFlow's own (object graph, slot variables, deferred
    restoration); values are read by remoteckpt, only those that are needed, verified.

    Returns TensorFlow's `CheckpointLoadStatus` (``assert_consumed()``,
    ``assert_existing_objects_matched()``, ``expect_partial()``...).  Objects created after
    this call are restored when they are attached, like with `Checkpoint.restore`, except
    variables created through TF's legacy ``add_variable`` getters from a non-local prefix
    (TF reads those through its own file system): create the objects first (build the model,
    ``optimizer.build(model.trainable_variables)``) to be safe."""
    _require_eager("restore")
    text = os.fspath(prefix)
    view, _ = _graph_view(checkpoint_or_trackable)
    remote = _RemoteReader(CheckpointReader(text, storage_options=storage_options, options=options,
                                            local_tier=local_tier))
    if not remote.has_tensor(OBJECT_GRAPH_KEY):
        raise TensorNotFoundError(
            f"{text} has no {OBJECT_GRAPH_KEY} tensor: it is not an object-based checkpoint "
            "(name-based tf.compat.v1.train.Saver checkpoints are not supported here; use remoteckpt.load)")
    proto = trackable_object_graph_pb2.TrackableObjectGraph()
    try:
        proto.ParseFromString(remote.get_tensor(OBJECT_GRAPH_KEY))
    except Exception as exc:
        raise CheckpointError(f"{text}: {OBJECT_GRAPH_KEY} is not a TrackableObjectGraph ({exc})") from None
    tf_options = tf_checkpoint_options.CheckpointOptions()
    with ops.device("/cpu:0"):
        path_tensor = tf.constant(text)
    coordinator = _RemoteRestoreCoordinator(
        remote, options, object_graph_proto=proto, save_path=text, save_path_tensor=path_tensor,
        restore_op_cache={}, graph_view=view, options=tf_options, saveables_cache=None)
    restore_lib.CheckpointPosition(checkpoint=coordinator, proto_id=0).restore(view.root, remote)
    # Attached dependencies (a Checkpoint(root=...)'s keyword objects, its save_counter) are not
    # children of the root: restore them on their own, as TrackableSaver.restore does.
    for ref in view.attached_dependencies or ():
        if ref.name == "root":
            continue
        proto_id = next((c.node_id for c in proto.nodes[0].children if c.local_name == ref.name), None)
        if proto_id is None or proto_id in coordinator.object_by_proto_id:
            continue
        restore_lib.CheckpointPosition(checkpoint=coordinator, proto_id=proto_id).restore(ref.ref, remote)
    context.async_wait()
    return tf_checkpoint.CheckpointLoadStatus(coordinator, feed_dict=None, graph_view=view, options=tf_options)
