"""SavedModels on any remoteckpt store: `export_saved_model` and `load_saved_model`.

Export of one version ``BASE/N/`` (`remoteckpt.management.versions` draws the layout), in
this order:

  1. TensorFlow builds the MetaGraphDef (graph, functions, signatures, object graph) in
     memory, as `tf.saved_model.save` does (``save._build_meta_graph``), and copies the
     assets into a local temporary directory;
  2. the variables: the tensors TensorFlow's saver writes for that object graph (its
     augmented view, signatures included: `tensorflow_plugin.graph_view_tensors`), saved by
     remoteckpt's engine at ``N/variables/variables`` like any checkpoint (parallel,
     checksummed, within the memory budget, the index committed create-only); the bytes are
     those TensorFlow writes;
  3. ``assets/...``, create-only;
  4. ``fingerprint.pb``: TensorFlow's, computed over the ``saved_model.pb`` and the
     committed ``variables.index``;
  5. ``saved_model.pb``, create-only: the version is complete from this moment;
  6. with `keep`, older complete versions beyond the `keep` newest are retired.

A process killed anywhere before 5 leaves a partial version (never loaded; `gc` removes it,
its number is not used again); one killed during 6 leaves extra complete versions.

Load: ``saved_model.pb``, ``fingerprint.pb`` and ``assets/`` go through a local temporary
directory (kept while the loaded object lives: its assets' paths point there); TensorFlow
loads the graph from it without its checkpoint (``LoadOptions(experimental_skip_checkpoint=
True)``), and the variables are restored by `tensorflow_plugin.restore` from the bucket (ranged
reads, every byte CRC-checked), with the matching TensorFlow's loader asks for.

TensorFlow internals used (checked against TF 2.21): ``saved_model.save._build_meta_graph``,
``builder_impl.copy_assets_to_destination_dir``, ``fingerprinting_utils.write_fingerprint``,
``ops.dismantle_graph``, and those of `tensorflow_plugin`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import weakref
from typing import Any

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import ops
from tensorflow.python.saved_model import builder_impl, constants, fingerprinting_utils
from tensorflow.python.saved_model import save as tf_save
from tensorflow.python.saved_model import save_options as tf_save_options

from ..direct import save_checkpoint
from ..engine import loop
from ..errors import CheckpointBusyError, CheckpointExistsError, CheckpointNotFoundError
from ..faults import crash_point, within
from ..format.bundle import index_filename
from ..management import versions
from ..options import DEFAULT_OPTIONS, IOOptions
from ..storage import Store, open_store
from ..tools.copy import copy_checkpoint
from . import tensorflow_plugin

__all__ = ["export_saved_model", "load_saved_model"]

_NUMBERING_ATTEMPTS = 5
"""Exports racing for the same next number: each retries with the number after, this many
times (one wins each number; a loser's leftovers are a partial version, never reused)."""


def _join(base: str, key: str) -> str:
    return f"{base.rstrip('/')}/{key}" if "://" in base else os.path.join(base, key)


def _root(url: str | os.PathLike[str]) -> str:
    text = os.fspath(url)
    return text.rstrip("/") if "://" in text else os.path.abspath(text)


def _local_files(directory: str) -> list[str]:
    """Relative '/'-separated paths of the files under `directory`, sorted."""
    found = []
    for here, _, files in os.walk(directory):
        for name in files:
            found.append(os.path.relpath(os.path.join(here, name), directory).replace(os.sep, "/"))
    return sorted(found)


async def _put_file(store: Store, key: str, path: str) -> None:
    with open(path, "rb") as f:  # assets and the fingerprint: small files, read whole
        data = f.read()
    await store.put(key, data, exclusive=True)


def _build(obj: Any, signatures: Any, save_options: Any, workdir: str) -> tuple[bytes, dict[str, Any], Any]:
    """Step 1: (saved_model.pb bytes, variables' tensors, exported graph), assets copied into
    `workdir`.  The caller dismantles the graph when done."""
    saved_model = saved_model_pb2.SavedModel()
    meta_graph = saved_model.meta_graphs.add()
    _, graph, object_saver, asset_info, _, _ = tf_save._build_meta_graph(  # pylint: disable=protected-access
        obj, signatures, save_options, meta_graph)
    saved_model.saved_model_schema_version = constants.SAVED_MODEL_SCHEMA_VERSION
    tensors = tensorflow_plugin.graph_view_tensors(object_saver._graph_view,  # pylint: disable=protected-access
                                                   object_saver._object_map)  # pylint: disable=protected-access
    builder_impl.copy_assets_to_destination_dir(asset_info.asset_filename_map, workdir)
    return saved_model.SerializeToString(deterministic=True), tensors, graph


async def _export(store: Store, base: str, number: int, pb: bytes, tensors: dict[str, Any], workdir: str, *,
                  storage_options: dict[str, Any] | None, options: IOOptions) -> None:
    """Steps 2 to 5 for version `number` (see the module docstring)."""
    prefix = _join(base, versions.version_key(number, versions.VARIABLES_PREFIX))
    # Each export its own save id: two exports racing for one number are two jobs, and the
    # claim lets one of them write (the other gets CheckpointBusyError and takes the next).
    await save_checkpoint(tensors, prefix, storage_options=storage_options, options=options,
                          save_id=f"export-{uuid.uuid4().hex}")
    crash_point("export-variables")
    index = await store.get(versions.version_key(number, index_filename(versions.VARIABLES_PREFIX)))
    os.makedirs(os.path.join(workdir, "variables"), exist_ok=True)
    with open(os.path.join(workdir, index_filename(versions.VARIABLES_PREFIX)), "wb") as f:
        f.write(index)
    with open(os.path.join(workdir, versions.SAVED_MODEL_PB), "wb") as f:
        f.write(pb)
    for rel in _local_files(os.path.join(workdir, versions.ASSETS_DIR)):
        await _put_file(store, versions.version_key(number, f"{versions.ASSETS_DIR}/{rel}"),
                        os.path.join(workdir, versions.ASSETS_DIR, rel))
    crash_point("export-assets")
    fingerprinting_utils.write_fingerprint(workdir)  # TF's, unless its fingerprinting flag is off
    fingerprint = os.path.join(workdir, versions.FINGERPRINT_PB)
    if os.path.exists(fingerprint):
        await _put_file(store, versions.version_key(number, versions.FINGERPRINT_PB), fingerprint)
    crash_point("export-fingerprint")
    with within("export-committing"):
        await store.put(versions.version_key(number, versions.SAVED_MODEL_PB), pb, exclusive=True)
    crash_point("export-committed")


def export_saved_model(obj: Any, base: str | os.PathLike[str], *, signatures: Any = None, version: int | None = None,
                       keep: int | None = None, save_options: Any = None,
                       storage_options: dict[str, Any] | None = None, options: IOOptions = DEFAULT_OPTIONS) -> str:
    """Export `obj` (a `tf.Module`, Keras model, any trackable) as what `tf.saved_model.save(obj,
    export_dir, signatures, save_options)` writes, into version `version` of the base
    directory `base` (a local path or any URL remoteckpt reaches): ``BASE/N/``.  Returns that
    directory once complete (its ``saved_model.pb`` committed).

    Without `version`, N is one more than the highest version there, complete or partial.
    A version that exists (even partial) is never written again: `CheckpointExistsError`.
    With `keep`, the complete versions beyond the `keep` newest are deleted after the new one
    is complete.  Eager mode only.  ``SaveOptions(experimental_image_format=True)`` (chunked
    protos) is not supported."""
    tensorflow_plugin._require_eager("export_saved_model")  # pylint: disable=protected-access
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    save_options = save_options or tf_save_options.SaveOptions()
    if save_options.experimental_image_format:
        raise NotImplementedError("SaveOptions(experimental_image_format=True) writes chunked protos, which "
                                  "remoteckpt does not export")
    root = _root(base)
    workdir = tempfile.mkdtemp(prefix="remoteckpt-export-")
    graph = None
    try:
        pb, tensors, graph = _build(obj, signatures, save_options, workdir)

        async def go() -> int:
            store = open_store(root, storage_options, options)
            try:
                for attempt in range(_NUMBERING_ATTEMPTS):
                    found = await versions.scan_versions(store)
                    number = versions.next_version(found) if version is None else version
                    if number in found:
                        state = "complete" if found[number].complete else "partial (gc removes it)"
                        raise CheckpointExistsError(f"{_join(root, str(number))}: version {number} exists, "
                                                    f"{state}; versions are never written twice")
                    crash_point("export-numbered")
                    try:
                        await _export(store, root, number, pb, tensors, workdir, storage_options=storage_options,
                                      options=options)
                    except (CheckpointExistsError, CheckpointBusyError):
                        if version is not None or attempt + 1 == _NUMBERING_ATTEMPTS:
                            raise
                        continue  # another export took this number: take the next one
                    if keep is not None:
                        complete = versions.complete_versions(await versions.scan_versions(store))
                        for old in complete[:-keep]:
                            if old.number != number:
                                crash_point("retention")
                                await versions.retire(store, old)
                    return number
                raise AssertionError("unreachable")
            finally:
                await store.close()

        number = loop.run(go())
    finally:
        if graph is not None:
            ops.dismantle_graph(graph)
        shutil.rmtree(workdir, ignore_errors=True)
    return _join(root, str(number))


async def _fetch_graph(url: str, storage_options: dict[str, Any] | None, options: IOOptions,
                       workdir: str) -> str:
    """Resolve `url` (a SavedModel directory, or a base directory: its newest complete version)
    and copy its ``saved_model.pb``, ``fingerprint.pb`` and assets into `workdir`; return the
    SavedModel directory's URL."""
    store = open_store(url, storage_options, options)
    try:
        if not await versions.is_saved_model(store):
            complete = versions.complete_versions(await versions.scan_versions(store))
            if not complete:
                raise CheckpointNotFoundError(f"{url}: no {versions.SAVED_MODEL_PB} there, nor a complete "
                                              "numbered version under it")
            await store.close()
            url = _join(url, complete[-1].name)
            store = open_store(url, storage_options, options)
        keys = [versions.SAVED_MODEL_PB, versions.FINGERPRINT_PB]
        keys += [k for k in await store.list(f"{versions.ASSETS_DIR}/") if not k.endswith("/")]
        for key in keys:
            try:
                data = await store.get(key)
            except CheckpointNotFoundError:
                if key == versions.FINGERPRINT_PB:
                    continue  # optional (TF writes it since 2.12)
                raise
            path = os.path.join(workdir, *key.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        return url
    finally:
        await store.close()


def load_saved_model(url: str | os.PathLike[str], tags: Any = None, *, load_options: Any = None,
                     storage_options: dict[str, Any] | None = None, options: IOOptions = DEFAULT_OPTIONS) -> Any:
    """What ``tf.saved_model.load(export_dir, tags, load_options)`` returns, for the SavedModel
    at `url` (a SavedModel directory, or a base directory: its newest complete version), on
    local disk or any store.  The variables are read from the store by ranged reads, every
    byte CRC-checked; only the graph, the fingerprint and the assets go through a local
    temporary directory, removed when the returned object is garbage-collected.  A TF1
    SavedModel (no object graph) has its variables copied there too, verified, and is loaded
    by TensorFlow from there."""
    tensorflow_plugin._require_eager("load_saved_model")  # pylint: disable=protected-access
    load_options = load_options or tf.saved_model.LoadOptions()
    workdir = tempfile.mkdtemp(prefix="remoteckpt-load-")
    try:
        where = loop.run(_fetch_graph(_root(url), storage_options, options, workdir))
        with open(os.path.join(workdir, versions.SAVED_MODEL_PB), "rb") as f:
            proto = saved_model_pb2.SavedModel.FromString(f.read())
        variables = _join(where, versions.VARIABLES_PREFIX)
        if len(proto.meta_graphs) != 1 or not proto.meta_graphs[0].HasField("object_graph_def"):
            copy_checkpoint(variables, os.path.join(workdir, "variables", "variables"),
                            source_options=storage_options, options=options)
            root = tf.saved_model.load(workdir, tags, options=load_options)
        else:
            skip = tf.saved_model.LoadOptions(
                allow_partial_checkpoint=load_options.allow_partial_checkpoint,
                experimental_io_device=load_options.experimental_io_device,
                experimental_variable_policy=load_options.experimental_variable_policy,
                experimental_load_function_aliases=load_options.experimental_load_function_aliases,
                experimental_skip_checkpoint=True)
            root = tf.saved_model.load(workdir, tags, options=skip)
            if not load_options.experimental_skip_checkpoint:
                status = tensorflow_plugin.restore(root, variables, storage_options=storage_options,
                                                   options=options)
                if load_options.allow_partial_checkpoint:
                    status.expect_partial().assert_nontrivial_match()
                else:
                    status.assert_existing_objects_matched()
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    weakref.finalize(root, shutil.rmtree, workdir, True)
    return root
