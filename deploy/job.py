"""A multi-worker training job that checkpoints with remoteckpt (the container's command).

Each worker learns its rank and the world size from the environment (RANK or Kubernetes'
JOB_COMPLETION_INDEX; WORLD_SIZE), trains a toy model whose weights are partitioned by rows
across workers, and checkpoints to CHECKPOINT_DIR (e.g. s3://bucket/run) every
CHECKPOINT_EVERY steps, keeping the last 3.  A restarted job resumes from the latest
checkpoint.  S3 endpoint and credentials come from the standard AWS_* variables.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

import remoteckpt

ROWS, COLS = 4096, 1024


def main() -> int:
    rank = int(os.environ.get("RANK", os.environ.get("JOB_COMPLETION_INDEX", "0")))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    directory = os.environ["CHECKPOINT_DIR"]
    steps = int(os.environ.get("STEPS", "30"))
    every = int(os.environ.get("CHECKPOINT_EVERY", "10"))
    rows = ROWS // world
    lo, hi = rank * rows, (rank + 1) * rows if rank < world - 1 else ROWS
    manager = remoteckpt.CheckpointManager(directory, max_to_keep=3, checkpoint_interval=every,
                                           checkpoint_name="model.ckpt", rank=rank, world_size=world)
    weights = np.zeros((hi - lo, COLS), np.float32)
    start_step = 0
    latest = remoteckpt.latest_checkpoint(directory)
    if latest is not None:
        reader = remoteckpt.CheckpointReader(latest)
        weights = reader.get_slice("dense/kernel", (slice(lo, hi),))  # only this worker's rows
        start_step = int(reader.get_tensor("global_step")) + 1
        print(f"worker {rank}: resumed from {latest}", flush=True)
    for step in range(start_step, steps):
        weights += 0.01  # stands in for an optimizer step
        state = {"dense/kernel": remoteckpt.Slice(weights, (ROWS, COLS), (lo, 0)),
                 f"worker_{rank}/rng": np.array([rank, step], np.int64)}
        if rank == 0:
            state["global_step"] = np.int64(step)
        started = time.perf_counter()
        if manager.save(state, step):
            print(f"worker {rank}: step {step} checkpointed in {time.perf_counter() - started:.2f} s", flush=True)
    manager.final_save(state, steps - 1)
    if rank == 0:
        print(f"latest checkpoint: {remoteckpt.latest_checkpoint(directory)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
