"""PyTorch DCP's `Metadata` <-> JSON, without pickle.

`torch.distributed.checkpoint` needs its `Metadata` back at load time (what tensors and
byte blobs the checkpoint holds, each tensor's dtype, size and chunks, the planner's
flattening map).  `FileSystemWriter` pickles it; remoteckpt stores it as JSON in the
bundle's reserved ``_DCP_METADATA`` string tensor, readable by anything:

    {"format": "remoteckpt.torch-dcp", "format_version": 1, "version": "1.0.0",
     "state_dict_metadata": {
        "model.w": {"type": "tensor", "dtype": "bfloat16", "size": [8, 4],
                    "chunks": [{"offsets": [0, 0], "sizes": [2, 4]}, ...], ...},
        "step": {"type": "bytes"}},
     "planner_data": ..., "storage_data": ..., "storage_meta": {...}}

`planner_data` and `storage_data` are free-form in DCP; they are encoded with a small tagged
JSON (tuples, non-string dict keys, bytes, `torch.Size`, `torch.dtype` and DCP's own
metadata dataclasses).  Anything else is refused with a `TypeError`, never pickled, and
decoding only ever builds those types.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

from ..errors import CorruptCheckpointError

FORMAT = "remoteckpt.torch-dcp"
FORMAT_VERSION = 1

_TAGS = ("__tuple__", "__dict__", "__bytes__", "__size__", "__dtype__", "__dcp__")


# --- torch enums by name ------------------------------------------------------------------

def _torch_attr(name: str, kind: type, what: str) -> Any:
    value = getattr(torch, name, None) if name.isidentifier() else None
    if not isinstance(value, kind):
        raise ValueError(f"unknown torch {what} {name!r} in DCP metadata")
    return value


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    return _torch_attr(name, torch.dtype, "dtype")


def _enum_name(value: Any) -> str:
    return str(value).removeprefix("torch.")


# --- free-form values (planner_data, storage_data) ----------------------------------------

def _encode_any(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Size):
        return {"__size__": list(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode_any(v) for v in value]}
    if isinstance(value, list):
        return [_encode_any(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in value):
            return {k: _encode_any(v) for k, v in value.items()}
        return {"__dict__": [[_encode_any(k), _encode_any(v)] for k, v in value.items()]}
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, torch.dtype):
        return {"__dtype__": dtype_name(value)}
    if isinstance(value, MetadataIndex):
        return {"__dcp__": "MetadataIndex", "fqn": value.fqn,
                "offset": None if value.offset is None else list(value.offset), "index": value.index}
    if isinstance(value, ChunkStorageMetadata):
        return {"__dcp__": "ChunkStorageMetadata", **_encode_chunk(value)}
    if isinstance(value, TensorStorageMetadata):
        return {"__dcp__": "TensorStorageMetadata", **_encode_storage(value)}
    if isinstance(value, BytesStorageMetadata):
        return {"__dcp__": "BytesStorageMetadata"}
    if isinstance(value, StorageMeta):
        return {"__dcp__": "StorageMeta", **_encode_storage_meta(value)}
    raise TypeError(f"cannot store a {type(value).__qualname__} in DCP metadata as JSON "
                    "(remoteckpt never pickles metadata)")


def _decode_any(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode_any(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__dcp__" in value:
        kind = value["__dcp__"]
        if kind == "MetadataIndex":
            return MetadataIndex(value["fqn"], value.get("offset"), value.get("index"))
        if kind == "ChunkStorageMetadata":
            return _decode_chunk(value)
        if kind == "TensorStorageMetadata":
            return _decode_storage(value)
        if kind == "BytesStorageMetadata":
            return BytesStorageMetadata()
        if kind == "StorageMeta":
            return _decode_storage_meta(value)
        raise ValueError(f"unknown DCP metadata type {kind!r}")
    if len(value) == 1:
        (tag, body), = value.items()
        if tag == "__tuple__":
            return tuple(_decode_any(v) for v in body)
        if tag == "__dict__":
            return {_hashable(_decode_any(k)): _decode_any(v) for k, v in body}
        if tag == "__bytes__":
            return base64.b64decode(body)
        if tag == "__size__":
            return torch.Size(body)
        if tag == "__dtype__":
            return dtype_from_name(body)
    return {k: _decode_any(v) for k, v in value.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


# --- DCP's dataclasses ---------------------------------------------------------------------

def _encode_chunk(chunk: ChunkStorageMetadata) -> dict[str, Any]:
    return {"offsets": [int(o) for o in chunk.offsets], "sizes": [int(s) for s in chunk.sizes]}


def _decode_chunk(body: dict[str, Any]) -> ChunkStorageMetadata:
    return ChunkStorageMetadata(offsets=torch.Size(body["offsets"]), sizes=torch.Size(body["sizes"]))


def _encode_storage(md: TensorStorageMetadata) -> dict[str, Any]:
    p = md.properties
    return {"type": "tensor", "dtype": dtype_name(p.dtype), "size": [int(d) for d in md.size],
            "chunks": [_encode_chunk(c) for c in md.chunks],
            "layout": _enum_name(p.layout), "requires_grad": bool(p.requires_grad),
            "memory_format": _enum_name(p.memory_format), "pin_memory": bool(p.pin_memory)}


def _decode_storage(body: dict[str, Any]) -> TensorStorageMetadata:
    properties = TensorProperties(
        dtype=dtype_from_name(body["dtype"]),
        layout=_torch_attr(body.get("layout", "strided"), torch.layout, "layout"),
        requires_grad=bool(body.get("requires_grad", False)),
        memory_format=_torch_attr(body.get("memory_format", "contiguous_format"), torch.memory_format,
                                  "memory format"),
        pin_memory=bool(body.get("pin_memory", False)),
    )
    return TensorStorageMetadata(properties=properties, size=torch.Size(body["size"]),
                                 chunks=[_decode_chunk(c) for c in body["chunks"]])


def _encode_storage_meta(meta: StorageMeta) -> dict[str, Any]:
    cid = meta.checkpoint_id
    return {"checkpoint_id": None if cid is None else str(cid), "save_id": meta.save_id,
            "load_id": meta.load_id, "modules": list(meta.modules)}


def _decode_storage_meta(body: dict[str, Any]) -> StorageMeta:
    return StorageMeta(checkpoint_id=body.get("checkpoint_id"), save_id=body.get("save_id"),
                       load_id=body.get("load_id"), modules=list(body.get("modules") or []))


_KNOWN_FIELDS = {"state_dict_metadata", "planner_data", "storage_data", "storage_meta", "version"}


def encode_metadata(metadata: Metadata) -> bytes:
    """`metadata` as UTF-8 JSON (deterministic: sorted keys)."""
    items: dict[str, Any] = {}
    for fqn, md in metadata.state_dict_metadata.items():
        if isinstance(md, TensorStorageMetadata):
            items[fqn] = _encode_storage(md)
        elif isinstance(md, BytesStorageMetadata):
            items[fqn] = {"type": "bytes"}
        else:
            raise TypeError(f"{fqn!r}: unknown DCP storage metadata {type(md).__qualname__}")
    body: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": metadata.version,
        "state_dict_metadata": items,
        "planner_data": _encode_any(metadata.planner_data),
        "storage_data": _encode_any(metadata.storage_data),
        "storage_meta": None if metadata.storage_meta is None else _encode_storage_meta(metadata.storage_meta),
    }
    # Fields a later torch may add to Metadata: kept when their value is plain enough.
    extra = {f.name: _encode_any(getattr(metadata, f.name)) for f in dataclasses.fields(metadata)
             if f.name not in _KNOWN_FIELDS}
    if extra:
        body["extra"] = extra
    return json.dumps(body, sort_keys=True, ensure_ascii=False, allow_nan=False).encode("utf-8")


def decode_metadata(data: bytes | str) -> Metadata:
    """The `Metadata` that `encode_metadata` stored.  Raises `CorruptCheckpointError` (a
    `ValueError`) for anything else, however malformed: it is read from storage."""
    try:
        return _decode_metadata(data)
    except CorruptCheckpointError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RuntimeError, RecursionError,
            OverflowError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(f"invalid DCP metadata: {type(exc).__name__}: {str(exc)[:200]}") from None


def _decode_metadata(data: bytes | str) -> Metadata:
    body = json.loads(data)
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise ValueError("not remoteckpt's DCP metadata")
    if int(body.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"DCP metadata format version {body['format_version']} is newer than this "
                         f"remoteckpt understands ({FORMAT_VERSION})")
    items: dict[str, TensorStorageMetadata | BytesStorageMetadata] = {}
    for fqn, md in body["state_dict_metadata"].items():
        kind = md.get("type")
        if kind == "tensor":
            items[fqn] = _decode_storage(md)
        elif kind == "bytes":
            items[fqn] = BytesStorageMetadata()
        else:
            raise ValueError(f"{fqn!r}: unknown DCP storage metadata type {kind!r}")
    meta = body.get("storage_meta")
    metadata = Metadata(
        state_dict_metadata=items,
        planner_data=_decode_any(body.get("planner_data")),
        storage_data=_decode_any(body.get("storage_data")),
        storage_meta=None if meta is None else _decode_storage_meta(meta),
        version=body.get("version"),
    )
    names = {f.name for f in dataclasses.fields(metadata)}
    for name, value in (body.get("extra") or {}).items():
        if name in names:
            setattr(metadata, name, _decode_any(value))
    return metadata
