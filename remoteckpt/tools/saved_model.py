"""SavedModel directories and versioned base directories for the command line, without
TensorFlow: `find` (what a URL is), `describe` (inspect: tags, signatures, ops and concrete
functions as ``saved_model_cli show --all`` prints them, plus the variables),
`verify_saved_model`, `copy_saved_model` and `list_versions`.  The layout and commit order are
`remoteckpt.management.versions`'s.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from .._proto import saved_model_pb2, types_pb2
from ..engine import loop
from ..errors import CheckpointError, CheckpointExistsError, CheckpointNotFoundError, CorruptCheckpointError
from ..faults import crash_point, within
from ..management import versions
from ..options import DEFAULT_OPTIONS, IOOptions
from ..progress import ProgressCallback
from ..reader import CheckpointReader
from ..storage import Store, on_store, open_store
from .copy import copy_async
from .inventory import VerifyReport, describe_tensors, top_level, verify
from .saved_model_functions import concrete_functions, format_concrete_functions

MAX_GRAPH_BYTES = 2**31
"""A saved_model.pb larger than protobuf's 2 GiB message limit cannot be parsed (TensorFlow
writes chunked ``.cpb`` files past it)."""


def _root(url: str | os.PathLike[str]) -> str:
    text = os.fspath(url)
    return text.rstrip("/") if "://" in text else os.path.abspath(text)


def _join(base: str, key: str) -> str:
    return f"{base}/{key}" if "://" in base else os.path.join(base, key)


@dataclass(frozen=True)
class Found:
    """What `find` found at a URL: a SavedModel directory (`versions` empty) or a base
    directory (its complete version numbers, oldest first, and its partial ones)."""

    url: str
    versions: list[int] = field(default_factory=list)
    partial: list[int] = field(default_factory=list)

    @property
    def is_base(self) -> bool:
        return bool(self.versions or self.partial)

    def directories(self) -> list[str]:
        return [_join(self.url, str(n)) for n in self.versions] if self.is_base else [self.url]


def find(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None,
         options: IOOptions = DEFAULT_OPTIONS) -> Found | None:
    """A SavedModel directory (its ``saved_model.pb`` exists) or a base directory (numbered
    versions under it) at `url`; None for anything else (a checkpoint, say)."""
    root = _root(url)

    async def look(store: Store) -> Found | None:
        if await versions.is_saved_model(store):
            return Found(root)
        found = await _scan_numbered(store, root)
        if not found:
            return None
        return Found(root, [v.number for v in versions.complete_versions(found)],
                     [n for n, v in found.items() if not v.complete])

    return on_store(root, look, storage_options, options)


async def _scan_numbered(store: Store, root: str) -> dict[int, versions.VersionInfo]:
    """`versions.scan_versions`, listing only the numbered sub-directories (one delimited
    listing first): a bucket's root or a run directory full of checkpoints costs no more than
    a look at its top level."""
    top = await top_level(store, root)
    if top is None:
        return {}
    numbered = [d for d in top[1] if d.isdigit()]
    infos = [info for d in numbered for info in await store.list_info(f"{d}/")]
    return versions.group_versions(infos)


def _shape(proto: Any) -> list[int] | None:
    return None if proto.unknown_rank else [int(d.size) for d in proto.dim]


def _tensor_info(info: Any) -> dict[str, Any]:
    encoding = info.WhichOneof("encoding")
    row: dict[str, Any] = {"dtype": types_pb2.DataType.Name(info.dtype) if info.dtype else "DT_INVALID",
                           "shape": _shape(info.tensor_shape), "encoding": encoding}
    if encoding == "name":
        row["name"] = info.name
    elif encoding == "coo_sparse":
        row["name"] = info.coo_sparse.values_tensor_name
    elif encoding == "composite_tensor":
        row["components"] = [_tensor_info(c) for c in info.composite_tensor.components]
    return row


CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")
"""The ops that call the function their attribute ``f`` names."""


def ops_used(graph_def: Any) -> list[str]:
    """The ops a GraphDef uses, sorted: its nodes' and those of the library functions they
    call (by op name, or as the ``f`` of a PartitionedCall), transitively; the functions
    themselves are not ops.  TensorFlow's ``meta_graph.ops_used_by_graph_def``, which
    ``saved_model_cli`` prints."""
    functions = {function.signature.name: function for function in graph_def.library.function}
    used: set[str] = set()
    pending = []

    def mark(op: str) -> None:
        if op not in used and op in functions:
            pending.append(functions[op])
        used.add(op)

    def visit(node: Any) -> None:
        mark(node.op)
        if node.op in CALL_OPS:
            mark(node.attr["f"].func.name if "f" in node.attr else "")

    for node in graph_def.node:
        visit(node)
    while pending:
        for node in pending.pop().node_def:
            visit(node)
    return sorted(used - functions.keys())


def parse_graph(data: bytes, where: str) -> list[dict[str, Any]]:
    """The meta graphs of a ``saved_model.pb``: tags, TensorFlow version, signatures (method
    name; inputs and outputs: dtype, shape (None: unknown rank; -1: unknown size), tensor
    name), sorted by key, the assets the graph reads (names under ``assets/``), the ops its
    graph uses (`ops_used`) and the functions its object graph exports
    (`saved_model_functions.concrete_functions`; None without an object graph: TF1)."""
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(data)
    except DecodeError as exc:
        raise CorruptCheckpointError(f"{where}: not a SavedModel ({exc})") from None
    graphs = []
    for meta in proto.meta_graphs:
        signatures = {}
        for key in sorted(meta.signature_def):
            sig = meta.signature_def[key]
            signatures[key] = {"method_name": sig.method_name,
                               "inputs": {k: _tensor_info(sig.inputs[k]) for k in sorted(sig.inputs)},
                               "outputs": {k: _tensor_info(sig.outputs[k]) for k in sorted(sig.outputs)}}
        graphs.append({"tags": list(meta.meta_info_def.tags),
                       "tensorflow_version": meta.meta_info_def.tensorflow_version, "signatures": signatures,
                       "assets": sorted({a.filename for a in meta.asset_file_def}),
                       "ops": ops_used(meta.graph_def),
                       "concrete_functions": (concrete_functions(meta.object_graph_def)
                                              if meta.HasField("object_graph_def") else None)})
    if not graphs:
        raise CorruptCheckpointError(f"{where}: a SavedModel with no MetaGraphDef")
    return graphs


def describe(directory: str, storage_options: dict[str, Any] | None = None,
             options: IOOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    """Everything `inspect` shows of the SavedModel directory `directory`: its files (key,
    bytes), meta graphs (`parse_graph`) and variables (`describe_tensors`' rows)."""
    async def read(store: Store) -> tuple[bytes, list[tuple[str, int]]]:
        data = await store.get(versions.SAVED_MODEL_PB, max_size=MAX_GRAPH_BYTES)
        return data, [(i.key, i.size) for i in await store.list_info()]

    data, files = on_store(directory, read, storage_options, options)
    graphs = parse_graph(data, _join(directory, versions.SAVED_MODEL_PB))
    with CheckpointReader(_join(directory, versions.VARIABLES_PREFIX), storage_options=storage_options,
                          options=options) as reader:
        variables = describe_tensors(reader)
    return {"directory": directory, "files": [{"key": k, "bytes": n} for k, n in files], "meta_graphs": graphs,
            "variables": variables}


def format_shape(shape: list[int] | None) -> str:
    """A shape as ``saved_model_cli`` prints it: ``(-1, 4)``, ``(-1)``, ``()``, ``unknown_rank``."""
    if shape is None:
        return "unknown_rank"
    return "(" + ", ".join(map(str, shape)) + ")"


def format_ops(tags: list[str], ops: list[str]) -> str:
    """The line ``saved_model_cli`` prints of a meta graph's ops (a Python set, here sorted)."""
    listed = "{" + ", ".join(map(repr, ops)) + "}" if ops else "set()"
    return f"The MetaGraph with tag set {tags!r} contains the following ops: {listed}"


def format_graphs(graphs: list[dict[str, Any]]) -> list[str]:
    """`parse_graph`'s result as ``saved_model_cli show --all`` lays it out: per meta graph (by
    tags) its signatures and ops, then the concrete functions (if a meta graph has an object
    graph)."""
    lines = []
    graphs = sorted(graphs, key=lambda graph: graph["tags"])
    for graph in graphs:
        lines += ["", f"MetaGraphDef with tag-set: '{', '.join(graph['tags'])}' contains the following "
                      "SignatureDefs:"]
        for key, sig in graph["signatures"].items():
            lines += ["", f"signature_def['{key}']:"]
            for side, word in (("inputs", "input(s)"), ("outputs", "output(s)")):
                lines.append(f"  The given SavedModel SignatureDef contains the following {word}:")
                for name, info in sig[side].items():
                    lines += [f"    {side}['{name}'] tensor_info:", f"        dtype: {info['dtype']}",
                              f"        shape: {format_shape(info['shape'])}",
                              # a sparse or composite tensor has no name of its own
                              f"        name: {info['name'] if info['encoding'] == 'name' else ''}"]
            lines.append(f"  Method name is: {sig['method_name']}")
        lines.append(format_ops(graph["tags"], graph["ops"]))
    exported = [graph["concrete_functions"] for graph in graphs if graph["concrete_functions"] is not None]
    if exported:
        lines += ["", *format_concrete_functions([f for functions in exported for f in functions])]
    return lines


def verify_saved_model(directory: str, storage_options: dict[str, Any] | None = None,
                       options: IOOptions = DEFAULT_OPTIONS, progress: ProgressCallback | None = None) -> VerifyReport:
    """Check one SavedModel directory: ``saved_model.pb`` parses and has a meta graph, every
    asset it names is in ``assets/``, and every tensor of its variables reads back with its
    checksum (`inventory.verify`).  Problems are collected, not raised."""
    prefix = _join(directory, versions.VARIABLES_PREFIX)
    problems = []

    async def read(store: Store) -> tuple[bytes, set[str]]:
        data = await store.get(versions.SAVED_MODEL_PB, max_size=MAX_GRAPH_BYTES)
        return data, set(await store.list(f"{versions.ASSETS_DIR}/"))

    try:
        data, assets = on_store(directory, read, storage_options, options)
        for graph in parse_graph(data, _join(directory, versions.SAVED_MODEL_PB)):
            problems += [f"{_join(directory, versions.ASSETS_DIR)}/{name}: missing (saved_model.pb names this "
                         "asset)" for name in graph["assets"] if f"{versions.ASSETS_DIR}/{name}" not in assets]
    except CheckpointError as exc:
        problems.append(str(exc))
    try:
        report = verify(prefix, storage_options=storage_options, options=options, progress=progress)
    except CheckpointNotFoundError as exc:
        report = VerifyReport(prefix, problems=[f"the variables: {exc}"])
    report.prefix = directory
    report.problems[:0] = problems
    return report


@dataclass(frozen=True)
class SavedModelCopyReport:
    source: str
    destination: str
    versions: list[int]
    files: int
    bytes: int
    tensors_verified: int


def _destination(source: str, destination: str) -> str:
    """As ``aws s3 cp``: a destination ending in ``/`` means into it, keeping the name."""
    if destination.endswith(("/", os.sep)):
        name = posixpath.basename(source.rstrip("/")) if "://" in source else os.path.basename(source)
        return _join(_root(destination), name)
    return _root(destination)


async def _copy_one(source: str, destination: str, *, overwrite: bool, source_options: dict[str, Any] | None,
                    destination_options: dict[str, Any] | None, options: IOOptions,
                    progress: ProgressCallback | None) -> tuple[int, int, int]:
    """One SavedModel directory in the commit order: the variables (a verified checkpoint
    copy), the other files, ``saved_model.pb`` last and create-only.  (files, bytes, tensors).
    What an interrupted copy left at the destination (no ``saved_model.pb``: nothing there is
    complete) is replaced, so the copy can simply be run again."""
    src = open_store(source, source_options, options)
    dst = open_store(destination, destination_options, options)
    try:
        if await dst.exists(versions.SAVED_MODEL_PB):
            if not overwrite:
                raise CheckpointExistsError(f"{dst.describe(versions.SAVED_MODEL_PB)} exists: a complete "
                                            "SavedModel is never replaced without --overwrite")
            await dst.delete(versions.SAVED_MODEL_PB)  # from now on it is partial, never half-replaced
        graph = await src.get(versions.SAVED_MODEL_PB, max_size=MAX_GRAPH_BYTES)
        parse_graph(graph, src.describe(versions.SAVED_MODEL_PB))
        variables = await copy_async(_join(source, versions.VARIABLES_PREFIX),
                                     _join(destination, versions.VARIABLES_PREFIX), overwrite=True,
                                     source_options=source_options, destination_options=destination_options,
                                     options=options, progress=progress)
        others = [i for i in await src.list_info() if i.key != versions.SAVED_MODEL_PB
                  and not i.key.startswith("variables/") and not i.key.endswith("/")]
        crash_point("export-variables")
        others.sort(key=lambda i: i.key == versions.FINGERPRINT_PB)  # the assets, then the fingerprint
        for info in others:
            await dst.put(info.key, await src.get(info.key))
        crash_point("export-fingerprint")
        with within("export-committing"):
            await dst.put(versions.SAVED_MODEL_PB, graph, exclusive=True)
        return (variables.files + len(others) + 1, variables.bytes + sum(i.size for i in others) + len(graph),
                variables.tensors_verified)
    finally:
        await src.close()
        await dst.close()


def copy_saved_model(found: Found, destination: str, *, overwrite: bool = False,
                     source_options: dict[str, Any] | None = None, destination_options: dict[str, Any] | None = None,
                     options: IOOptions = DEFAULT_OPTIONS, progress: ProgressCallback | None = None
                     ) -> SavedModelCopyReport:
    """Copy a SavedModel directory, or every complete version of a base directory (to the
    same numbers under the destination base), in the commit order of each.  A destination
    version already complete is refused before anything is copied, unless `overwrite`."""
    target = _destination(found.url, destination)
    pairs = [(_join(found.url, str(n)), _join(target, str(n))) for n in found.versions] if found.is_base \
        else [(found.url, target)]
    if not overwrite:
        for _, dst in pairs:
            if on_store(dst, versions.is_saved_model, destination_options, options):
                raise CheckpointExistsError(f"{_join(dst, versions.SAVED_MODEL_PB)} exists: a complete SavedModel "
                                            "is never replaced without --overwrite")
    files = size = tensors = 0
    for src, dst in pairs:
        f, b, t = loop.run(_copy_one(src, dst, overwrite=overwrite, source_options=source_options,
                                     destination_options=destination_options, options=options, progress=progress))
        files, size, tensors = files + f, size + b, tensors + t
    return SavedModelCopyReport(found.url, target, found.versions, files, size, tensors)


def list_versions(directory: str, storage_options: dict[str, Any] | None = None,
                  options: IOOptions = DEFAULT_OPTIONS) -> list[versions.VersionInfo]:
    """Every version of the base directory, complete or partial, lowest number first."""
    root = _root(directory)
    return list(on_store(root, lambda store: _scan_numbered(store, root), storage_options, options).values())
