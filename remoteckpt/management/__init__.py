"""Checkpoint management with TensorFlow's semantics, over any store.

    state      the `checkpoint` state file: read TF's, write ours, never follow an escape
    saver      `Saver`: tf.compat.v1.train.Saver's naming and retention, multi-worker, async
    policy     when to save: every N steps and/or T seconds; `CheckpointManager`
    gc         removal of what crashed saves leave behind, never of a committed checkpoint
    delete     one committed checkpoint deleted, index first (retention, tier eviction)
    directory  `latest_checkpoint` and `gc` over the remote directory and its local tier
    versions   numbered SavedModel versions: complete, partial, the next number
"""
