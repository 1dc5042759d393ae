"""Code that runs in spawned processes of tests/test_readonce.py (importable by name): ranks of
a gloo process group loading one checkpoint together, each checking what it got itself."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

import remoteckpt

KiB, MiB = 1024, 2**20


def state() -> dict[str, Any]:
    """The checkpoint: tensors larger than a CRC chunk (1 MiB), small ones, a string."""
    rng = np.random.default_rng(7)
    return {
        "big": rng.standard_normal((768, 1024), dtype=np.float32),  # 3 MiB: 3 chunks
        "wide": rng.integers(0, 1 << 30, (300, 2048), dtype=np.int64),  # 4.7 MiB
        "bias": np.linspace(-1, 1, 100, dtype=np.float32),
        "step": np.array(1234, dtype=np.int64),
        "note": np.array([b"remote", b"ckpt"], dtype=object),
    }


def rows(rank: int, world_size: int) -> tuple[int, int]:
    """Rows of `wide` rank `rank` reads in the partial load: overlapping its neighbours'."""
    step = 300 // world_size
    return rank * step, min(300, rank * step + 2 * step)


def _join(init_file: str, rank: int, world_size: int) -> None:
    import torch.distributed as dist

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)


def load_job(init_file: str, rank: int, world_size: int, prefixes: list[str], whole: str, boxes: str,
             corrupt: str | None, hosts: list[str] | None) -> list[str]:
    """Every prefix (on S3) loaded whole by the group through endpoint `whole`, then boxes of
    rows that overlap between ranks through endpoint `boxes`; then `corrupt` (a local
    checkpoint with a damaged chunk) must fail on every rank.  `hosts`: the host each rank
    tells the group it is on (None: this machine's name, for all)."""
    import torch.distributed as dist

    from remoteckpt.engine.group import HOST_ENV

    if hosts is not None:
        os.environ[HOST_ENV] = hosts[rank]
    _join(init_file, rank, world_size)
    expected = state()
    try:
        for prefix in prefixes:
            opts = {"endpoint_url": whole}
            got = remoteckpt.load(prefix, storage_options=opts, process_group=dist.group.WORLD)
            assert set(got) == set(expected), (prefix, sorted(got))
            for name, value in expected.items():
                assert got[name].dtype == value.dtype and np.array_equal(got[name], value), (prefix, name)
            # Each rank's arrays are its own, however the group shared the bytes.
            got["big"][0, 0] = rank + 1000
            dist.barrier()
            assert got["big"][0, 0] == rank + 1000 and np.array_equal(got["big"][1:], expected["big"][1:])
            dist.barrier()
            lo, hi = rows(rank, world_size)
            out = np.zeros((hi - lo, 2048), np.int64)
            opts = {"endpoint_url": boxes}
            with remoteckpt.CheckpointReader(prefix, storage_options=opts) as reader:
                read = reader.read_boxes_shared([("wide", (slice(lo, hi),)), ("note", None)], [out, None],
                                                 dist.group.WORLD)
            assert read[0] is out and np.array_equal(out, expected["wide"][lo:hi]), (prefix, rank)
            assert list(read[1]) == list(expected["note"])
        if corrupt is not None:
            try:
                remoteckpt.load(corrupt, process_group=dist.group.WORLD)
            except remoteckpt.CorruptCheckpointError as exc:
                assert "checksum mismatch" in str(exc), exc
            else:
                raise AssertionError("a damaged checkpoint loaded")
            # A request only rank 1 gets wrong fails on every rank, before a byte moves.
            with remoteckpt.CheckpointReader(corrupt) as reader:
                try:
                    reader.read_boxes_shared([("missing" if rank == 1 else "big", None)], None, dist.group.WORLD)
                except remoteckpt.TensorNotFoundError as exc:
                    assert "missing" in str(exc) and (rank == 1 or "rank 1 of the group" in str(exc)), exc
                else:
                    raise AssertionError("a request for a missing tensor succeeded")
        dist.barrier()
        return prefixes
    finally:
        dist.destroy_process_group()


