"""Workers of a job whose hosts each have a local tier of their own (`LocalTier(per_host=True)`):
spawned processes, each standing for a host, saving through a `remoteckpt.Saver` to S3.
Used by tests/test_tiers_hosts.py."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

import remoteckpt
from remoteckpt.options import IOOptions

ROWS = 64


def tensors(step: int, rank: int, world: int) -> dict[str, Any]:
    """Worker `rank`'s tensors at `step`: its rows of a partitioned table, its own state, and a
    frozen tensor that no step changes (copied by the drains of incremental saves)."""
    rows = np.arange(rank * ROWS, (rank + 1) * ROWS, dtype=np.float32)[:, None] * np.ones(8, np.float32) + step
    return {"table": remoteckpt.Slice(rows, full_shape=(world * ROWS, 8), offset=(rank * ROWS, 0)),
            f"rank{rank}/state": np.full(1000, step * 10 + rank, np.int64),
            f"rank{rank}/frozen": np.arange(2**20, dtype=np.float32) + rank}


def expected(step: int, world: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {"table": np.arange(world * ROWS, dtype=np.float32)[:, None] * np.ones(8) + step}
    for rank in range(world):
        out[f"rank{rank}/state"] = np.full(1000, step * 10 + rank, np.int64)
        out[f"rank{rank}/frozen"] = np.arange(2**20, dtype=np.float32) + rank
    return out


def tier_of(base: str, rank: int) -> remoteckpt.LocalTier:
    return remoteckpt.LocalTier(path=os.path.join(base, f"host-{rank}"), keep=2, per_host=True)


def save_job(rank: int, world: int, env: dict[str, str], directory: str, tiers: str, steps: int) -> dict[str, Any]:
    """Save `steps` steps; each drain waited for.  What this worker's tier holds after."""
    os.environ.update(env)
    options = IOOptions(commit_timeout=60, poll_interval=0.02, lease_timeout=5)
    saver = remoteckpt.Saver(max_to_keep=2, rank=rank, world_size=world, save_id="hosts-job", options=options,
                             local_tier=tier_of(tiers, rank), incremental=True)
    for step in range(steps):
        saver.save(tensors(step, rank, world), f"{directory}/model.ckpt", global_step=step)
        saver.wait_durable(120)
    return {"files": sorted(os.listdir(tier_of(tiers, rank).path)), "durable": saver.durable_checkpoints}


def restore_job(rank: int, world: int, env: dict[str, str], prefix: str, tiers: str) -> dict[str, Any]:
    """Restore the whole checkpoint through this worker's tier; the tensors, as lists."""
    os.environ.update(env)
    got = remoteckpt.load(prefix, local_tier=tier_of(tiers, rank))
    return {k: v.tolist() for k, v in got.items()}


def crash_job(barrier: Any, rank: int, world: int, env: dict[str, str], directory: str, tiers: str, crash: str,
              victim: int, result_path: str) -> None:
    """Steps 0 and 1, worker `victim` killed at `crash` (``REMOTECKPT_CRASH_AT``); a survivor
    records what failed (its drain of step 1, which waits for the victim's part)."""
    import json

    os.environ.update(env)
    if rank == victim:
        os.environ["REMOTECKPT_CRASH_AT"] = crash
    options = IOOptions(commit_timeout=12, poll_interval=0.02, lease_timeout=2)  # step 0 under load too
    saver = remoteckpt.Saver(max_to_keep=3, rank=rank, world_size=world, save_id="hosts-crash", options=options,
                             local_tier=tier_of(tiers, rank))
    barrier.wait()
    errors = []
    for step in range(2):
        try:
            saver.save(tensors(step, rank, world), f"{directory}/model.ckpt", global_step=step)
            saver.wait_durable(60)
        except remoteckpt.CheckpointError as exc:
            errors.append(f"step {step}: {type(exc).__name__}: {exc}")
    with open(result_path, "w") as f:
        json.dump({"errors": errors}, f)


def restart_job(barrier: Any, rank: int, world: int, env: dict[str, str], directory: str, tiers: str,
                result_path: str) -> None:
    """A restarted job: each worker's Saver adopts the directory and its tier, resuming the
    drains left unfinished (every worker its own part); then step 2."""
    import json

    os.environ.update(env)
    options = IOOptions(commit_timeout=30, poll_interval=0.02, lease_timeout=2)
    saver = remoteckpt.Saver(max_to_keep=3, rank=rank, world_size=world, save_id="hosts-restart", options=options,
                             local_tier=tier_of(tiers, rank))
    barrier.wait()
    saver.save(tensors(2, rank, world), f"{directory}/model.ckpt", global_step=2)
    durable = saver.wait_durable(120)
    with open(result_path, "w") as f:
        json.dump({"durable": durable}, f)


def overwrite_job(rank: int, world: int, env: dict[str, str], prefix: str, tiers: str) -> dict[str, Any]:
    """Save step 0 at `prefix`, wait for it, then save step 1's tensors over it (overwrite)."""
    os.environ.update(env)
    options = IOOptions(commit_timeout=60, poll_interval=0.02, lease_timeout=5)
    for step, overwrite in ((0, False), (1, True)):
        remoteckpt.save(tensors(step, rank, world), prefix, rank=rank, world_size=world, save_id=f"over-{step}",
                        overwrite=overwrite, options=options, local_tier=tier_of(tiers, rank))
        remoteckpt.wait_durable(prefix, timeout=120)
    return {"files": sorted(os.listdir(tier_of(tiers, rank).path))}
