"""Code that runs in spawned processes of tests/test_plugin_torch.py and
tests/test_plugin_torch_race.py (importable by name).

Each job joins a gloo process group through a file:// rendezvous, runs DCP with
remoteckpt.torch's storage and checks what it loaded itself; assertion errors travel back to
the test through the process pool's future (racing jobs write a JSON record instead).
"""

from __future__ import annotations

import datetime
import json
import os
import time
import warnings
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor, init_device_mesh

import remoteckpt.torch as rt

warnings.filterwarnings("ignore")


# --- the model's full tensors (what every rank's shards add up to) ---------------------------

def full_state() -> dict[str, torch.Tensor]:
    return {
        # 2 MiB: saved by 4 ranks as 512 KiB row slices; each of 2 loading ranks needs 2 of them
        "model.weight": torch.arange(ROWS * COLS, dtype=torch.float32).reshape(ROWS, COLS) / 3,
        "model.emb": (torch.arange(10 * 3, dtype=torch.float32).reshape(10, 3) - 7).to(torch.bfloat16),
        "model.cols": torch.arange(4 * 8, dtype=torch.float64).reshape(4, 8) * 1.5,
        "model.bias": torch.linspace(-1, 1, 6),
        "model.count": torch.tensor(12345, dtype=torch.int64),
        "model.mask": torch.tensor([True, False, True]),
    }


EXTRA = {"step": 100, "note": "remoteckpt", "lr": [0.1, 0.01]}
ROWS, COLS = 2048, 256
KiB = 1024


def count_reads(reader: Any) -> dict[str, int]:
    """Counts the bytes a CheckpointReader's store is asked for (as tests/test_engine.py does)."""
    counts = {"bytes": 0, "requests": 0}
    store = reader.store
    inner = store.read_scatter

    async def counted(key: str, start: int, targets: list[tuple[int, memoryview]], **kw: Any) -> Any:
        counts["requests"] += 1
        counts["bytes"] += max(o + len(v) for o, v in targets) - start
        return await inner(key, start, targets, **kw)

    store.read_scatter = counted
    return counts


def _join(init_file: str, rank: int, world_size: int) -> Any:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    return init_device_mesh("cpu", (world_size,))


def sharded_state(mesh: Any, zeros: bool = False, cols: str = "shard") -> dict[str, Any]:
    """The state_dict as a training job holds it: DTensors sharded over `mesh` (rows of
    `weight`, uneven rows of `emb`, columns of `cols`), replicated plain tensors, objects."""
    full = full_state()
    if zeros:
        full = {k: torch.zeros_like(v) for k, v in full.items()}
    cols_placement = [Shard(1)] if cols == "shard" else [Replicate()]
    model = {
        "weight": distribute_tensor(full["model.weight"], mesh, [Shard(0)]),
        "emb": distribute_tensor(full["model.emb"], mesh, [Shard(0)]),
        "cols": distribute_tensor(full["model.cols"], mesh, cols_placement),
        "bias": full["model.bias"],
        "count": full["model.count"],
        "mask": full["model.mask"],
    }
    extra = {"step": 0, "note": "", "lr": []} if zeros else dict(EXTRA)
    return {"model": model, **extra}


def save_then_load_job(init_file: str, rank: int, pool_size: int, prefixes: list[str], async_prefixes: list[str],
                       save_world: int, load_world: int, read_bound: tuple[int, int]) -> list[str]:
    """The first `save_world` ranks of the pool save the sharded state (dcp.save to every
    prefix, then dcp.async_save to every async prefix); then the first `load_world` ranks form
    a new world and load every checkpoint resharded (`load_job`).  One pool of processes for
    both: spawning is the slow part."""
    if rank < save_world:
        mesh = _join(init_file, rank, save_world)
        try:
            state = sharded_state(mesh)
            for prefix in prefixes:
                dcp.save(state, storage_writer=rt.StorageWriter(prefix))
            for prefix in async_prefixes:
                future = dcp.async_save(state, storage_writer=rt.StorageWriter(prefix))
                future.result(timeout=120)
            dist.barrier()
        finally:
            dist.destroy_process_group()
    if rank >= load_world:
        return []
    return load_job(init_file + "-load", rank, load_world, [*prefixes, *async_prefixes], read_bound)


