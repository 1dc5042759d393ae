"""Code that runs in spawned worker processes of the TensorFlow multi-process tests
(importable by name; TensorFlow is imported inside the functions, so importing this module is
cheap and spawn-safe)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

STEP = 5
SAVE_COUNTER = 3


def build_state(trained: bool = True) -> tuple[Any, Any, Any]:
    """(tf.train.Checkpoint, model, optimizer), the same in every process.

    Trained: a Keras model with weights set from a fixed numpy RNG, after two Adam steps on a
    fixed batch (so the optimizer has iterations, learning rate and both moment slots), plus a
    ``step`` variable and ``save_counter`` set.  Untrained: the same structure with the
    optimizer built (its slots exist at zero), ``step`` 0, for restoring into."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    keras.utils.set_random_seed(1234)
    # Explicit names everywhere: the object graph must not depend on how many models this
    # process built before (Keras numbers default names per process).
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(32, name="hidden"),
                              keras.layers.Dense(12, name="wide"), keras.layers.Dense(3, name="out")],
                             name="tfmp_model")
    optimizer = keras.optimizers.Adam(0.01, name="tfmp_adam")
    model.compile(optimizer=optimizer, loss="mse")
    if trained:
        rng = np.random.default_rng(7)
        model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.get_weights()])
        x = rng.random((16, 6), np.float32)
        y = rng.random((16, 3), np.float32)
        model.train_on_batch(x, y)
        model.train_on_batch(x, y)
    else:
        optimizer.build(model.trainable_variables)
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer,
                               step=tf.Variable(STEP if trained else 0, dtype=tf.int64))
    ckpt.save_counter.assign(SAVE_COUNTER if trained else 0)  # creates it, as Checkpoint.save does
    return ckpt, model, optimizer


def tf_save_worker(prefix: str, rank: int, world_size: int, save_id: str, timeout: float) -> dict[str, Any]:
    """Build the replicated state and save this rank's share of it with
    `remoteckpt.tensorflow.save`.  Returns what this worker did: the returned prefix, the keys
    of its share, and the value of every tensor it held (key -> numpy array; the object graph
    as bytes)."""
    import remoteckpt.tensorflow as rtf
    from remoteckpt.options import IOOptions
    from remoteckpt.plugins.tensorflow_plugin import checkpoint_tensors, share_of

    ckpt, _, _ = build_state(trained=True)
    tensors = checkpoint_tensors(ckpt)
    mine = sorted(share_of(tensors, rank, world_size))
    result = rtf.save(ckpt, prefix, rank=rank, world_size=world_size, save_id=save_id,
                      options=IOOptions(commit_timeout=timeout, poll_interval=0.02))
    values = {k: (bytes(v[()]) if v.dtype.kind == "O" and v.ndim == 0 else np.array(v))
              for k, v in tensors.items()}
    return {"prefix": result, "rank": rank, "pid": os.getpid(), "keys": mine, "values": values}
