"""A save straight to its prefix: the prefix resolved, the store opened, the incremental base
found, the save protocol run (`protocol.save`).  `api.save` with no local tier; a save with
a local tier (`tiers.save`) runs it on the tier's directory first."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .engine.incremental import Incremental
from .locate import for_writing
from .management.state import previous_checkpoint
from .options import DEFAULT_OPTIONS, IOOptions
from .progress import ProgressCallback, Reporter
from .protocol.commit import DEFAULT_COMMIT, CommitProtocol
from .protocol.layout import SaveLayout
from .protocol.save import SaveReport, save_worker
from .storage import open_store, split_prefix


async def save_checkpoint(tensors: Mapping[str, Any], prefix: str, *, rank: int = 0, world_size: int = 1,
                          overwrite: bool = False, save_id: str | None = None,
                          storage_options: dict[str, Any] | None = None, options: IOOptions = DEFAULT_OPTIONS,
                          commit: CommitProtocol = DEFAULT_COMMIT,
                          progress: ProgressCallback | None = None,
                          incremental: bool | str = False, unchanged_last: bool = False) -> SaveReport:
    """Coroutine form of `save`, returning the worker's `SaveReport` (bytes, timings).
    `incremental` may also name the base: a checkpoint of the prefix's directory, by its name
    there (``model.ckpt-1000``).  `unchanged_last`: see `engine.incremental.Incremental` (a
    local tier's saves)."""
    prefix = for_writing(prefix)
    directory, name = split_prefix(prefix)
    layout = SaveLayout(name, rank, world_size, SaveLayout.default_save_id() if save_id is None else save_id)
    store = open_store(directory, storage_options, options)
    try:
        since = None
        if incremental:
            base = incremental if isinstance(incremental, str) else await previous_checkpoint(store, directory, name)
            since = Incremental(base=base, unchanged_last=unchanged_last)
        return await save_worker(store, layout, tensors, overwrite=overwrite, options=options, commit=commit,
                                 prefix=prefix, progress=Reporter(progress, prefix, rank, world_size),
                                 incremental=since)
    finally:
        await store.close()
