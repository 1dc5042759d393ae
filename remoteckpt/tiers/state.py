"""The newest checkpoint complete on any tier, and `gc` of a local tier.

`latest(directory, tier)`: the candidates are the remote directory's latest (its state file's,
if its index exists; its time is the state file's timestamp for it, else the index's
modification time) and the local tier's newest checkpoint of that directory whose index is
committed locally (its record's time).  The newer wins; either way the answer is the remote
prefix (the checkpoint's id on every tier), which `load(..., local_tier=)` reads from the
nearest tier.  A checkpoint only local is the latest, but not durable (`drain.wait_durable`).

`gc_tier(tier)`: `remoteckpt.gc` of the tier's directories (data files without index, staging,
dead claims, temp files), then the tier's own leftovers: a record, marker or worker's table
(per-host tiers) whose checkpoint has no index (a save that died before its local commit).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ..engine import loop
from ..errors import CheckpointError
from ..format.bundle import index_filename
from ..management.gc import GcReport, gc
from ..management.state import STATE_FILENAME, read_state
from ..options import DEFAULT_OPTIONS, IOOptions
from ..storage import Store, on_store, split_prefix
from . import hosts
from .hostlock import LOCK
from .layout import DRAINS, DURABLE, RECORD, LocalTier, checkpoints

log = logging.getLogger("remoteckpt")


def latest(directory: str, tier: LocalTier, *, storage_options: dict[str, Any] | None = None,
           latest_filename: str = STATE_FILENAME) -> str | None:
    """See the module docstring; `directory` as `latest_checkpoint` takes it (resolved)."""
    async def remote_latest(store: Store) -> tuple[float, str] | None:
        state = await read_state(store, directory, latest_filename)
        if state is None:
            return None
        head = await store.head(index_filename(state.model_checkpoint_path))
        if head is None:
            return None
        stamp = state.all_model_checkpoint_timestamps[-1] if state.all_model_checkpoint_timestamps else head.mtime
        return stamp, state.latest

    candidates = []
    try:
        found = on_store(directory, remote_latest, storage_options)
    except CheckpointError as exc:  # the remote tier out of reach: the local one still answers
        log.warning("%s: %s; looking at the local tier %s only", directory, exc, tier.path)
        found = None
    if found is not None:
        candidates.append(found)
    here = [c for c in checkpoints(tier) if c.committed and split_prefix(c.remote)[0] == directory]
    if here:
        candidates.append((here[-1].time, here[-1].remote))
    return max(candidates)[1] if candidates else None


def gc_tier(tier: LocalTier, *, older_than: float = 3600.0, dry_run: bool = False,
            options: IOOptions = DEFAULT_OPTIONS, storage_options: dict[str, Any] | None = None) -> GcReport:
    """See the module docstring.  A per-host tier first gets back the index of every local
    commit its host missed (`hosts.recover`): those data files are a checkpoint's, not leftovers."""
    report = GcReport()
    if not os.path.isdir(tier.path):
        return report
    if tier.per_host and not dry_run:
        loop.run(hosts.recover(tier, storage_options=storage_options, options=options))
    directories = {tier.path} | {os.path.dirname(c.local) for c in checkpoints(tier)}
    for directory in sorted(directories):
        one = gc(directory, older_than=older_than, dry_run=dry_run, options=options)
        prefix = os.path.relpath(directory, tier.path)
        for key in one.removed:
            report.removed.append(key if prefix == "." else f"{prefix}/{key}")
        report.bytes_freed += one.bytes_freed
        report.skipped += one.skipped
    cutoff = time.time() - older_than
    for c in checkpoints(tier):
        if c.committed:
            continue
        tables = [os.path.join(os.path.dirname(c.local), f) for f in os.listdir(os.path.dirname(c.local))
                  if f.startswith(os.path.basename(c.local) + ".table-")]
        for path in (c.local + DURABLE, c.local + DRAINS, *tables, c.local + RECORD):
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                continue
            if stat.st_mtime > cutoff or os.path.exists(c.local + ".claim"):
                report.skipped.append((os.path.relpath(path, tier.path), f"younger than {older_than:g} s"))
                continue
            report.removed.append(os.path.relpath(path, tier.path))
            report.bytes_freed += stat.st_size
            if not dry_run:
                os.remove(path)
        if os.path.relpath(c.local + RECORD, tier.path) in report.removed and os.path.exists(c.local + LOCK):
            report.removed.append(os.path.relpath(c.local + LOCK, tier.path))  # the checkpoint's last file
            if not dry_run:
                os.remove(c.local + LOCK)
    return report
