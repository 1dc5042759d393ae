"""A checkpoint directory over every tier: its latest checkpoint and its garbage.

The public `latest_checkpoint` and `gc`: the remote directory's (`state`, `gc`) and, with
``local_tier=``, the local tier's too (`tiers.state`).
"""

from __future__ import annotations

import os
from typing import Any

from ..options import DEFAULT_OPTIONS, IOOptions
from ..tiers import state as tier_state
from ..tiers.layout import TierLike, as_tier
from . import gc as remote_gc
from . import state
from .gc import GcReport
from .state import STATE_FILENAME


def latest_checkpoint(directory: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None,
                      latest_filename: str = STATE_FILENAME, local_tier: TierLike | None = None) -> str | None:
    """The prefix of the latest committed checkpoint in `directory` (as
    `tf.train.latest_checkpoint`): None if there is no state file or its latest checkpoint
    has no `.index`.  With `local_tier`, the newest checkpoint of `directory` complete on
    either tier (`tiers.state.latest`; it may be only local, not yet durable)."""
    tier = as_tier(local_tier)
    if tier is None:
        return state.latest_checkpoint(directory, storage_options=storage_options, latest_filename=latest_filename)
    return tier_state.latest(state.directory_of(directory), tier, storage_options=storage_options,
                             latest_filename=latest_filename)


def gc(directory: str | os.PathLike[str], *, older_than: float = 3600.0,
       storage_options: dict[str, Any] | None = None, dry_run: bool = False,
       options: IOOptions = DEFAULT_OPTIONS, local_tier: TierLike | None = None) -> GcReport:
    """Remove uncommitted leftovers older than `older_than` seconds from `directory`, except
    those of live saves (`management.gc`); with `dry_run`, only report them.  With
    `local_tier`, the tier is cleaned too (`tiers.state.gc_tier`; reported after the
    directory's, its keys relative to the tier)."""
    report = remote_gc.gc(directory, older_than=older_than, storage_options=storage_options, dry_run=dry_run,
                          options=options)
    tier = as_tier(local_tier)
    if tier is not None:
        more = tier_state.gc_tier(tier, older_than=older_than, dry_run=dry_run, options=options,
                                  storage_options=storage_options)
        report.removed += more.removed
        report.bytes_freed += more.bytes_freed
        report.skipped += more.skipped
    return report