def dcp_job(init_file: str, rank: int, world_size: int, prefix: str, endpoint: str) -> str:
    """dcp.save of tests/torch_workers.py's sharded state (straight to the server), then
    dcp.load through `endpoint` with `cols` replicated on every rank (its column slices
    read by all) and a process group: every value checked."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    import torch_workers as tw
    from torch.distributed.tensor import init_device_mesh

    import remoteckpt.torch as rt

    _join(init_file, rank, world_size)
    try:
        mesh = init_device_mesh("cpu", (world_size,))
        dcp.save(tw.sharded_state(mesh), storage_writer=rt.StorageWriter(prefix))
        dist.barrier()
        state = tw.sharded_state(mesh, zeros=True, cols="replicate")
        dcp.load(state, storage_reader=rt.StorageReader(prefix, storage_options={"endpoint_url": endpoint},
                                                        process_group=dist.group.WORLD))
        full = tw.full_state()
        for key in ("weight", "emb", "cols"):
            assert torch.equal(state["model"][key].full_tensor(), full[f"model.{key}"]), key
        for key in ("bias", "count", "mask"):
            assert torch.equal(state["model"][key], full[f"model.{key}"]), key
        assert {k: state[k] for k in tw.EXTRA} == tw.EXTRA
        dist.barrier()
        return prefix
    finally:
        dist.destroy_process_group()


def cache_job(barrier: Any, prefix: str, endpoint: str, cache_dir: str, result_path: str) -> None:
    """One process of several loading `prefix` at once through the host cache at `cache_dir`;
    writes {"ok": True} or {"error": ...} to `result_path`."""
    import json

    record: dict[str, Any] = {}
    try:
        options = remoteckpt.IOOptions(host_cache=cache_dir, coalesce_gap=0)
        barrier.wait(60)
        got = remoteckpt.load(prefix, storage_options={"endpoint_url": endpoint}, options=options)
        expected = state()
        assert set(got) == set(expected), sorted(got)
        for name, value in expected.items():
            assert got[name].dtype == value.dtype and np.array_equal(got[name], value), name
        record["ok"] = True
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        record["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    with open(result_path, "w") as f:
        json.dump(record, f)


def budget_job(init_file: str, rank: int, world_size: int, prefix: str, endpoint: str, budgets: list[int],
               hosts: list[str] | None) -> list[dict[str, int]]:
    """Under each memory budget of `budgets` (each a budget of its own), boxes that must be
    staged (columns of `wide` every rank overlaps, rows of it, the string) read by the group;
    every value checked.  For each: the budget's high-water mark, what it held when the staged
    parts were copied out (`engine.group._settle`), and what it holds after."""
    import torch.distributed as dist

    from remoteckpt.engine import group, loop
    from remoteckpt.engine.budget import MemoryBudget, process_budget

    if hosts is not None:
        os.environ[group.HOST_ENV] = hosts[rank]
    _join(init_file, rank, world_size)
    expected = state()
    records = []
    try:
        for capacity in budgets:
            async def budget_of(capacity: int = capacity) -> MemoryBudget:
                return process_budget(capacity)

            budget = loop.run(budget_of())
            held: list[int] = []
            settle = group._settle

            def settling(*args: Any, **kwargs: Any) -> None:
                held.append(budget.used)
                settle(*args, **kwargs)

            group._settle = settling
            try:
                lo, hi = rows(rank, world_size)
                cols = (rank * 400, rank * 400 + 800)
                options = remoteckpt.IOOptions(memory_budget=capacity)
                with remoteckpt.CheckpointReader(prefix, storage_options={"endpoint_url": endpoint},
                                                 options=options) as reader:
                    got = reader.read_boxes_shared(
                        [("wide", (slice(None), slice(*cols))), ("wide", (slice(lo, hi),)), ("note", None)],
                        None, dist.group.WORLD)
            finally:
                group._settle = settle
            assert np.array_equal(got[0], expected["wide"][:, cols[0] : cols[1]]), (capacity, rank)
            assert np.array_equal(got[1], expected["wide"][lo:hi]), (capacity, rank)
            assert list(got[2]) == list(expected["note"])
            records.append({"peak": budget.peak, "settling": held[0], "after": budget.used})
            dist.barrier()
        return records
    finally:
        dist.destroy_process_group()
