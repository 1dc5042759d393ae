"""Ranks of a torch.distributed job as spawned processes, for the plugin tests."""

from __future__ import annotations

import multiprocessing
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


def run_ranks(job: Any, world_size: int, tmp_path: Path, *args: Any, timeout: float = 180) -> list[Any]:
    """`job(init_file, rank, world_size, *args)` on `world_size` spawned processes (a fresh
    file:// rendezvous under `tmp_path`); their results in rank order, errors re-raised."""
    init_file = str(tmp_path / f"pg-{uuid.uuid4().hex}")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(world_size, mp_context=context) as pool:
        futures = [pool.submit(job, init_file, r, world_size, *args) for r in range(world_size)]
        return [f.result(timeout=timeout) for f in futures]
