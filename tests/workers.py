"""Code that runs in spawned worker processes of the multi-worker tests (importable by name)."""

from __future__ import annotations

import numpy as np

import remoteckpt
from remoteckpt.options import IOOptions

ROWS, COLS = 64, 48


def full_matrix() -> np.ndarray:
    return np.arange(ROWS * COLS, dtype=np.float32).reshape(ROWS, COLS) / 7


def worker_tensors(rank: int, world_size: int) -> dict[str, object]:
    """Worker `rank`'s share: rows of a partitioned matrix, a column block of another, and
    tensors of its own."""
    rows = ROWS // world_size
    cols = COLS // world_size
    full = full_matrix()
    return {
        "shared/rows": remoteckpt.Slice(full[rank * rows : (rank + 1) * rows], (ROWS, COLS), (rank * rows, 0)),
        "shared/cols": remoteckpt.Slice(full[:, rank * cols : (rank + 1) * cols] * 2, (ROWS, COLS), (0, rank * cols)),
        f"worker{rank}/step": np.int64(1000 + rank),
        f"worker{rank}/big": np.full(3 * 2**20 // 4 + rank, rank, dtype=np.float32),  # > one CRC chunk
        f"worker{rank}/words": np.array([f"rank {rank}".encode(), b""], dtype=object),
    }


JOB = "tests-workers"
"""The save id of the spawned jobs (each saves its own prefix; none race)."""


def save_worker(prefix: str, rank: int, world_size: int, timeout: float, fail: bool = False) -> str:
    tensors = worker_tensors(rank, world_size)
    if fail:
        tensors["bad"] = np.array([np.datetime64("2020-01-01")])  # unsupported: fails this worker
    remoteckpt.save(tensors, prefix, rank=rank, world_size=world_size, save_id=JOB,
                    options=IOOptions(commit_timeout=timeout, poll_interval=0.02))
    return prefix


def saver_worker(directory: str, rank: int, world_size: int, steps: int) -> list[str]:
    """A training loop's checkpointing: every worker saves its share each step."""
    saver = remoteckpt.Saver(max_to_keep=2, rank=rank, world_size=world_size, save_id=JOB,
                             options=IOOptions(commit_timeout=60, poll_interval=0.02))
    for step in range(steps):
        tensors = worker_tensors(rank, world_size)
        tensors[f"worker{rank}/step"] = np.int64(step)
        saver.save(tensors, f"{directory}/model.ckpt", global_step=step)
    return saver.last_checkpoints
