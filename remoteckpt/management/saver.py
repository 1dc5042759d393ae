"""`Saver`: `tf.compat.v1.train.Saver`'s naming, state file and retention, for any framework.

Per save, in this order (TF's, with the commit first):
  1. save the tensors (multi-worker through the engine): the checkpoint is committed
  2. record it: drop an equal path from the list, append (path, time.time()); past
     `max_to_keep`, the oldest moves to the deletion queue
  3. the coordinator writes the `checkpoint` state file (relative paths, with timestamps)
  4. the coordinator takes ONE queued checkpoint: if it is newer than the next
     keep-every-N-hours mark it is preserved (and the mark advances N hours), else deleted:
     its `.index` first (so it stops existing at once), then its data files and `.meta`;
     one that a `CheckpointReader` of this process has open stays queued for the next save
A Saver on a directory that already has a state file adopts the checkpoints it lists (with
their timestamps) and keeps applying retention to them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from typing import Any

import numpy as np

from .. import api
from ..engine import loop
from ..errors import CheckpointError, CheckpointNotFoundError, ShapeMismatchError, TensorNotFoundError
from ..faults import crash_point
from ..format.bundle import index_filename
from ..locate import is_directory_id
from ..options import DEFAULT_OPTIONS, IOOptions
from ..reader import CheckpointReader, being_read
from ..storage import Store, on_store, open_store, split_prefix
from ..tiers.drain import durability
from ..tiers.layout import TierLike, as_tier
from ..tiers.resume import resume
from ..tiers.save import save_tiered
from .delete import delete_checkpoint
from .directory import latest_checkpoint
from .state import STATE_FILENAME, format_state, join, read_state, write_state

log = logging.getLogger("remoteckpt")

class Saver:
    """Saves and restores checkpoints the way `tf.compat.v1.train.Saver` does.

    Every worker of a multi-worker job creates a Saver with its `rank` and `world_size` and
    calls `save` with its own tensors; rank 0 also writes the state file and deletes old
    checkpoints, after the commit.  Not thread-safe: one Saver per training loop.

    `save_id` names the job to the other workers' saves (every worker of one job passes the
    same; see `remoteckpt.save`); None takes ``$REMOTECKPT_SAVE_ID``, else torchrun's or
    Slurm's run id, as `remoteckpt.save` does.  With `incremental`, every save copies the
    tensors unchanged since this Saver's latest checkpoint from it inside the store (see
    `remoteckpt.save`); retention deletes old checkpoints as ever, each being complete.
    With `local_tier`, each save is committed on that local directory and drained to the
    remote one in the background (docs/tiered.md); with `incremental` too, the local save
    copies from the tier's latest checkpoint and the drain has the remote store copy what is
    unchanged since the remote directory's latest.
    """

    def __init__(self, max_to_keep: int | None = 5, keep_checkpoint_every_n_hours: float = 10000.0, *,
                 rank: int = 0, world_size: int = 1, storage_options: dict[str, Any] | None = None,
                 options: IOOptions = DEFAULT_OPTIONS, latest_filename: str = STATE_FILENAME,
                 save_id: str | None = None, incremental: bool = False,
                 local_tier: TierLike | None = None) -> None:
        self.max_to_keep = max_to_keep
        self.keep_checkpoint_every_n_hours = keep_checkpoint_every_n_hours
        self.rank, self.world_size = rank, world_size
        self.save_id = save_id
        self.storage_options = storage_options
        self.options = options
        self.latest_filename = latest_filename
        self.incremental = incremental
        self._next_checkpoint_time = time.time() + keep_checkpoint_every_n_hours * 3600
        self._last: list[tuple[str, float]] = []  # (prefix, timestamp), oldest first
        self._to_delete: list[tuple[str, float]] = []
        self._directory: str | None = None
        self._adopted = False
        self._lock = threading.Lock()
        self._in_flight: Future[str] | None = None
        self.local_tier = as_tier(local_tier)
        self._durable: set[str] = set()  # prefixes committed remotely (with a local tier)
        self._drains: dict[str, Future[str]] = {}  # durability futures of this Saver's saves

    # --- what it knows ----------------------------------------------------------------

    @property
    def last_checkpoints(self) -> list[str]:
        """Prefixes of the checkpoints not yet deleted, oldest first (as TF's)."""
        return [p for p, _ in self._last]

    @property
    def latest_checkpoint(self) -> str | None:
        if self._last:
            return self._last[-1][0]
        if self._directory is not None:
            return latest_checkpoint(self._directory, storage_options=self.storage_options,
                                     latest_filename=self.latest_filename, local_tier=self.local_tier)
        return None

    @property
    def durable_checkpoints(self) -> list[str]:
        """With a local tier: prefixes of `last_checkpoints` committed remotely (the others
        are only local so far).  Without one, every checkpoint is."""
        if self.local_tier is None:
            return self.last_checkpoints
        return [p for p, _ in self._last if p in self._durable]

    def durability(self, prefix: str) -> "Future[str]":
        """The future of `prefix`'s drain (a save of this Saver with a local tier)."""
        return self._drains[prefix] if prefix in self._drains else durability(prefix)

    def wait_durable(self, timeout: float | None = None) -> list[str]:
        """Block until every drain this Saver started is done; `durable_checkpoints`.  The
        first drain error is raised (after all have finished), once: the drains waited for
        are forgotten."""
        error: BaseException | None = None
        for prefix, future in list(self._drains.items()):
            try:
                future.result(timeout)
            except BaseException as exc:  # the first one, once all are done
                error = error or exc
            if future.done():
                del self._drains[prefix]
        if error is not None:
            raise error
        return self.durable_checkpoints

    def adopt(self, directory: str | os.PathLike[str]) -> list[str]:
        """Read `directory`'s state file now (a save does it anyway): the checkpoints it lists
        that exist join this Saver's list.  Returns `last_checkpoints`."""
        text = os.fspath(directory)
        root = text.rstrip("/") if "://" in text else os.path.abspath(text)
        if not self._adopted or self._directory != root:
            on_store(root, lambda store: self._adopt(store, root), self.storage_options, self.options)
        return self.last_checkpoints

    # --- saving -----------------------------------------------------------------------

    def prefix_for(self, save_path: str | os.PathLike[str], global_step: int | None = None) -> str:
        text = os.fspath(save_path)
        return text if global_step is None else f"{text}-{int(global_step)}"

    def save(self, tensors: Mapping[str, Any], save_path: str | os.PathLike[str], global_step: int | None = None,
             *, overwrite: bool = False) -> str:
        """Save `tensors` at ``save_path`` or ``save_path-{global_step}``; returns that prefix
        once the checkpoint is committed, recorded and old ones are swept."""
        api.warn_if_unnamed(self.rank, self.world_size, self.save_id)
        self._wait_in_flight()
        prefix = self.prefix_for(save_path, global_step)
        return loop.run(self._save(tensors, prefix, overwrite))

    def save_async(self, tensors: Mapping[str, Any], save_path: str | os.PathLike[str],
                   global_step: int | None = None, *, overwrite: bool = False) -> "Future[str]":
        """`save` in the background: returns once the tensors are copied.  One save in flight
        per Saver (this call first waits for the previous one)."""
        api.warn_if_unnamed(self.rank, self.world_size, self.save_id)
        with self._lock:
            self._wait_in_flight()
            prefix = self.prefix_for(save_path, global_step)
            future = loop.submit(self._save(api.snapshot(tensors), prefix, overwrite))
            self._in_flight = future
            return future

    def _wait_in_flight(self) -> None:
        previous = self._in_flight
        if previous is not None:
            try:
                previous.result()
            except BaseException:
                pass  # reported through its own future

    async def _save(self, tensors: Mapping[str, Any], prefix: str, overwrite: bool) -> str:
        directory, name = split_prefix(prefix)
        store = open_store(directory, self.storage_options, self.options)
        try:
            if not self._adopted or self._directory != directory:
                try:
                    await self._adopt(store, directory)
                except CheckpointError as exc:
                    if self.local_tier is None:
                        raise
                    self._adopted = False  # the remote tier out of reach: saved locally, adopted later
                    log.warning("could not read %s (%s); saving on the local tier", directory, exc)

            # As TF's Saver: a checkpoint this Saver has not recorded at the target prefix (left
            # by a run that crashed before updating the state file) is replaced, not an error.
            recorded = join(directory, name) in {p for p, _ in self._last}
            if self.local_tier is not None:
                await self._save_tiered(tensors, prefix, overwrite or not recorded, directory)
                return prefix
            await api.save_checkpoint(tensors, prefix, rank=self.rank, world_size=self.world_size,
                                      overwrite=overwrite or not recorded, save_id=self.save_id,
                                      storage_options=self.storage_options, options=self.options,
                                      incremental=self._base(directory, name) if self.incremental else False)
            self._record(join(directory, name))
            if self.rank == 0:
                crash_point("state-writing")
                await self._write_state(store, directory)
                await self._sweep_one(store)
        finally:
            await store.close()
        return prefix

    def _base(self, directory: str, name: str) -> str | bool:
        """What an incremental save of `name` copies from: this Saver's latest checkpoint in
        `directory` (its name there), else whatever the state file names (True)."""
        for prefix, _ in reversed(self._last):
            where, base = split_prefix(prefix)
            if where == directory and base != name:
                return base
        return True

    async def _save_tiered(self, tensors: Mapping[str, Any], prefix: str, overwrite: bool, directory: str) -> None:
        """The local commit, then the drain; rank 0 writes the remote state file and sweeps
        the remote tier once the checkpoint is durable (in drain order: `tiers.drain`)."""
        assert self.local_tier is not None
        full = join(directory, split_prefix(prefix)[1])
        _, future = await save_tiered(tensors, prefix, self.local_tier, rank=self.rank, world_size=self.world_size,
                                      overwrite=overwrite, save_id=self.save_id,
                                      storage_options=self.storage_options, options=self.options,
                                      after=self._after_drain(full, directory) if self.rank == 0 else None,
                                      incremental=self.incremental)
        self._record(full)
        self._drains[full] = future
        future.add_done_callback(lambda f: None if f.cancelled() or f.exception() else self._durable.add(full))
        log.info("saved %s on the local tier %s; draining it", full, self.local_tier.path)

    async def _resume(self, directory: str) -> None:
        """Drain (or drop, by the tier's policy) what a previous run left only local."""
        assert self.local_tier is not None
        started = await resume(self.local_tier, storage_options=self.storage_options, options=self.options,
                               remote_directory=directory, after_for=lambda p: self._after_drain(p, directory),
                               rank=self.rank, save_id=self.save_id)
        known = {p for p, _ in self._last}
        for c, future in started:
            self._drains[c.remote] = future
            if c.remote not in known:
                self._last.append((c.remote, c.time))
        self._last.sort(key=lambda item: item[1])

    def _after_drain(self, prefix: str, directory: str) -> Callable[[], Awaitable[None]]:
        async def after() -> None:
            self._durable.add(prefix)
            store = open_store(directory, self.storage_options, self.options)
            try:
                crash_point("state-writing")
                await self._write_state(store, directory)
                await self._sweep_one(store)
            finally:
                await store.close()
        return after

    async def _adopt(self, store: Store, directory: str) -> None:
        self._directory, self._adopted = directory, True
        await self._adopt_state(store, directory)
        if self.local_tier is not None and (self.rank == 0 or self.local_tier.per_host):
            await self._resume(directory)  # on a per-host tier every worker drains its own part

    async def _adopt_state(self, store: Store, directory: str) -> None:
        state = await read_state(store, directory, self.latest_filename)
        if state is None:
            return
        stamps = state.all_model_checkpoint_timestamps or tuple(
            state.last_preserved_timestamp for _ in state.all_model_checkpoint_paths)
        exists = await asyncio.gather(*(store.exists(index_filename(n)) for n in state.all_model_checkpoint_paths))
        adopted = [(state.prefix(n), t) for n, t, ok in zip(state.all_model_checkpoint_paths, stamps, exists) if ok]
        known = {p for p, _ in self._last}
        self._last = [item for item in adopted if item[0] not in known] + self._last
        self._durable.update(p for p, _ in adopted)
        log.info("adopted %d checkpoint(s) from %s", len(adopted), store.describe(self.latest_filename))

    def _record(self, prefix: str) -> None:
        if not self.max_to_keep:
            self._last = [(prefix, time.time())]  # TF then lists only the latest
            return
        self._last = [(p, t) for p, t in self._last if p != prefix]
        self._last.append((prefix, time.time()))
        while len(self._last) > self.max_to_keep:
            self._to_delete.append(self._last.pop(0))

    async def _write_state(self, store: Store, directory: str) -> None:
        listed = [(p, t) for p, t in self._last if self.local_tier is None or p in self._durable]
        if not listed:
            return
        names = [split_prefix(p)[1] for p, _ in listed]
        stamps = [t for _, t in listed]
        data = format_state(names[-1], names, stamps,
                            self._next_checkpoint_time - self.keep_checkpoint_every_n_hours * 3600)
        await write_state(store, data, self.latest_filename)

    async def _sweep_one(self, store: Store) -> None:
        if not self._to_delete:
            return
        prefix, stamp = self._to_delete.pop(0)
        if stamp > self._next_checkpoint_time:
            self._next_checkpoint_time += self.keep_checkpoint_every_n_hours * 3600
            return
        directory, name = split_prefix(prefix)
        if being_read(directory, name) or (self._last and self._last[-1][0] == prefix):
            self._to_delete.insert(0, (prefix, stamp))  # read here right now, or the newest: later
            log.info("not deleting %s yet: it is being read in this process", prefix)
            return
        crash_point("retention")
        target = store if directory == self._directory else open_store(directory, self.storage_options)
        try:
            await delete_checkpoint(target, name)
        except Exception as exc:  # as TF: a failed deletion is logged, not fatal
            log.warning("could not delete old checkpoint %s: %s", prefix, exc)
        finally:
            if target is not store:
                await target.close()

    # --- restoring --------------------------------------------------------------------

    def restore(self, prefix: str | os.PathLike[str] | None = None, *,
                names: Mapping[str, str] | list[str] | None = None, out: Mapping[str, np.ndarray] | None = None,
                allow_partial: bool = False) -> dict[str, np.ndarray]:
        """Restore a checkpoint (the latest when `prefix` is None; a directory means its
        latest).  `names` selects tensors, or maps saved names to target names (how TF restores
        EMA shadow variables into live ones); results are keyed by target name.  `out` maps
        target names to arrays to fill in place (shapes and dtypes are checked).  A name
        missing from the checkpoint raises unless `allow_partial`."""
        target = os.fspath(prefix) if prefix is not None else self.latest_checkpoint
        if target is None:
            raise CheckpointNotFoundError("no checkpoint to restore: none saved or found yet, and no prefix given")
        return restore(target, names=names, out=out, allow_partial=allow_partial,
                       storage_options=self.storage_options, options=self.options, local_tier=self.local_tier)


def restore(prefix: str | os.PathLike[str], *, names: Mapping[str, str] | list[str] | None = None,
            out: Mapping[str, np.ndarray] | None = None, allow_partial: bool = False,
            storage_options: dict[str, Any] | None = None,
            options: IOOptions = DEFAULT_OPTIONS, local_tier: TierLike | None = None) -> dict[str, np.ndarray]:
    """`Saver.restore` without a Saver (see there).  With `local_tier`, from the nearest tier."""
    text = os.fspath(prefix)
    if local_tier is None:
        resolved = _resolve_directory(text, storage_options)
    elif is_directory_id(text):
        found = latest_checkpoint(text, storage_options=storage_options, local_tier=local_tier)
        if found is None:
            raise CheckpointNotFoundError(f"no checkpoint found in {text} nor on the local tier")
        resolved = found
    else:
        resolved = text
    with CheckpointReader(resolved, storage_options=storage_options, options=options,
                          local_tier=local_tier) as reader:
        available = reader.get_variable_to_shape_map()
        if names is None:
            mapping = {n: n for n in (out or available)}
        elif isinstance(names, Mapping):
            mapping = dict(names)
        else:
            mapping = {n: n for n in names}
        missing = [s for s in mapping if s not in available]
        if missing and not allow_partial:
            raise TensorNotFoundError(
                f"{len(missing)} tensor(s) not found in checkpoint {resolved}: {', '.join(map(repr, missing[:10]))}"
                + (" ..." if len(missing) > 10 else ""))
        mapping = {s: t for s, t in mapping.items() if s in available}
        targets = out or {}
        dtype_map = reader.get_variable_to_dtype_map()
        for saved, tgt in mapping.items():
            array = targets.get(tgt)
            if array is None:
                continue
            shape = available[saved]
            if list(array.shape) != shape or array.dtype != dtype_map[saved]:
                raise ShapeMismatchError(
                    f"restoring tensor {saved!r} into {tgt!r}: the checkpoint holds {dtype_map[saved]}{shape}, "
                    f"the target is {array.dtype}{list(array.shape)} ({resolved})")
        saved_names = list(mapping)
        outs = {s: targets[t] for s, t in mapping.items() if t in targets}
        arrays = loop.run(reader.read_many(saved_names, out=outs))
        return {mapping[s]: arrays[s] for s in saved_names}


def _resolve_directory(prefix: str, storage_options: dict[str, Any] | None) -> str:
    """A directory (one with a state file) stands for its latest checkpoint, as in TF."""
    if "://" not in prefix and not os.path.isdir(prefix):
        return prefix
    if "://" in prefix:
        directory, name = split_prefix(prefix)
        if on_store(directory, lambda store: store.exists(index_filename(name)), storage_options):
            return prefix
    latest = latest_checkpoint(prefix, storage_options=storage_options)
    if latest is None:
        raise CheckpointNotFoundError(f"no checkpoint found in {prefix}: no state file, or its latest has no .index")
    return latest
