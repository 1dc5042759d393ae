"""Incremental saves (`remoteckpt.engine.incremental`) on local disk and S3 (SeaweedFS): what is
copied, what is written, and that every checkpoint restores exactly, alone, with remoteckpt and
with TensorFlow."""

from __future__ import annotations

import asyncio
import io
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import remoteckpt
from remoteckpt import api
from remoteckpt.engine import loop
from remoteckpt.engine.budget import MemoryBudget, process_budget
from remoteckpt.format.bundle import decode_index, encode_index, index_filename
from remoteckpt.management.state import format_state
from remoteckpt.protocol.save import SaveReport
from remoteckpt.storage import Store, on_store

MiB = 2**20
TENSOR = 6 * MiB  # above S3's 5 MiB part minimum: an unchanged run of one tensor is copied there too


@pytest.fixture(params=["local", "s3"])
def directory(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "run")
    return request.getfixturevalue("s3_prefix")


def weights(seed: int, n: int = 10) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {f"layer{i}/w": rng.random(TENSOR // 4, dtype=np.float32) for i in range(n)}


def on(directory: str, body: Any) -> Any:
    return on_store(directory, body)


def save(tensors: dict[str, Any], prefix: str, incremental: bool | str = True, **kwargs: Any) -> SaveReport:
    report: SaveReport = loop.run(api.save_checkpoint(tensors, prefix, incremental=incremental, **kwargs))
    return report


def mark_latest(directory: str, name: str) -> None:
    async def body(store: Store) -> None:
        await store.put("checkpoint", format_state(name, [name]))

    on(directory, body)


def assert_restores(prefix: str, tensors: dict[str, Any]) -> None:
    restored = remoteckpt.load(prefix)
    assert sorted(restored) == sorted(tensors)
    for name, value in tensors.items():
        expected = np.asarray(value.array if isinstance(value, remoteckpt.Slice) else value)
        if isinstance(value, list):
            continue  # partitioned: compared by the caller
        assert restored[name].tobytes() == expected.tobytes() and restored[name].dtype == expected.dtype, name


def tf_restores(prefix: str, tensors: dict[str, np.ndarray]) -> None:
    tf = pytest.importorskip("tensorflow")
    reader = tf.train.load_checkpoint(prefix)
    for name, value in tensors.items():
        assert reader.get_tensor(name).tobytes() == np.asarray(value).tobytes(), name


def test_unchanged_tensors_are_copied_and_each_checkpoint_stands_alone(directory: str) -> None:
    """Two of ten tensors change: the other eight are copied by the store (in three runs),
    the two written; the new checkpoint restores exactly, also once the base is deleted, and
    TensorFlow reads both (the digest field is unknown to it)."""
    first = weights(0)
    report = save(first, f"{directory}/model-1")
    assert report.bytes_copied == 0 and report.bytes_written == 10 * TENSOR  # no base yet
    mark_latest(directory, "model-1")
    second = dict(first, **{"layer3/w": first["layer3/w"] + 1, "layer7/w": first["layer7/w"] * 2})
    report = save(second, f"{directory}/model-2")
    assert report.bytes_copied == 8 * TENSOR and report.bytes_written == 10 * TENSOR
    assert_restores(f"{directory}/model-2", second)

    async def digests(store: Store) -> dict[bytes, bytes]:
        data = await store.get(index_filename("model-2"))
        index = decode_index(lambda o, k: data[o : o + k], len(data))
        return {k: e.content_blake3 for k, e in index.entries.items() if k}

    assert all(len(d) == 16 for d in on(directory, digests).values())
    if not directory.startswith("s3://"):
        tf_restores(f"{directory}/model-1", first)
        tf_restores(f"{directory}/model-2", second)
    remoteckpt.Saver(max_to_keep=1).adopt(directory)  # nothing deleted by adopting
    on(directory, lambda store: _delete_checkpoint(store, "model-1"))
    assert_restores(f"{directory}/model-2", second)
    if not directory.startswith("s3://"):
        tf_restores(f"{directory}/model-2", second)


async def _delete_checkpoint(store: Store, name: str) -> None:
    for key in await store.list(name + "."):
        await store.delete(key)


def test_saver_and_manager_copy_from_their_latest_and_retention_keeps_the_rest_whole(directory: str) -> None:
    """A CheckpointManager with `incremental` and max_to_keep=1: every save copies what did not
    change from the one before, retention deletes that one after the commit, and the survivor
    restores exactly; each step changes one tensor."""
    manager = remoteckpt.CheckpointManager(directory, max_to_keep=1, incremental=True)
    tensors = weights(1, n=4)
    for step in range(3):
        tensors = dict(tensors, **{f"layer{step}/w": tensors[f"layer{step}/w"] + step + 1})
        manager.save(tensors, step, force=True)
    assert manager.checkpoints == [f"{directory}/ckpt-2"]
    assert_restores(f"{directory}/ckpt-2", tensors)
    assert on(directory, lambda store: store.list("ckpt-1.")) == []


def test_a_digest_or_crc_mismatch_is_written_never_copied(tmp_path: Path) -> None:
    """Unchanged means same dtype, shape, CRC32C and digest: a base whose index claims this
    save's CRC but another digest (or this digest but another CRC) is not copied from."""
    directory = str(tmp_path)
    first = weights(2, n=3)
    save(first, f"{directory}/m-1")
    second = dict(first, **{"layer0/w": first["layer0/w"] + 1, "layer1/w": first["layer1/w"] + 1})
    save(second, f"{directory}/probe")  # its index holds the changed tensors' CRCs and digests

    async def forge(store: Store) -> None:
        def index_of(data: bytes) -> Any:
            return decode_index(lambda o, k: data[o : o + k], len(data))

        probe = index_of(await store.get(index_filename("probe")))
        base = index_of(await store.get(index_filename("m-1")))
        base.entries[b"layer0/w"].crc32c = probe.entries[b"layer0/w"].crc32c  # CRC agrees, digest not
        base.entries[b"layer1/w"].content_blake3 = probe.entries[b"layer1/w"].content_blake3  # and the reverse
        out = io.BytesIO()
        encode_index(base.header, base.entries, out)
        await store.put(index_filename("m-1"), out.getvalue())

    on(directory, forge)
    report = save(second, f"{directory}/m-2", incremental="m-1")
    assert report.bytes_copied == TENSOR  # layer2 only
    assert_restores(f"{directory}/m-2", second)


def test_a_base_with_sha256_digests_is_written_whole_once(tmp_path: Path) -> None:
    """Entries of earlier versions carry a SHA-256 digest (field 1002) and no BLAKE3 one: they
    have no digest to compare, so nothing is copied from such a base, and the new checkpoint
    has the digests the next save compares."""
    directory = str(tmp_path)
    first = weights(2, n=3)
    save(first, f"{directory}/m-1")

    async def older(store: Store) -> None:
        data = await store.get(index_filename("m-1"))
        base = decode_index(lambda o, k: data[o : o + k], len(data))
        for entry in base.entries.values():
            if entry.content_blake3:
                entry.content_sha256, entry.content_blake3 = bytes(range(16)), b""
        out = io.BytesIO()
        encode_index(base.header, base.entries, out)
        await store.put(index_filename("m-1"), out.getvalue())

    on(directory, older)
    report = save(first, f"{directory}/m-2", incremental="m-1")
    assert report.bytes_copied == 0
    assert save(first, f"{directory}/m-3", incremental="m-2").bytes_copied == 3 * TENSOR
    assert_restores(f"{directory}/m-3", first)


def test_what_cannot_be_copied_is_written(directory: str) -> None:
    """New names, other shapes or dtypes, strings, small tensors (on S3, runs under a part),
    and boxes of partitioned tensors: everything restores exactly; unchanged boxes are copied."""
    rng = np.random.default_rng(3)
    big = rng.random((4, TENSOR // 16), dtype=np.float32)
    first = {
        "emb": [remoteckpt.Slice(big[:2], full_shape=big.shape, offset=(0, 0)),
                remoteckpt.Slice(big[2:], full_shape=big.shape, offset=(2, 0))],
        "shape": np.zeros((TENSOR // 8,), np.float32),
        "dtype": np.zeros((TENSOR // 4,), np.float32),
        "small": np.arange(1000, dtype=np.int64),
        "words": np.array([b"a", "ünï".encode()], dtype=object),
        "step": np.int64(7),
    }
    save(first, f"{directory}/m-1")
    mark_latest(directory, "m-1")
    second = dict(first, shape=np.zeros((TENSOR // 4,), np.float32), dtype=np.zeros((TENSOR // 4,), np.int32),
                  new=np.ones(10, np.float32),
                  emb=[remoteckpt.Slice(big[:2], full_shape=big.shape, offset=(0, 0)),
                       remoteckpt.Slice(big[2:] + 1, full_shape=big.shape, offset=(2, 0))])
    report = save(second, f"{directory}/m-2")
    # Unchanged: emb's first box (TENSOR / 2 bytes), `small` and `step`; local disk copies
    # them all, S3 none (each a run shorter than the 5 MiB a part needs: written instead).
    assert report.bytes_copied == (0 if directory.startswith("s3://") else TENSOR // 2 + 8000 + 8)
    restored = remoteckpt.load(f"{directory}/m-2")
    assert restored["emb"].tobytes() == np.concatenate([big[:2], big[2:] + 1]).tobytes()
    for name in ("shape", "dtype", "small", "step", "new"):
        assert restored[name].tobytes() == np.asarray(second[name]).tobytes(), name
    assert list(restored["words"]) == [b"a", "ünï".encode()]


def test_a_base_that_lost_its_data_means_writing_everything(tmp_path: Path) -> None:
    """A base whose data file is gone (deleted between its index and the copy) fails no save:
    the save writes every tensor instead."""
    directory = str(tmp_path)
    first = weights(4, n=3)
    save(first, f"{directory}/m-1")
    os.remove(f"{directory}/m-1.data-00000-of-00001")
    report = save(first, f"{directory}/m-2", incremental="m-1")
    assert report.bytes_copied == 0
    assert_restores(f"{directory}/m-2", first)


def test_a_store_without_server_side_copies_writes_everything() -> None:
    """The generic fsspec store cannot copy inside the store: it writes, digests included, so
    a later save elsewhere could still compare."""
    directory = f"memory://incremental/{uuid.uuid4().hex}"
    first = weights(5, n=2)
    save(first, f"{directory}/m-1")
    report = save(first, f"{directory}/m-2", incremental="m-1")
    assert report.bytes_copied == 0
    assert_restores(f"{directory}/m-2", first)


def _rank_saves(directory: str, rank: int, world: int, save_id: str) -> tuple[int, int]:
    """Worker `rank` of `world`: its share of weights(6) at step 1, then step 2 with layer1
    changed, incremental; returns step 2's (bytes written, bytes copied)."""
    tensors = {k: v for i, (k, v) in enumerate(sorted(weights(6, n=4).items())) if i % world == rank}
    remoteckpt.save(tensors, f"{directory}/m-1", rank=rank, world_size=world, save_id=save_id + "-1",
                    incremental=True)
    if rank == 0:
        mark_latest(directory, "m-1")
    while remoteckpt.latest_checkpoint(directory) is None:  # rank 0 records step 1 after its commit
        time.sleep(0.05)
    changed = {k: (v + 1 if k == "layer1/w" else v) for k, v in tensors.items()}
    report = save(changed, f"{directory}/m-2", rank=rank, world_size=world, save_id=save_id + "-2")
    return report.bytes_written, report.bytes_copied


@pytest.mark.multiprocess
def test_each_worker_copies_its_own_tensors_from_the_base(directory: str) -> None:
    """Two worker processes: each copies its unchanged tensors from the base's data file that
    holds them (the base's file of the same rank here), and the merged checkpoint restores."""
    from spawning import run_each

    save_id = uuid.uuid4().hex
    results = run_each(_rank_saves, [(directory, r, 2, save_id) for r in range(2)], timeout=240)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    assert results == [(2 * TENSOR, 2 * TENSOR), (2 * TENSOR, TENSOR)]  # rank 1 holds layer1 and layer3
    expected = {k: (v + 1 if k == "layer1/w" else v) for k, v in weights(6, n=4).items()}
    assert_restores(f"{directory}/m-2", expected)


@pytest.mark.tensorflow
def test_the_tensorflow_plugin_saves_incrementally(tmp_path: Path) -> None:
    """`remoteckpt.tensorflow.save(..., incremental=True)`: the second save copies the unchanged
    kernel from the first (the directory's state file names it), and TensorFlow restores both."""
    tf = pytest.importorskip("tensorflow")
    import remoteckpt.tensorflow as rtf

    kernel = tf.Variable(np.random.default_rng(7).random((TENSOR // 4,), dtype=np.float32))
    bias = tf.Variable(np.zeros(4, np.float32))
    ckpt = tf.train.Checkpoint(kernel=kernel, bias=bias)
    rtf.save(ckpt, tmp_path / "ckpt-1", incremental=True)
    mark_latest(str(tmp_path), "ckpt-1")
    bias.assign(np.ones(4, np.float32))
    rtf.save(ckpt, tmp_path / "ckpt-2", incremental=True)
    for prefix, expected in (("ckpt-1", 0.0), ("ckpt-2", 1.0)):
        restored = tf.train.Checkpoint(kernel=tf.Variable(np.zeros(TENSOR // 4, np.float32)),
                                       bias=tf.Variable(np.full(4, 5.0, np.float32)))
        restored.read(str(tmp_path / prefix)).assert_existing_objects_matched()
        assert restored.kernel.numpy().tobytes() == kernel.numpy().tobytes()
        assert (restored.bias.numpy() == expected).all()
    data = (tmp_path / "ckpt-2.index").read_bytes()
    index = decode_index(lambda o, k: data[o : o + k], len(data))
    assert all(len(e.content_blake3) == 16 for k, e in index.entries.items() if k)


@pytest.mark.torch
def test_the_dcp_plugin_saves_incrementally(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`remoteckpt.torch.StorageWriter(..., incremental=True)`: the second DCP save copies its
    unchanged tensor from the first (the one the directory's state file names), and both load."""
    torch = pytest.importorskip("torch")
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    import remoteckpt.torch as rt

    weight = torch.from_numpy(np.random.default_rng(8).random(TENSOR // 4, dtype=np.float32))
    dcp.save({"w": weight, "b": torch.zeros(4)}, storage_writer=rt.StorageWriter(tmp_path / "step-1",
                                                                               incremental=True), no_dist=True)
    mark_latest(str(tmp_path), "step-1")
    with caplog.at_level("INFO", logger="remoteckpt"):
        dcp.save({"w": weight, "b": torch.ones(4)}, storage_writer=rt.StorageWriter(tmp_path / "step-2",
                                                                                  incremental=True), no_dist=True)
    assert any(f"{TENSOR} of {TENSOR + 16} bytes copied" in r.getMessage() for r in caplog.records), caplog.text
    for step, bias in (("step-1", 0.0), ("step-2", 1.0)):
        state = {"w": torch.zeros(TENSOR // 4), "b": torch.full((4,), 5.0)}
        dcp.load(state, storage_reader=rt.StorageReader(tmp_path / step), no_dist=True)
        assert state["w"].numpy().tobytes() == weight.numpy().tobytes() and (state["b"] == bias).all()


@pytest.mark.parametrize("unchanged", [2, 1])
def test_copies_after_a_short_tail_begin_at_a_part_boundary(directory: str, unchanged: int) -> None:
    """A changed 1 MiB tensor first, unchanged ones after it: on S3 the copy can only begin
    once 5 MiB are pending, so the first 4 MiB of the unchanged run are written and the rest
    copied (with one unchanged tensor, the copied rest is a short last part); local disk copies
    it all.  Either way the checkpoint restores exactly."""
    rng = np.random.default_rng(9)
    first = {"head": rng.random(MiB // 4, dtype=np.float32),
             **{f"body{i}": rng.random(TENSOR // 4, dtype=np.float32) for i in range(unchanged)}}
    save(first, f"{directory}/m-1")
    second = dict(first, head=first["head"] + 1)
    report = save(second, f"{directory}/m-2", incremental="m-1")
    run = unchanged * TENSOR
    assert report.bytes_copied == (run - 4 * MiB if directory.startswith("s3://") else run)
    assert_restores(f"{directory}/m-2", second)


def test_arrays_converted_while_they_stream_are_compared_and_copied_too(directory: str) -> None:
    """A transposed array (its memory is not its payload) unchanged is copied; a big-endian one
    changed is written, converted a block at a time; both restore exactly."""
    rng = np.random.default_rng(10)
    transposed = rng.random((TENSOR // 4 // 512, 512), dtype=np.float32).T
    big_endian = rng.random(TENSOR // 4, dtype=np.float32).astype(">f4")
    first = {"t": transposed, "be": big_endian}
    save(first, f"{directory}/m-1")
    second = {"t": transposed, "be": (big_endian + 1).astype(">f4")}
    report = save(second, f"{directory}/m-2", incremental="m-1")
    assert report.bytes_copied == TENSOR
    restored = remoteckpt.load(f"{directory}/m-2")
    assert np.array_equal(restored["t"], transposed) and np.array_equal(restored["be"], second["be"])


@pytest.mark.jax
def test_the_jax_plugin_saves_incrementally(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`remoteckpt.jax.save(..., incremental=True)`: the unchanged array is copied from the
    checkpoint the directory's state file names; both checkpoints restore exactly."""
    jnp = pytest.importorskip("jax.numpy")
    import remoteckpt.jax as rjax

    kernel = jnp.asarray(np.random.default_rng(11).random(TENSOR // 4, dtype=np.float32))
    rjax.save({"kernel": kernel, "bias": jnp.zeros(4)}, tmp_path / "ckpt-1", rank=0, world_size=1,
              incremental=True)
    mark_latest(str(tmp_path), "ckpt-1")
    with caplog.at_level("INFO", logger="remoteckpt"):
        rjax.save({"kernel": kernel, "bias": jnp.ones(4)}, tmp_path / "ckpt-2", rank=0, world_size=1,
                  incremental=True)
    assert any(f"{TENSOR} of {TENSOR + 16} bytes copied" in r.getMessage() for r in caplog.records), caplog.text
    for step, bias in (("ckpt-1", 0.0), ("ckpt-2", 1.0)):
        restored = remoteckpt.load(str(tmp_path / step))
        kernels = [a for a in restored.values() if a.size == TENSOR // 4]
        biases = [a for a in restored.values() if a.size == 4]
        assert len(kernels) == 1 and kernels[0].tobytes() == np.asarray(kernel).tobytes()
        assert len(biases) == 1 and (biases[0] == bias).all()


def test_a_base_damaged_since_its_save_shows_as_a_checksum_mismatch(tmp_path: Path) -> None:
    """Bytes rotted in the base's data file after its commit are copied as they are; the new
    checkpoint's CRC32C, which is of this save's bytes, makes every read of them fail loudly."""
    from remoteckpt.errors import CorruptCheckpointError

    directory = str(tmp_path)
    first = weights(12, n=2)
    save(first, f"{directory}/m-1")
    with open(f"{directory}/m-1.data-00000-of-00001", "r+b") as f:  # a flipped byte in layer0/w
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    report = save(first, f"{directory}/m-2", incremental="m-1")
    assert report.bytes_copied == 2 * TENSOR
    with pytest.raises(CorruptCheckpointError, match="layer0/w"):
        remoteckpt.load(f"{directory}/m-2")
    assert remoteckpt.load(f"{directory}/m-2", ["layer1/w"])["layer1/w"].tobytes() == first["layer1/w"].tobytes()


def test_without_a_state_file_the_base_is_the_newest_committed_checkpoint(directory: str) -> None:
    """Plain `save` calls keep no state file: the base is the directory's checkpoint whose
    index was committed last (not the one being written, not one in a subdirectory)."""
    old, new = weights(1), weights(2)
    save(old, f"{directory}/model.ckpt-1")  # incremental saves keep the digests a base needs
    time.sleep(1.1)  # S3's modification times are whole seconds
    save(new, f"{directory}/model.ckpt-2")
    time.sleep(1.1)
    save(weights(3), f"{directory}/sub/model.ckpt-9")
    mixed = {**new, "layer0/w": old["layer0/w"] + 1}
    report = save(mixed, f"{directory}/model.ckpt-3")
    assert report.bytes_copied == 9 * TENSOR  # from model.ckpt-2: every tensor but layer0
    assert_restores(f"{directory}/model.ckpt-3", mixed)


def _budget(options: remoteckpt.IOOptions, *, reset: bool = False) -> MemoryBudget:
    """The process's budget `options` draw on; with `reset`, its high-water mark set back to
    what is held now (nothing, between saves)."""
    async def get() -> MemoryBudget:
        budget = process_budget(options.memory_budget)
        if reset:
            budget.peak = budget.used
        return budget

    return loop.run(get())


def bounded(tensors: dict[str, Any], prefix: str, base: str, options: remoteckpt.IOOptions) -> SaveReport:
    """An incremental save that fails, instead of hanging, if it waits on budget nobody gives back."""
    report: SaveReport = loop.run(asyncio.wait_for(
        api.save_checkpoint(tensors, prefix, incremental=base, options=options), 60))
    return report


def test_converted_arrays_are_hashed_and_written_within_the_memory_budget(directory: str) -> None:
    """A transposed and a big-endian array of 6 MiB each, saved incrementally under a budget of
    about 1 MiB: deciding that they are unchanged converts them block by block to hash them,
    and every block is drawn from the budget (its high-water mark is above zero though nothing
    is written, and never above the budget); changed, they are hashed and written again
    within it.  Every checkpoint restores exactly."""
    options = remoteckpt.IOOptions(memory_budget=MiB + 4096 * 3, crc_chunk=64 * 1024)  # a budget of its own
    rng = np.random.default_rng(13)
    transposed = rng.random((TENSOR // 4 // 768, 768), dtype=np.float32).T
    big_endian = rng.random(TENSOR // 4, dtype=np.float32).astype(">f4")
    first = {"t": transposed, "be": big_endian}
    assert not transposed.flags.c_contiguous and big_endian.dtype.byteorder == ">"
    bounded(first, f"{directory}/m-1", True, options)
    budget = _budget(options, reset=True)

    report = bounded(first, f"{directory}/m-2", "m-1", options)  # nothing changed: hashed, copied
    assert report.bytes_copied == 2 * TENSOR
    assert budget.used == 0 and 0 < budget.peak <= options.memory_budget, budget.peak
    restored = remoteckpt.load(f"{directory}/m-2")
    assert np.array_equal(restored["t"], transposed) and np.array_equal(restored["be"], big_endian)

    budget = _budget(options, reset=True)
    second = {"t": transposed + 1, "be": (big_endian * 2).astype(">f4")}
    assert not second["t"].flags.c_contiguous  # laid out as `transposed`
    report = bounded(second, f"{directory}/m-3", "m-2", options)  # both changed: hashed, then written
    assert report.bytes_copied == 0
    assert budget.used == 0 and 0 < budget.peak <= options.memory_budget, budget.peak
    restored = remoteckpt.load(f"{directory}/m-3")
    assert np.array_equal(restored["t"], second["t"]) and np.array_equal(restored["be"], second["be"])
    assert restored["be"].tobytes() == second["be"].astype("<f4").tobytes()


def test_a_crc_chunk_larger_than_the_budget_is_hashed_alone_not_deadlocked(tmp_path: Path) -> None:
    """CRC chunks of 2 MiB under a 1 MiB budget: each converted block (one chunk) is larger
    than the whole budget, so it is admitted alone, once nothing else is held; the hashing and
    the writing take turns and the save completes and restores exactly."""
    options = remoteckpt.IOOptions(memory_budget=MiB + 4096 * 5, crc_chunk=2 * MiB)
    rng = np.random.default_rng(14)
    transposed = rng.random((TENSOR // 4 // 1024, 1024), dtype=np.float32).T
    big_endian = rng.random(TENSOR // 4, dtype=np.float32).astype(">f4")
    first = {"t": transposed, "be": big_endian}
    bounded(first, f"{tmp_path}/m-1", True, options)
    budget = _budget(options, reset=True)
    second = {"t": transposed, "be": (big_endian + 1).astype(">f4")}
    report = bounded(second, f"{tmp_path}/m-2", "m-1", options)
    assert report.bytes_copied == TENSOR
    assert budget.used == 0 and budget.peak == 2 * MiB  # one chunk at a time, never two
    restored = remoteckpt.load(f"{tmp_path}/m-2")
    assert np.array_equal(restored["t"], transposed) and np.array_equal(restored["be"], second["be"])


def test_a_base_replaced_after_its_index_was_read_is_refused_not_copied_from(directory: str) -> None:
    """The base's data file versions are pinned only while the index read still stands: a base
    overwritten (same names, same sizes, other values) between the index read and the first
    copy is refused, and the new checkpoint gets no byte of the replacement."""
    from remoteckpt.engine.incremental import open_base
    from remoteckpt.errors import CheckpointChangedError

    first = weights(1, n=2)
    save(first, f"{directory}/base")

    async def opened(store: Store) -> Any:
        return await open_base(store, "base")

    async def pin(store: Store, base: Any) -> str:
        base.store = store
        result: str = await base.etag(0)
        return result

    base = on(directory, opened)
    assert base is not None
    save(weights(2, n=2), f"{directory}/base", overwrite=True)  # retires the index, then replaces the data
    with pytest.raises(CheckpointChangedError, match="replaced or deleted"):
        on(directory, lambda store: pin(store, base))
    fresh = on(directory, opened)
    assert fresh is not None
    assert on(directory, lambda store: pin(store, fresh))  # the base as it stands now serves


def test_copy_with_a_base_sends_and_checks_what_it_does_not_copy(s3_prefix: str, tmp_path: Path) -> None:
    """`remoteckpt cp`'s copy with a base (what a local tier's drain does): tensors unchanged
    since the base are copied by S3 from it, except the whole tensors sent first to reach a part
    boundary, which are checked like every sent byte.  A damaged byte in a sent tensor is
    refused; one in a tensor the store copies never travels (the base's bytes are copied)."""
    from remoteckpt.tools.copy import copy_async

    rng = np.random.default_rng(3)
    unchanged = {f"b{i}": rng.random(TENSOR // 4, dtype=np.float32) for i in range(4)}  # 6 MiB each
    first = {"a": np.zeros(MiB // 4, np.float32), **unchanged}
    second = {"a": np.ones(MiB // 4, np.float32), **unchanged}
    save(first, f"{s3_prefix}/m-1")  # the base, with digests
    source = str(tmp_path / "m-2")
    save(second, source)
    index = decode_index_of(source)
    data = tmp_path / "m-2.data-00000-of-00001"

    def flip(name: str) -> bytes:
        raw = bytearray(data.read_bytes())
        raw[index.entries[name.encode()].offset + 100] ^= 1
        data.write_bytes(bytes(raw))
        return bytes(raw)

    pristine = data.read_bytes()
    flip("b0")  # sent: `a` is 1 MiB, so b0 goes out whole before a copy may begin
    with pytest.raises(remoteckpt.CorruptCheckpointError, match="checksum mismatch"):
        loop.run(copy_async(source, f"{s3_prefix}/m-2", base=True))
    data.write_bytes(pristine)
    flip("b2")  # inside the run the store copies
    report = loop.run(copy_async(source, f"{s3_prefix}/m-2", base=True))
    assert report.copied == 3 * TENSOR
    assert_restores(f"{s3_prefix}/m-2", second)


def decode_index_of(prefix: str) -> Any:
    with open(index_filename(prefix), "rb") as f:
        raw = f.read()
    return decode_index(lambda o, n: raw[o : o + n], len(raw))


def test_copy_with_a_base_that_changes_sends_the_file_whole(s3_prefix: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A base replaced or deleted while a copy pins it makes that data file be sent whole."""
    from remoteckpt.engine.incremental import BaseCheckpoint
    from remoteckpt.errors import CheckpointChangedError
    from remoteckpt.tools.copy import copy_async

    tensors = weights(4, n=3)
    save(tensors, f"{s3_prefix}/m-1")
    save(tensors, str(tmp_path / "m-2"))

    async def replaced(self: BaseCheckpoint, shard: int) -> str:
        raise CheckpointChangedError("the base checkpoint was replaced or deleted after its index was read")

    monkeypatch.setattr(BaseCheckpoint, "etag", replaced)
    report = loop.run(copy_async(str(tmp_path / "m-2"), f"{s3_prefix}/m-2", base=True))
    assert report.copied == 0
    assert_restores(f"{s3_prefix}/m-2", tensors)


def test_a_local_tier_lays_unchanged_tensors_last_so_its_drain_copies_them_all(
        s3_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Changes interleaved with unchanged tensors: the tier's incremental save lays the changed
    ones first and the unchanged after them, so its drain sends the changed bytes (12 MiB, past
    S3's 5 MiB part minimum) and has every unchanged tensor copied by the store; laid out in
    the save's order, each changed tensor would drag a neighbour along to reach a part
    boundary."""
    import logging

    rng = np.random.default_rng(5)
    step0 = {f"t{i}": rng.random(TENSOR // 4, dtype=np.float32) for i in range(6)}
    step1 = {k: v + 1 if k in ("t0", "t3") else v for k, v in step0.items()}
    tier = remoteckpt.LocalTier(path=str(tmp_path / "tier"))
    remoteckpt.save(step0, f"{s3_prefix}/m-0", local_tier=tier, incremental=True)
    remoteckpt.wait_durable(f"{s3_prefix}/m-0")
    with caplog.at_level(logging.INFO, logger="remoteckpt"):
        remoteckpt.save(step1, f"{s3_prefix}/m-1", local_tier=tier, incremental=True)
        remoteckpt.wait_durable(f"{s3_prefix}/m-1")
    index = decode_index_of(str(tmp_path / "tier" / "m-1"))
    order = sorted(step1, key=lambda k: index.entries[k.encode()].offset)
    assert order[:2] == ["t0", "t3"], order
    drained = [r.getMessage() for r in caplog.records if r.getMessage().startswith("drained ")]
    assert drained and f"({4 * TENSOR} of them copied by the remote store)" in drained[-1], drained
    assert_restores(f"{s3_prefix}/m-1", step1)
