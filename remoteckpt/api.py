"""The synchronous API: `save`, `save_async`, `load`, `list_variables`, `load_checkpoint`.

Every call runs its coroutine on remoteckpt's I/O loop (`engine.loop`) and waits; `save_async`
returns as soon as the tensors are snapshotted.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import Any

import numpy as np

from .direct import save_checkpoint
from .engine import loop
from .engine.plan import Slice
from .locate import for_writing
from .options import DEFAULT_OPTIONS, IOOptions
from .progress import ProgressCallback
from .protocol.commit import DEFAULT_COMMIT, CommitProtocol
from .protocol.layout import SAVE_ID_ENV, SaveLayout
from .protocol.save import SaveReport, UnnamedSaveWarning
from .reader import CheckpointReader
from .tiers import drain
from .tiers.layout import TierLike, as_tier
from .tiers.save import save_tiered

_in_flight_lock = threading.Lock()
_in_flight: Future[str] | None = None

log = logging.getLogger("remoteckpt")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _caller_stacklevel() -> int:
    """The `warnings.warn` stacklevel, for the function calling this one, that points at the
    first frame outside remoteckpt: the user's line, whichever of remoteckpt's entry points
    (a plugin, a Saver, a CheckpointManager) it went through."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def warn_if_unnamed(rank: int, world_size: int, save_id: str | None) -> None:
    """`UnnamedSaveWarning` for a multi-worker save without a save id (on rank 0), raised in
    the caller's thread and pointing at the caller's line.  Every public save entry point calls
    it once, before handing the save to remoteckpt's I/O thread."""
    if world_size > 1 and rank == 0 and not (SaveLayout.default_save_id() if save_id is None else save_id):
        warnings.warn(
            f"a save of {world_size} workers without a save id: another job racing for the same prefix "
            f"could not be told apart from this one (pass save_id=, set ${SAVE_ID_ENV}, or launch with torchrun "
            "or Slurm, whose run ids are used)", UnnamedSaveWarning, stacklevel=_caller_stacklevel())


def save(tensors: Mapping[str, Any], prefix: str | os.PathLike[str], *, rank: int = 0, world_size: int = 1,
         overwrite: bool = False, save_id: str | None = None, storage_options: dict[str, Any] | None = None,
         options: IOOptions = DEFAULT_OPTIONS, commit: CommitProtocol = DEFAULT_COMMIT,
         progress: ProgressCallback | None = None, incremental: bool = False,
         local_tier: TierLike | None = None) -> str:
    """Save `tensors` as a TensorFlow checkpoint at `prefix`; return the prefix once committed.

    `tensors` maps names to array-likes, to a `Slice` (one box of a larger tensor), or to a
    list of `Slice`s.  With `world_size` > 1, every worker calls `save` with its own `rank`
    and its own tensors (boxes of one tensor may come from different workers): each writes its
    data file in parallel, rank 0 merges the tables and commits one `.index`, and every call
    returns only after that commit (or raises if it failed).  A committed checkpoint at
    `prefix` is never replaced unless `overwrite` is true.  A `prefix` ending in ``/`` (or an
    existing local directory) is a directory: the checkpoint is ``DIR/ckpt`` inside it
    (`remoteckpt.locate`); the prefix written is returned.  `save_id` names the job to all
    of its workers (default ``$REMOTECKPT_SAVE_ID``, else torchrun's or Slurm's run id and
    restart count); a retry of the same job after a failure may keep it: every attempt is its
    own (docs/protocol.md).  Jobs that may race for one prefix need different ones.
    `progress` receives `ProgressEvent`s (staged / written / committed bytes of this worker).
    With `incremental`, tensors unchanged since the latest checkpoint of the prefix's directory
    (the one its ``checkpoint`` state file names, as `Saver` and `CheckpointManager` keep it;
    without one, the one whose index was committed last) are copied from that checkpoint by
    the store instead of being sent (S3: UploadPartCopy; local disk: copy_file_range), judged
    by dtype, shape, CRC32C and a 128-bit BLAKE3 digest that such saves keep in the index;
    the checkpoint written is complete and independent
    (`remoteckpt.engine.incremental`).
    With `local_tier` (a directory on local disk, or a `LocalTier`), the checkpoint is
    committed there and this call returns; a background drain commits it at `prefix`
    (`durability(prefix)`, `wait_durable(prefix)`; docs/tiered.md).
    """
    text = for_writing(prefix)
    warn_if_unnamed(rank, world_size, save_id)
    wait_for_saves()
    start = time.monotonic()
    report = loop.run(_save(tensors, text, rank=rank, world_size=world_size, overwrite=overwrite,
                            save_id=save_id, storage_options=storage_options, options=options,
                            commit=commit, progress=progress, incremental=incremental, local_tier=local_tier))
    log.info("saved %s (worker %d of %d): %d bytes in %.3f s", text, rank, world_size, report.bytes_written,
             time.monotonic() - start)
    return text


async def _save(tensors: Mapping[str, Any], prefix: str, *, local_tier: TierLike | None,
                durable: Future[str] | None = None, **kwargs: Any) -> SaveReport:
    """`save_checkpoint`, or with a local tier `tiers.save.save_tiered`."""
    tier = as_tier(local_tier)
    if tier is None:
        return await save_checkpoint(tensors, prefix, **kwargs)
    report, _ = await save_tiered(tensors, prefix, tier, durable=durable, **kwargs)
    return report


