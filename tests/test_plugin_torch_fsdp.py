"""remoteckpt.torch with FSDP2: a `fully_shard`-ed model and its Adam state, saved by 4 real
processes (gloo, CPU) through DCP and restored by 2, on local disk and SeaweedFS S3.

The workers live in tests/torch_fsdp_workers.py.  Restoring must give back every parameter
and optimizer moment bit for bit (resharded from quarters to halves), the optimizer's
hyper-parameters and step counts, and the next training step must be the one the saving job
took.  The checkpoint is a TensorFlow bundle whose sharded tensors read back whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch.distributed.checkpoint")
pytest.importorskip("torch.distributed.fsdp")

from spawning import run_ranks  # noqa: E402

import remoteckpt  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.multiprocess, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_fsdp2_model_and_optimizer_save_4_ranks_load_2_ranks(where: str, tmp_path: Path,
                                                             request: pytest.FixtureRequest) -> None:
    import torch_fsdp_workers as w

    directory = str(tmp_path) if where == "local" else request.getfixturevalue("s3_prefix")
    prefix = f"{directory}/run/step-{w.SAVED_STEPS}"

    saved_run = run_ranks(w.save_job, 4, tmp_path, prefix)
    assert saved_run[1:] == [None] * 3
    saved = saved_run[0]
    loaded_run = run_ranks(w.load_job, 2, tmp_path, prefix)
    assert loaded_run[1:] == [None]
    loaded = loaded_run[0]

    state = saved["saved"]
    params = [n for n in state if n.startswith("model.")]
    moments = [n for n in state if n.endswith((".exp_avg", ".exp_avg_sq"))]
    steps = [n for n in state if n.endswith(".step")]
    assert len(params) == 6 and len(moments) == 12 and len(steps) == 6, sorted(state)
    for name in steps:  # Adam's step counters (plain, replicated tensors)
        assert state[name].shape == () and state[name] == w.SAVED_STEPS, (name, state[name])
    assert state["optim.param_groups"][0]["lr"] == w.LR
    assert state["optim.param_groups"][0]["betas"] == list(w.BETAS)

    # FSDP2 sharded every parameter by rows: quarters in the saving job, halves when loading.
    shapes = {n[len("model."):]: list(state[n].shape) for n in params}
    assert saved["local_shapes"] == {k: [s[0] // 4, *s[1:]] for k, s in shapes.items()}
    assert loaded["local_shapes"] == {k: [s[0] // 2, *s[1:]] for k, s in shapes.items()}

    # The loading job started elsewhere (other weights, empty moments, other hyper-parameters)...
    for name in params + moments:
        assert not np.array_equal(loaded["initial"][name], state[name]), name
    assert loaded["initial"]["optim.param_groups"] != state["optim.param_groups"]
    # ... and the live model and optimizer now hold exactly what was saved.
    w.assert_same(loaded["restored"], state)

    # The next step (same batch) from the restored state is the one the saving job took: its
    # loss depends only on the restored parameters; after the update, allow for the gradient
    # reduction over 4 vs 2 ranks rounding differently (it matched exactly when written).
    assert loaded["next_loss"] == saved["next_loss"]
    assert saved["next_loss"] != saved["losses"][-1]
    w.assert_same(loaded["after"], saved["after"], exact=False)

    # A TensorFlow bundle: 4 ranks' data files + the coordinator's metadata file, one index.
    reader = remoteckpt.CheckpointReader(prefix)
    try:
        assert reader.index.num_shards == 5
        shape_map = reader.get_variable_to_shape_map()
        for name in params + moments + steps:
            assert shape_map[name] == list(state[name].shape), name
            got = reader.get_tensor(name)
            assert got.dtype == state[name].dtype, name
            np.testing.assert_array_equal(got, state[name], err_msg=name)
        # Each rank's rows of a parameter or moment are one TF slice: 4 slices, one full tensor.
        for name in params + moments:
            assert len(reader.index.entries[name.encode()].slices) == 4, name
        for name in steps:  # replicated: stored once, whole
            assert not reader.index.entries[name.encode()].slices, name
        # Any box reads back across the ranks' slices (rows 10..21 of 64: ranks 0 and 1).
        np.testing.assert_array_equal(reader.get_slice("model.0.weight", (slice(10, 22), slice(3, 7))),
                                      state["model.0.weight"][10:22, 3:7])
        assert reader.has_tensor("_DCP_BYTES/optim.param_groups.0.lr")
        assert reader.has_tensor("_DCP_METADATA")
    finally:
        reader.close()