def load_job(init_file: str, rank: int, world_size: int, prefixes: list[str], read_bound: tuple[int, int]) -> list[str]:
    """Loads each prefix into a state sharded over this job's world, checks every value and
    that the bytes read lie in `read_bound` (low, high); returns the prefixes checked."""
    mesh = _join(init_file, rank, world_size)
    try:
        full = full_state()
        for i, prefix in enumerate(prefixes):
            # Alternate the layout of `cols`: its column slices resharded, or read whole.
            state = sharded_state(mesh, zeros=True, cols="shard" if i % 2 == 0 else "replicate")
            storage = rt.StorageReader(prefix)
            counts = count_reads(storage.reader)
            dcp.load(state, storage_reader=storage)
            # Ranged reads of just the needed boxes (rounded out to whole checksum chunks)
            # plus the small tensors, never the other ranks' slices.
            assert read_bound[0] <= counts["bytes"] < read_bound[1], (prefix, counts, read_bound)
            model = state["model"]
            for key in ("weight", "emb", "cols"):
                dt = model[key]
                assert isinstance(dt, DTensor)
                got = dt.full_tensor()
                assert got.dtype == full[f"model.{key}"].dtype, (prefix, key, got.dtype)
                assert torch.equal(got, full[f"model.{key}"]), (prefix, key)
            for key in ("bias", "count", "mask"):
                assert torch.equal(model[key], full[f"model.{key}"]), (prefix, key)
            assert {k: state[k] for k in EXTRA} == EXTRA, (prefix, {k: state[k] for k in EXTRA})
        dist.barrier()
        return prefixes
    finally:
        dist.destroy_process_group()


def shared_index_job(init_file: str, rank: int, world_size: int, prefix: str, endpoint: str) -> str:
    """Saves the sharded state (straight to the S3 server), then loads it through `endpoint`
    (a counting proxy) with a reader whose process group shares the index; checks every value."""
    mesh = _join(init_file, rank, world_size)
    try:
        dcp.save(sharded_state(mesh), storage_writer=rt.StorageWriter(prefix))
        dist.barrier()
        state = sharded_state(mesh, zeros=True)
        dcp.load(state, storage_reader=rt.StorageReader(prefix, storage_options={"endpoint_url": endpoint},
                                                        process_group=dist.group.WORLD))
        full = full_state()
        for key in ("weight", "emb", "cols"):
            assert torch.equal(state["model"][key].full_tensor(), full[f"model.{key}"]), key
        for key in ("bias", "count", "mask"):
            assert torch.equal(state["model"][key], full[f"model.{key}"]), key
        assert {k: state[k] for k in EXTRA} == EXTRA
        # A missing checkpoint: rank 0's error, raised on every rank (no rank waits for another).
        try:
            dcp.load(sharded_state(mesh, zeros=True),
                     storage_reader=rt.StorageReader(prefix + "-missing", storage_options={"endpoint_url": endpoint},
                                                     process_group=dist.group.WORLD))
        except CheckpointException as exc:  # DCP's wrapping of every rank's error
            assert "not found" in str(exc), exc
        else:
            raise AssertionError("a missing checkpoint loaded")
        dist.barrier()
        return prefix
    finally:
        dist.destroy_process_group()


# --- jobs racing for one prefix (tests/test_plugin_torch_race.py) ------------------------------

RACE_ROWS, RACE_COLS = 3072, 1024  # int32: 6 MiB a rank of 2, more than a multipart part


def race_full_state(who: int) -> dict[str, Any]:
    """The full state_dict of racing job `who`: distinct values in every job."""
    weight = torch.arange(RACE_ROWS * RACE_COLS, dtype=torch.int32).reshape(RACE_ROWS, RACE_COLS) * 4 + who
    return {"weight": weight, "who": torch.tensor(who, dtype=torch.int64), "job": f"job{who}"}


def _failures(exc: BaseException) -> list[dict[str, Any]]:
    """What a failed dcp.save raised: the rank exceptions DCP wrapped in a CheckpointException
    (by the rank that raised each), or the exception itself."""
    from torch.distributed.checkpoint.api import CheckpointException

    import remoteckpt

    found = ([(r, e) for r, (e, _) in sorted(exc.failures.items())] if isinstance(exc, CheckpointException)
             else [(None, exc)])
    return [{"rank": r, "type": type(e).__name__, "message": str(e)[:2000],
             "remoteckpt": isinstance(e, remoteckpt.CheckpointError)} for r, e in found]


