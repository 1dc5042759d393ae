"""When to save: Estimator RunConfig's `save_checkpoints_steps` / `save_checkpoints_secs`,
and `CheckpointManager`, a Saver bound to one directory and one policy."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..options import DEFAULT_OPTIONS, IOOptions
from ..tiers.layout import TierLike
from .directory import latest_checkpoint
from .saver import Saver
from .state import join


@dataclass(frozen=True, kw_only=True)
class SavePolicy:
    """Save when `every_steps` steps have passed since the last save, or `every_seconds`
    seconds (either, both, or neither: then only forced saves happen)."""

    every_steps: int | None = None
    every_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.every_steps is not None and self.every_steps <= 0:
            raise ValueError("every_steps must be positive")
        if self.every_seconds is not None and self.every_seconds <= 0:
            raise ValueError("every_seconds must be positive")

    def due(self, step: int, last_step: int | None, last_time: float | None, now: float) -> bool:
        if last_step is not None and step == last_step:
            return False  # never twice for one step
        if last_step is None:
            return True  # the first step seen: save, as Estimator's listener does
        if self.every_steps is not None and step >= last_step + self.every_steps:
            return True
        return self.every_seconds is not None and last_time is not None and now >= last_time + self.every_seconds


class CheckpointManager:
    """Checkpoints ``directory/checkpoint_name-STEP`` under a save policy and a Saver's retention.

        manager = CheckpointManager("s3://bucket/run", max_to_keep=3, checkpoint_interval=1000)
        for step in range(...):
            ...
            manager.save(tensors, step)          # saves only when the policy says so
        manager.final_save(tensors, step)        # always saves the last step (unless just saved)

    `rank`, `world_size`, `save_id`, `storage_options`, `options`, `incremental` and
    `local_tier` (a checkpoint committed on local disk first, drained to `directory` in the
    background: docs/tiered.md) are the Saver's.
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_to_keep: int | None = 5,
                 keep_checkpoint_every_n_hours: float = 10000.0, checkpoint_name: str = "ckpt",
                 checkpoint_interval: int | None = None, save_interval_seconds: float | None = None,
                 rank: int = 0, world_size: int = 1, storage_options: dict[str, Any] | None = None,
                 options: IOOptions = DEFAULT_OPTIONS, save_id: str | None = None,
                 incremental: bool = False, local_tier: TierLike | None = None) -> None:
        text = os.fspath(directory)
        self.directory = text.rstrip("/") if "://" in text else os.path.abspath(text)
        self.checkpoint_name = checkpoint_name
        self.policy = SavePolicy(every_steps=checkpoint_interval, every_seconds=save_interval_seconds)
        self.saver = Saver(max_to_keep, keep_checkpoint_every_n_hours, rank=rank, world_size=world_size,
                           storage_options=storage_options, options=options, save_id=save_id,
                           incremental=incremental, local_tier=local_tier)
        self._last_step: int | None = None
        self._last_time: float | None = None
        self._adopted = False

    @property
    def prefix(self) -> str:
        return join(self.directory, self.checkpoint_name)

    @property
    def checkpoints(self) -> list[str]:
        return self.saver.last_checkpoints

    @property
    def latest_checkpoint(self) -> str | None:
        return self.saver.last_checkpoints[-1] if self.saver.last_checkpoints else latest_checkpoint(
            self.directory, storage_options=self.saver.storage_options, local_tier=self.saver.local_tier)

    @property
    def durable_checkpoints(self) -> list[str]:
        """`checkpoints` committed remotely (with a local tier, the others are only local)."""
        return self.saver.durable_checkpoints

    def wait_durable(self, timeout: float | None = None) -> list[str]:
        """Block until every drain to the remote tier has finished (`Saver.wait_durable`)."""
        return self.saver.wait_durable(timeout)

    def should_save(self, step: int) -> bool:
        return self.policy.due(int(step), self._last_step, self._last_time, time.time())

    def _saved_already(self, step: int) -> bool:
        """Whether `step` is a checkpoint of the directory already (a job restarted from it
        reaches the same step again): it is not saved twice."""
        if not self._adopted:
            self.saver.adopt(self.directory)
            self._adopted = True
        if self.saver.prefix_for(self.prefix, step) in self.saver.last_checkpoints:
            self._mark(step)
            return True
        return False

    def save(self, tensors: Mapping[str, Any], step: int, *, force: bool = False) -> str | None:
        """Save at `step` if the policy says so (or `force`) and the directory does not hold
        that step already; the prefix, or None if skipped."""
        if not (force or self.should_save(step)) or self._saved_already(step):
            return None
        prefix = self.saver.save(tensors, self.prefix, global_step=step)
        self._mark(step)
        return prefix

    def save_async(self, tensors: Mapping[str, Any], step: int, *, force: bool = False) -> "Future[str] | None":
        if not (force or self.should_save(step)) or self._saved_already(step):
            return None
        future = self.saver.save_async(tensors, self.prefix, global_step=step)
        self._mark(step)
        return future

    def final_save(self, tensors: Mapping[str, Any], step: int) -> str | None:
        """The end-of-training save: always, unless this very step was just saved."""
        if self._last_step == int(step):
            self.saver._wait_in_flight()
            return self.saver.prefix_for(self.prefix, step)
        return self.save(tensors, step, force=True) or self.saver.prefix_for(self.prefix, step)

    def restore(self, prefix: str | None = None, **kwargs: Any) -> dict[str, np.ndarray]:
        return self.saver.restore(prefix if prefix is not None else self.latest_checkpoint, **kwargs)

    def _mark(self, step: int) -> None:
        self._last_step, self._last_time = int(step), time.time()
