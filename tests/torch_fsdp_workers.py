"""Code that runs in spawned processes of tests/test_plugin_torch_fsdp.py (importable by name).

A small model trained with FSDP2 (`fully_shard`, CPU, gloo) and Adam: `save_job` (4 ranks)
trains two steps and saves model + optimizer through DCP with remoteckpt.torch's storage,
then trains one more step; `load_job` (2 ranks) builds the model sharded over its own world
with other initial weights and a fresh optimizer, loads the checkpoint, restores it with
`set_state_dict` and trains that same step.  Both return (from rank 0) the full, gathered
tensors of their state as numpy, for the test to compare.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, init_device_mesh

import remoteckpt.torch as rt

warnings.filterwarnings("ignore")

# Layer sizes (all divisible by 4 and 2: FSDP2 shards dim 0 evenly over either world).
SIZES = (16, 64, 32, 8)
BATCH = 12
LR, BETAS = 0.01, (0.8, 0.9)
SAVED_STEPS = 2  # steps trained before the save


def _join(init_file: str, rank: int, world_size: int) -> Any:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    return init_device_mesh("cpu", (world_size,))


def build_model(mesh: Any, seed: int) -> nn.Module:
    """nn.Sequential of 3 Linear layers, each and the root `fully_shard`-ed over `mesh`."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(SIZES, SIZES[1:])):
        if i:
            layers.append(nn.Tanh())
        layers.append(nn.Linear(fan_in, fan_out))
    model = nn.Sequential(*layers)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    assert isinstance(model, FSDPModule)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    return model


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same deterministic batch on every rank (so a step does not depend on the world size)."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(BATCH, SIZES[0], generator=g), torch.randn(BATCH, SIZES[-1], generator=g)


def train_step(model: nn.Module, optim: torch.optim.Optimizer, step: int) -> float:
    x, y = batch(step)
    optim.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    optim.step()
    return float(loss.detach())


def _full(value: Any) -> Any:
    if isinstance(value, DTensor):
        return value.full_tensor().numpy()  # a collective: every rank calls it in the same order
    if isinstance(value, torch.Tensor):
        return value.detach().clone().numpy()
    return value


def gathered(msd: dict[str, Any], osd: dict[str, Any]) -> dict[str, Any]:
    """Every value of get_state_dict's output, with the checkpoint's flat names
    (`model.0.weight`, `optim.state.0.weight.exp_avg`, `optim.param_groups`), as full arrays."""
    out: dict[str, Any] = {}
    for fqn in sorted(msd):
        out[f"model.{fqn}"] = _full(msd[fqn])
    for fqn in sorted(osd["state"]):
        for key in sorted(osd["state"][fqn]):
            out[f"optim.state.{fqn}.{key}"] = _full(osd["state"][fqn][key])
    out["optim.param_groups"] = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()}
                                 for group in osd["param_groups"]]
    return out


def _local_shapes(msd: dict[str, Any]) -> dict[str, list[int]]:
    return {fqn: list(v.to_local().shape) for fqn, v in msd.items() if isinstance(v, DTensor)}


def save_job(init_file: str, rank: int, world_size: int, prefix: str) -> dict[str, Any] | None:
    """Trains SAVED_STEPS steps, saves {"model", "optim"} to `prefix`, then trains one more step.
    Rank 0 returns {"saved": full state at the save, "losses", "next_loss", "after": full
    state after the extra step, "local_shapes"}."""
    mesh = _join(init_file, rank, world_size)
    try:
        model = build_model(mesh, seed=0)
        optim = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS)
        losses = [train_step(model, optim, s) for s in range(SAVED_STEPS)]
        msd, osd = get_state_dict(model, optim)
        assert all(isinstance(v, DTensor) for v in msd.values()), {k: type(v) for k, v in msd.items()}
        dcp.save({"model": msd, "optim": osd}, storage_writer=rt.StorageWriter(prefix))
        saved = gathered(msd, osd)
        shapes = _local_shapes(msd)
        return _then_one_step(model, optim, rank, saved=saved, losses=losses, local_shapes=shapes)
    finally:
        dist.destroy_process_group()


def _then_one_step(model: Any, optim: Any, rank: int, **report: Any) -> dict[str, Any] | None:
    """The training step after the save (or restore), then rank 0's `report` with its
    "next_loss" and the full state "after" it; None on other ranks."""
    next_loss = train_step(model, optim, SAVED_STEPS)
    after = gathered(*get_state_dict(model, optim))
    dist.barrier()
    return None if rank else {**report, "next_loss": next_loss, "after": after}


def load_job(init_file: str, rank: int, world_size: int, prefix: str) -> dict[str, Any] | None:
    """A model with other initial weights sharded over this world and a fresh Adam (other
    hyper-parameters), restored from `prefix`; then the step that followed the save.  Rank 0
    returns {"initial", "restored", "next_loss", "after", "local_shapes"}."""
    mesh = _join(init_file, rank, world_size)
    try:
        model = build_model(mesh, seed=1)
        optim = torch.optim.Adam(model.parameters(), lr=0.5, betas=(0.5, 0.5))
        # get_state_dict creates the optimizer's state (a zero-grad step) so DCP has targets.
        msd, osd = get_state_dict(model, optim)
        initial = gathered(msd, osd)
        state = {"model": msd, "optim": osd}
        dcp.load(state, storage_reader=rt.StorageReader(prefix))
        set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"])
        # What the live model and optimizer now hold (not just the loaded dicts).
        msd, osd = get_state_dict(model, optim)
        restored = gathered(msd, osd)
        shapes = _local_shapes(msd)
        return _then_one_step(model, optim, rank, initial=initial, restored=restored, local_shapes=shapes)
    finally:
        dist.destroy_process_group()


def assert_same(got: dict[str, Any], expected: dict[str, Any], exact: bool = True) -> None:
    assert sorted(got) == sorted(expected), (sorted(got), sorted(expected))
    for name, value in expected.items():
        if isinstance(value, np.ndarray):
            assert isinstance(got[name], np.ndarray) and got[name].dtype == value.dtype, (name, got[name])
            if exact:
                np.testing.assert_array_equal(got[name], value, err_msg=name)
            else:
                np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
        else:
            assert got[name] == value, (name, got[name], value)