def snapshot(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """A private copy of every array (and of the arrays inside `Slice`s)."""
    def copy(value: Any) -> Any:
        if isinstance(value, Slice):
            return Slice(np.array(value.array, copy=True, order="C"), value.full_shape, value.offset)
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, Slice) for v in value):
            return [copy(v) for v in value]
        return np.array(value, copy=True, order="C")

    return {name: copy(value) for name, value in tensors.items()}


def save_async(tensors: Mapping[str, Any], prefix: str | os.PathLike[str], *, rank: int = 0, world_size: int = 1,
               overwrite: bool = False, save_id: str | None = None, storage_options: dict[str, Any] | None = None,
               options: IOOptions = DEFAULT_OPTIONS, commit: CommitProtocol = DEFAULT_COMMIT,
               progress: ProgressCallback | None = None, copy: bool = True,
               incremental: bool = False, local_tier: TierLike | None = None) -> "Future[str]":
    """`save` in the background.  Returns a `concurrent.futures.Future` of the prefix as soon
    as the tensors are copied, so the caller may change its arrays right away.  At most one
    save is in flight per process: this call first waits for the previous one to finish
    (its error, if any, stays in its own future).  Errors come out of the future.
    With ``copy=False`` the arrays are used as they are: for callers that already hold an
    immutable snapshot (framework plugins), who must not change them until the future is done.
    With `local_tier` the future resolves at the local commit; `durability(prefix)` is the
    future of the remote one (registered before this call returns)."""
    global _in_flight
    text = for_writing(prefix)
    warn_if_unnamed(rank, world_size, save_id)
    with _in_flight_lock:
        wait_for_saves()
        private = snapshot(tensors) if copy else dict(tensors)
        durable = None
        if local_tier is not None:
            durable = drain.promise(text)
        inner = loop.submit(_save(private, text, rank=rank, world_size=world_size, overwrite=overwrite,
                                  save_id=save_id, storage_options=storage_options, options=options,
                                  commit=commit, progress=progress, incremental=incremental, local_tier=local_tier,
                                  durable=durable))
        outer: Future[str] = Future()

        def done(f: "Future[SaveReport]") -> None:
            if f.cancelled():
                outer.cancel()
            elif f.exception() is not None:
                outer.set_exception(f.exception())
            else:
                outer.set_result(text)

        inner.add_done_callback(done)
        _in_flight = outer
        return outer


def wait_for_saves() -> None:
    """Block until this process's background save (if any) has finished, successfully or not
    (its error stays in its own future)."""
    previous = _in_flight
    if previous is not None:
        try:
            previous.result()
        except BaseException:
            pass  # reported through its own future


def load_checkpoint(prefix: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None,
                    options: IOOptions = DEFAULT_OPTIONS, local_tier: TierLike | None = None) -> CheckpointReader:
    """A `CheckpointReader` for `prefix` (as `tf.train.load_checkpoint`)."""
    return CheckpointReader(prefix, storage_options=storage_options, options=options, local_tier=local_tier)


def load(prefix: str | os.PathLike[str], names: Iterable[str] | None = None, *,
         out: Mapping[str, np.ndarray] | None = None, storage_options: dict[str, Any] | None = None,
         options: IOOptions = DEFAULT_OPTIONS, progress: ProgressCallback | None = None,
         process_group: Any = None, local_tier: TierLike | None = None) -> dict[str, np.ndarray]:
    """Tensors of the checkpoint as numpy arrays, each verified: all of them, or `names`,
    plus every name in `out` (caller-owned arrays, filled in place and returned; their shapes
    and dtypes must match the checkpoint).  Reads run concurrently, only the needed ranges.
    With `process_group` (a `torch.distributed` group, ``torch.distributed.group.WORLD``
    for the default one), every rank of the group calls `load` at once: the index is fetched
    by one rank (`CheckpointReader.opened_once`) and each unique byte range by one rank only,
    then sent to the others that need it (`CheckpointReader.read_boxes_shared`); `progress`
    is not reported then.
    With `local_tier`, remote `prefix` is read from its nearest tier (docs/tiered.md)."""
    start = time.monotonic()
    if process_group is None or local_tier is not None:
        opened = CheckpointReader(prefix, storage_options=storage_options, options=options, local_tier=local_tier)
    else:  # the group's rank 0 fetches the index for all
        opened = CheckpointReader.opened_once(prefix, process_group, storage_options=storage_options, options=options)
    with opened as reader:
        wanted = list(reader.get_variable_to_shape_map()) if names is None and out is None else list(names or [])
        wanted += [n for n in (out or {}) if n not in wanted]
        if process_group is None or local_tier is not None:  # a tier is per host: each rank reads its own
            tensors = loop.run(reader.read_many(wanted, out=out, progress=progress))
        else:
            arrays = reader.read_boxes_shared([(n, None) for n in wanted], [(out or {}).get(n) for n in wanted],
                                              process_group)
            tensors = dict(zip(wanted, arrays))
        log.info("loaded %d tensor(s), %d bytes from %s in %.3f s", len(tensors),
                 sum(getattr(a, "nbytes", 0) for a in tensors.values()), reader.prefix, time.monotonic() - start)
        return tensors


def list_variables(prefix: str | os.PathLike[str], *,
                   storage_options: dict[str, Any] | None = None) -> list[tuple[str, list[int]]]:
    """(name, shape) of every tensor, sorted by name (as `tf.train.list_variables`)."""
    with CheckpointReader(prefix, storage_options=storage_options) as reader:
        return sorted(reader.get_variable_to_shape_map().items())
