"""The plugins' ``local_tier=``: a TensorFlow object checkpoint, a JAX pytree and a PyTorch DCP
state dict saved through a local tier to the SeaweedFS S3 server, then restored from the
nearest tier, including after the local copy is damaged."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import remoteckpt
from remoteckpt.tiers.layout import LocalTier, local_prefix


def _flip_a_byte(local: str) -> None:
    data = local + ".data-00000-of-00001" if os.path.exists(local + ".data-00000-of-00001") else None
    data = data or sorted(f for f in (os.path.join(os.path.dirname(local), n) for n in os.listdir(
        os.path.dirname(local))) if ".data-" in f and os.path.getsize(f) > 64)[0]
    with open(data, "r+b") as f:
        f.seek(40)
        byte = f.read(1)
        f.seek(40)
        f.write(bytes([byte[0] ^ 0x20]))


def test_tensorflow_plugin(s3_prefix: str, tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    from remoteckpt import tensorflow as rtf

    tier = str(tmp_path / "tier")
    ckpt = tf.train.Checkpoint(w=tf.Variable(tf.range(1000, dtype=tf.float32)), step=tf.Variable(7, dtype=tf.int64))
    prefix = f"{s3_prefix}/tf-ckpt-7"
    assert rtf.save(ckpt, prefix, local_tier=tier) == prefix
    assert rtf.save_async(ckpt, f"{s3_prefix}/tf-ckpt-8", local_tier=tier).result(60) == f"{s3_prefix}/tf-ckpt-8"
    remoteckpt.wait_durable(prefix)
    remoteckpt.wait_durable(f"{s3_prefix}/tf-ckpt-8")
    _flip_a_byte(local_prefix(LocalTier(path=tier), prefix))
    again = tf.train.Checkpoint(w=tf.Variable(tf.zeros(1000)), step=tf.Variable(0, dtype=tf.int64))
    rtf.restore(again, prefix, local_tier=tier).assert_consumed()
    np.testing.assert_array_equal(again.w.numpy(), np.arange(1000, dtype=np.float32))
    assert int(again.step.numpy()) == 7


def test_jax_plugin(s3_prefix: str, tmp_path: Path) -> None:
    jnp = pytest.importorskip("jax.numpy")
    from remoteckpt import jax as rjax

    tree = {"layer": {"w": jnp.arange(12.0).reshape(3, 4)}, "step": np.int64(3)}
    prefix = f"{s3_prefix}/jax-ckpt-3"
    rjax.save(tree, prefix, local_tier=tmp_path / "tier")
    assert rjax.save_async(tree, f"{s3_prefix}/jax-ckpt-4", local_tier=tmp_path / "tier").result(60)
    remoteckpt.wait_durable(prefix)
    remoteckpt.wait_durable(f"{s3_prefix}/jax-ckpt-4")
    got = rjax.restore(prefix, tree, local_tier=tmp_path / "tier")
    np.testing.assert_array_equal(np.asarray(got["layer"]["w"]), np.arange(12.0).reshape(3, 4))


def test_dcp_storage_writer_and_reader(s3_prefix: str, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import torch.distributed.checkpoint as dcp

    from remoteckpt import torch as rt
    from remoteckpt.plugins.torch_dcp import METADATA_TENSOR

    tier = str(tmp_path / "tier")
    prefix = f"{s3_prefix}/step-100"
    state = {"w": torch.arange(5000, dtype=torch.float32), "b": torch.ones(3, dtype=torch.int64)}
    dcp.save(state, storage_writer=rt.StorageWriter(prefix, local_tier=tier), no_dist=True)
    local = local_prefix(LocalTier(path=tier), prefix)
    assert os.path.exists(local + ".index")
    remoteckpt.wait_durable(prefix)
    with remoteckpt.load_checkpoint(prefix) as reader:  # the remote copy: the ranks' files and DCP's metadata
        assert reader.index.num_shards == 2 and reader.has_tensor(METADATA_TENSOR)
    _flip_a_byte(local)
    target = {"w": torch.zeros(5000), "b": torch.zeros(3, dtype=torch.int64)}
    dcp.load(target, storage_reader=rt.StorageReader(prefix, local_tier=tier), no_dist=True)
    assert torch.equal(target["w"], state["w"]) and torch.equal(target["b"], state["b"])
