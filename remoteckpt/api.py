"""The synchronous, one-call API: `save`, `load`, `list_variables`, `load_checkpoint`."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .engine import loop
from .reader import CheckpointReader
from .storage import open_store, split_prefix
from .writer import plan_bundle, write_bundle


def save(tensors: Mapping[str, Any], prefix: str | os.PathLike[str], *,
         storage_options: dict[str, Any] | None = None) -> str:
    """Save `tensors` (name -> array-like, a `Slice` for one box of a larger tensor, or a list
    of `Slice`s for several boxes of one tensor) as a TF
    checkpoint at `prefix`; return the prefix.  Data is written first, the `.index` last;
    TensorFlow's `tf.train.load_checkpoint(prefix)` reads the result."""
    text = os.fspath(prefix)
    directory, name = split_prefix(text)
    plan = plan_bundle(tensors)

    async def run() -> None:
        store = open_store(directory, storage_options)
        try:
            await write_bundle(store, name, plan)
        finally:
            await store.close()

    loop.run(run())
    return text


def load_checkpoint(prefix: str | os.PathLike[str], *,
                    storage_options: dict[str, Any] | None = None) -> CheckpointReader:
    """A `CheckpointReader` for `prefix` (as `tf.train.load_checkpoint`)."""
    return CheckpointReader(prefix, storage_options=storage_options)


def load(prefix: str | os.PathLike[str], names: Iterable[str] | None = None, *,
         storage_options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint (or just `names`) as numpy arrays, each verified."""
    with CheckpointReader(prefix, storage_options=storage_options) as reader:
        wanted = list(reader.get_variable_to_shape_map()) if names is None else list(names)
        return loop.run(reader.read_many(wanted))


def list_variables(prefix: str | os.PathLike[str], *,
                   storage_options: dict[str, Any] | None = None) -> list[tuple[str, list[int]]]:
    """(name, shape) of every tensor, sorted by name (as `tf.train.list_variables`)."""
    with CheckpointReader(prefix, storage_options=storage_options) as reader:
        return sorted(reader.get_variable_to_shape_map().items())