def race_rank(barrier: Any, init_file: str, rank: int, world_size: int, prefix: str, who: int, delay: float,
              storage_options: dict[str, Any] | None, result_path: str) -> None:
    """Rank `rank` of racing job `who` (its own process group, through `init_file`): once
    every process of the race is up and its group formed, `delay` seconds later, dcp.save of
    the job's state sharded by rows to `prefix`.  Writes {"who", "rank", "save_id" (of this
    rank's writer: rank 0's is the job's), "ok" | "failures" | "error"} to `result_path`."""
    record: dict[str, Any] = {"who": who, "rank": rank}
    try:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=60))
        try:
            mesh = init_device_mesh("cpu", (world_size,))
            full = race_full_state(who)
            state = {**full, "weight": distribute_tensor(full["weight"], mesh, [Shard(0)])}
            writer = rt.StorageWriter(prefix, storage_options=storage_options)
            barrier.wait(60)
            time.sleep(delay)
            try:
                dcp.save(state, storage_writer=writer)
                record["ok"] = True
            except BaseException as exc:  # noqa: BLE001 - DCP's CheckpointException is a BaseException
                record["failures"] = _failures(exc)
            record["save_id"] = writer.save_id
        finally:
            dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent: the race did not run
        record["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    with open(result_path, "w") as f:
        json.dump(record, f)
    os._exit(0)


def host_pairs_tier_job(init_file: str, rank: int, world_size: int, prefixes: list[str], tiers: str,
                        endpoint: str) -> dict[str, Any]:
    """Two ranks a host (rank r on TIERS/host-(r // 2)), S3 through `endpoint` with the access
    key ``rank<R>`` (a recording proxy tells the ranks apart by it): each prefix saved with
    `dcp.save` through per-host tiers, then waited for until durable and loaded back."""
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": f"rank{rank}"})
    import remoteckpt

    tier = remoteckpt.LocalTier(path=os.path.join(tiers, f"host-{rank // 2}"), per_host=True)
    mesh = _join(init_file, rank, world_size)
    try:
        for prefix in prefixes:
            dcp.save(sharded_state(mesh), storage_writer=rt.StorageWriter(prefix, local_tier=tier))
        for prefix in prefixes:
            assert remoteckpt.wait_durable(prefix, timeout=120) == prefix
        full = full_state()
        state = sharded_state(mesh, zeros=True)
        dcp.load(state, storage_reader=rt.StorageReader(prefixes[-1], local_tier=tier))
        got = state["model"]["weight"].full_tensor()
        assert torch.equal(got, full["model.weight"])
        dist.barrier()
        return {"files": sorted(os.listdir(tier.path))}
    finally:
        dist.destroy_process_group()


def per_host_tier_job(init_file: str, rank: int, world_size: int, prefixes: list[str], tiers: str) -> dict[str, Any]:
    """Rank r on a host of its own, whose local tier is TIERS/host-r: each prefix saved with
    `dcp.save` through per-host tiers (the second one incrementally, the third async), one
    after the other without waiting for their drains (each rank drains them in that order),
    then each waited for until durable on this rank; then each loaded, resharded the other way,
    from the nearest tier, and every value checked.  Returns the files of this host's tier."""
    import remoteckpt

    tier = remoteckpt.LocalTier(path=os.path.join(tiers, f"host-{rank}"), per_host=True, keep=5)
    mesh = _join(init_file, rank, world_size)
    try:
        for i, prefix in enumerate(prefixes):
            writer = rt.StorageWriter(prefix, local_tier=tier, incremental=i == 1)
            if i == 2:
                dcp.async_save(sharded_state(mesh), storage_writer=writer).result(timeout=120)
            else:
                dcp.save(sharded_state(mesh), storage_writer=writer)
        for prefix in prefixes:
            assert remoteckpt.wait_durable(prefix, timeout=120) == prefix
        full = full_state()
        for prefix in prefixes:
            state = sharded_state(mesh, zeros=True, cols="replicate")
            dcp.load(state, storage_reader=rt.StorageReader(prefix, local_tier=tier))
            for key in ("weight", "emb", "cols"):
                got = state["model"][key]
                got = got.full_tensor() if isinstance(got, DTensor) else got
                assert torch.equal(got, full[f"model.{key}"]), (prefix, key)
            for key in ("bias", "count", "mask"):
                assert torch.equal(state["model"][key], full[f"model.{key}"]), (prefix, key)
            assert {k: state[k] for k in EXTRA} == EXTRA
        dist.barrier()
        return {"files": sorted(os.listdir(tier.path))}
    finally:
        dist.destroy_process_group()
