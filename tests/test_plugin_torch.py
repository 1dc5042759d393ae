"""remoteckpt.torch: PyTorch Distributed Checkpoint (DCP) storage writing TensorFlow bundles.

Real gloo process groups in spawned processes (4 ranks save, 2 ranks load: resharding), on
local disk and SeaweedFS S3; dcp.async_save; TensorFlow and CheckpointReader read the result;
a partial load moves only the requested tensor's bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")

from spawning import run_ranks  # noqa: E402
from torch.distributed.checkpoint.api import CheckpointException  # noqa: E402

import remoteckpt  # noqa: E402
import remoteckpt.torch as rt  # noqa: E402
from remoteckpt.plugins.torch_dcp import BYTES_PREFIX, METADATA_TENSOR  # noqa: E402
from remoteckpt.plugins.torch_metadata import decode_metadata, encode_metadata  # noqa: E402

MiB = 2**20

pytestmark = [pytest.mark.torch, pytest.mark.multiprocess, pytest.mark.filterwarnings("ignore::UserWarning")]


def _tf() -> Any:
    return pytest.importorskip("tensorflow")


# --- many processes --------------------------------------------------------------------------

@pytest.mark.tensorflow
def test_sharded_save_4_ranks_load_2_ranks_local_and_s3(tmp_path: Path, s3_prefix: str) -> None:
    import torch_workers as w

    local, s3 = f"{tmp_path}/run/step-100", f"{s3_prefix}/run/step-100"
    async_local, async_s3 = f"{tmp_path}/run/step-101", f"{s3_prefix}/run/step-101"
    # Each loading rank reads its half of `weight` (2 of the 4 stored 512 KiB slices, 1 MiB)
    # plus the small tensors.
    half = w.ROWS * w.COLS * 4 // 2
    results = run_ranks(w.save_then_load_job, 4, tmp_path, [local, s3], [async_local, async_s3], 4, 2,
                   (half, half + 64 * 1024))
    # 4 ranks saved (dcp.save, then dcp.async_save); then 2 of them, a new world of 2, loaded
    # what 4 saved (resharding: each reads only its new shards' boxes) and checked every value.
    assert results == [[local, s3, async_local, async_s3]] * 2 + [[], []]

    full = w.full_state()
    for prefix in (local, s3, async_local, async_s3):
        reader = remoteckpt.CheckpointReader(prefix)
        # 4 ranks' data files plus the coordinator's metadata file, one index: nothing else.
        assert reader.index.num_shards == 5
        shapes = reader.get_variable_to_shape_map()
        assert {n: s for n, s in shapes.items() if not n.startswith("_DCP")} == {
            k: list(v.shape) for k, v in full.items()}
        for name, value in full.items():
            got = reader.get_tensor(name)
            expected = value.view(torch.int16).numpy().view(got.dtype) if value.dtype == torch.bfloat16 else value.numpy()
            np.testing.assert_array_equal(got, expected)
        # Row shards of `weight` are TF slices: any box reads back (here across two shards).
        np.testing.assert_array_equal(reader.get_slice("model.weight", (slice(3, 9), slice(1, 2))),
                                      full["model.weight"].numpy()[3:9, 1:2])
        assert len(reader.index.entries[b"model.weight"].slices) == 4
        assert len(reader.index.entries[b"model.cols"].slices) == 4
        metadata = json.loads(reader.get_tensor(METADATA_TENSOR).item())
        assert metadata["state_dict_metadata"]["model.weight"]["chunks"][1] == {
            "offsets": [w.ROWS // 4, 0], "sizes": [w.ROWS // 4, w.COLS]}
        assert metadata["state_dict_metadata"]["step"] == {"type": "bytes"}
        assert reader.has_tensor(BYTES_PREFIX + "step")
        reader.close()
    local_files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert local_files == sorted(["step-100.index", "step-101.index"]
                                 + [f"step-10{i}.data-{r:05d}-of-00005" for i in (0, 1) for r in range(5)])

    # TensorFlow reads what DCP wrote (the local copies; the S3 one holds the same bytes).
    tf = _tf()
    for prefix in (local, async_local):
        tf_reader = tf.train.load_checkpoint(prefix)
        np.testing.assert_array_equal(tf_reader.get_tensor("model.weight"), full["model.weight"].numpy())
        np.testing.assert_array_equal(tf_reader.get_tensor("model.cols"), full["model.cols"].numpy())
        assert tf_reader.get_tensor("model.count") == 12345
        assert tf_reader.get_variable_to_dtype_map()["model.emb"] == tf.bfloat16


def test_sharded_save_2_ranks_load_4_ranks(tmp_path: Path, s3_prefix: str) -> None:
    """The other direction: each of 4 loading ranks needs half of one stored slice."""
    import torch_workers as w

    local, s3 = f"{tmp_path}/run/step-200", f"{s3_prefix}/run/step-200"
    quarter, stored = w.ROWS * w.COLS * 4 // 4, w.ROWS * w.COLS * 4 // 2
    # A box inside a stored slice is read in whole checksum chunks (1 MiB, the stored slice
    # here): what the CRCs cover, so every byte delivered is verified.
    chunk = remoteckpt.IOOptions().crc_chunk
    results = run_ranks(w.save_then_load_job, 4, tmp_path, [local, s3], [f"{s3_prefix}/run/step-201"], 2, 4,
                   (quarter, min(stored, -(-quarter // chunk) * chunk) + 64 * 1024))
    assert results == [[local, s3, f"{s3_prefix}/run/step-201"]] * 4
    for prefix in (local, s3):
        reader = remoteckpt.CheckpointReader(prefix)
        assert reader.index.num_shards == 3
        assert len(reader.index.entries[b"model.weight"].slices) == 2
        reader.close()


def test_one_rank_reads_the_index_for_its_process_group(tmp_path: Path, s3_server: Any, s3_prefix: str) -> None:
    """StorageReader(process_group=...): 3 ranks load, the index is fetched once for all of
    them (rank 0 broadcasts it) and the data files are listed by none; each rank still reads
    only its boxes."""
    import torch_workers as w
    from faultproxy import FaultProxy

    prefix = f"{s3_prefix}/run/step-300"
    with FaultProxy(s3_server.endpoint_url) as proxy:
        results = run_ranks(w.shared_index_job, 3, tmp_path, prefix, proxy.endpoint_url)
        log = list(proxy.log)
    assert results == [prefix] * 3
    index_gets = [t for m, t, _ in log if m == "GET" and t.split("?")[0].endswith("/run/step-300.index")]
    listings = [t for m, t, _ in log if m == "GET" and "list-type=2" in t and "step-300.data-" in unquote(t)]
    assert len(index_gets) == 1 and not listings, (index_gets, listings)
    assert not [t for m, t, _ in log if m == "HEAD" and "step-300-missing" not in t]
    # The missing checkpoint: its index asked for once (404), by rank 0 alone, and the
    # directory of that name looked into once.
    assert len([t for m, t, _ in log if m == "GET" and "step-300-missing.index" in t]) == 1
    assert len([t for m, t, _ in log if "step-300-missing/ckpt.index" in t]) == 1


# --- one process (no process group) ---------------------------------------------------------

def test_loading_one_of_16_tensors_moves_only_its_bytes(s3_prefix: str) -> None:
    state = {f"t{i:02d}": torch.full((256, 1024), float(i)) for i in range(16)}  # 1 MiB each
    prefix = f"{s3_prefix}/many"
    dcp.save(state, storage_writer=rt.StorageWriter(prefix), no_dist=True)

    from torch_workers import count_reads  # counts like tests/test_engine.py's CountingReads

    storage = rt.StorageReader(prefix)
    counted = count_reads(storage.reader)
    target = {"t07": torch.zeros(256, 1024)}
    dcp.load(target, storage_reader=storage, no_dist=True)
    assert torch.equal(target["t07"], state["t07"])
    metadata_bytes = storage.reader.index.entries[METADATA_TENSOR.encode()].size
    assert counted["bytes"] == 1 * MiB + metadata_bytes  # the tensor and DCP's metadata, nothing else
    assert metadata_bytes < 16 * 1024

    # On the wire, everything a load costs (the index, listing-free opening, response heads):
    # about that one tensor plus the index.
    from faultproxy import FaultProxy

    index_bytes = len(remoteckpt.storage.on_store(s3_prefix, lambda store: store.get("many.index")))
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    with FaultProxy(endpoint, seed=0) as proxy:
        storage = rt.StorageReader(prefix, storage_options={"endpoint_url": proxy.endpoint_url})
        target = {"t07": torch.zeros(256, 1024)}
        dcp.load(target, storage_reader=storage, no_dist=True)
        storage.close()
        wire = proxy.counters["response-bytes"]
    assert torch.equal(target["t07"], state["t07"])
    assert 1 * MiB + index_bytes <= wire < 1 * MiB + index_bytes + metadata_bytes + 32 * 1024, (wire, index_bytes)


def test_dtypes_scalars_objects_and_copied_targets(tmp_path: Path) -> None:
    prefix = tmp_path / "dtypes"
    state: dict[str, Any] = {
        name: (torch.arange(12) % 7).to(dtype).reshape(3, 4)
        for name, dtype in [("f32", torch.float32), ("f64", torch.float64), ("f16", torch.float16),
                            ("bf16", torch.bfloat16), ("i8", torch.int8), ("i32", torch.int32),
                            ("u8", torch.uint8), ("b", torch.bool), ("c64", torch.complex64),
                            ("f8", torch.float8_e4m3fn)]
    }
    state["scalar"] = torch.tensor(2.5)
    state["empty"] = torch.zeros(0, 3)
    state["transposed"] = torch.arange(6.0).reshape(2, 3).t()  # not contiguous
    state["obj"] = {"nested": ["a", 1, None]}
    dcp.save(state, storage_writer=rt.StorageWriter(prefix), no_dist=True)

    reader = remoteckpt.CheckpointReader(prefix)
    assert reader.get_tensor("bf16").dtype.name == "bfloat16"
    np.testing.assert_array_equal(reader.get_tensor("transposed"), state["transposed"].numpy())
    assert reader.get_tensor("scalar") == 2.5

    target = {k: torch.zeros_like(v) for k, v in state.items() if isinstance(v, torch.Tensor)}
    target["obj"] = {"nested": None}
    dcp.load(target, storage_reader=rt.StorageReader(prefix), no_dist=True)
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            assert target[name].dtype == value.dtype
            assert torch.equal(target[name].view(torch.uint8) if value.dtype == torch.float8_e4m3fn else target[name],
                               value.view(torch.uint8) if value.dtype == torch.float8_e4m3fn else value), name
    assert target["obj"] == {"nested": ["a", 1, None]}

    # Targets that cannot be read into directly (another dtype; a non-contiguous view) are
    # filled through a copy, converting like Tensor.copy_.
    other = {"f32": torch.zeros(3, 4, dtype=torch.float64), "i32": torch.zeros(4, 3, dtype=torch.int32).t()}
    dcp.load(other, storage_reader=rt.StorageReader(prefix), no_dist=True)
    assert torch.equal(other["f32"], state["f32"].double()) and torch.equal(other["i32"], state["i32"])


def test_tensorflow_checkpoints_load_through_dcp(tmp_path: Path) -> None:
    """A bundle written without DCP (here remoteckpt.save; TF's are the same format) loads by
    name: DCP's metadata is derived from the index, stored slices become chunks."""
    full = np.arange(40, dtype=np.float32).reshape(10, 4)
    prefix = remoteckpt.save({
        "dense/kernel": full,
        "emb": [remoteckpt.Slice(full[:6], (10, 4), (0, 0)), remoteckpt.Slice(full[6:], (10, 4), (6, 0))],
        "words": np.array([b"a", b"b"], dtype=object),
        "step": np.int64(7),
    }, tmp_path / "tf")
    target = {"dense/kernel": torch.zeros(10, 4), "emb": torch.zeros(10, 4), "step": torch.tensor(0)}
    dcp.load(target, storage_reader=rt.StorageReader(prefix), no_dist=True)
    assert torch.equal(target["emb"], torch.from_numpy(full))
    assert torch.equal(target["dense/kernel"], torch.from_numpy(full))
    assert target["step"].item() == 7


def test_existing_checkpoint_is_refused_unless_overwrite(tmp_path: Path) -> None:
    prefix = str(tmp_path / "ck")
    dcp.save({"w": torch.ones(3)}, storage_writer=rt.StorageWriter(prefix), no_dist=True)
    with pytest.raises(CheckpointException, match="already exists"):
        dcp.save({"w": torch.zeros(3)}, storage_writer=rt.StorageWriter(prefix), no_dist=True)
    assert remoteckpt.CheckpointReader(prefix).get_tensor("w").tolist() == [1, 1, 1]
    dcp.save({"w": torch.zeros(3)}, storage_writer=rt.StorageWriter(prefix, overwrite=True), no_dist=True)
    assert remoteckpt.CheckpointReader(prefix).get_tensor("w").tolist() == [0, 0, 0]
    # checkpoint_id= works as the prefix too
    writer = rt.StorageWriter()
    dcp.save({"w": torch.ones(2)}, checkpoint_id=tmp_path / "by-id", storage_writer=writer, no_dist=True)
    target = {"w": torch.zeros(2)}
    dcp.load(target, checkpoint_id=tmp_path / "by-id", storage_reader=rt.StorageReader(), no_dist=True)
    assert target["w"].tolist() == [1, 1]


def test_failures_commit_nothing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointException, match="reserved"):
        dcp.save({METADATA_TENSOR: torch.ones(1)}, storage_writer=rt.StorageWriter(tmp_path / "r"), no_dist=True)
    assert not (tmp_path / "r.index").exists()
    with pytest.raises(CheckpointException, match="complex32"):  # no TF dtype: fails in write_data
        dcp.save({"ok": torch.ones(2), "bad": torch.ones(2, dtype=torch.complex32)},
                 storage_writer=rt.StorageWriter(tmp_path / "d"), no_dist=True)
    assert not (tmp_path / "d.index").exists()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_saves_claim_the_prefix_and_a_failed_one_does_not_block_the_next(where: str, tmp_path: Path,
                                                                         request: pytest.FixtureRequest) -> None:
    """Two DCP jobs racing for one prefix: the one that finds a live claim (renewed by another
    job) writes nothing.  A save that failed on a rank (so DCP never called `finish`) leaves
    its claim, which the writer's next save releases, and which a new DCP save of the prefix
    in this process takes over at once (DCP saves of one process run one after another: an
    unfinished earlier one has ended)."""
    from remoteckpt.engine import loop
    from remoteckpt.options import IOOptions
    from remoteckpt.protocol import claim as claims
    from remoteckpt.protocol.layout import SaveLayout
    from remoteckpt.storage import on_store, open_store

    directory = str(tmp_path) if where == "local" else request.getfixturevalue("s3_prefix")
    prefix = f"{directory}/ck"
    names = lambda: on_store(directory, lambda store: store.list("ck."))  # noqa: E731

    async def hold() -> Any:
        store = open_store(directory)
        return store, await claims.acquire(store, SaveLayout("ck", 0, 3, "other-job"), IOOptions(lease_timeout=0.4))

    store, other = loop.run(hold())
    try:
        with pytest.raises(CheckpointException, match="other-job"):
            dcp.save({"w": torch.ones(3)}, storage_writer=rt.StorageWriter(prefix), no_dist=True)
        assert names() == ["ck.claim"]
    finally:
        loop.run(claims.release(other))
        loop.run(store.close())

    bad = {"ok": torch.ones(2), "bad": torch.ones(2, dtype=torch.complex32)}  # fails in write_data
    writer = rt.StorageWriter(prefix)
    with pytest.raises(CheckpointException, match="complex32"):
        dcp.save(bad, storage_writer=writer, no_dist=True)
    assert names() == ["ck.claim"]
    first = on_store(directory, lambda store: store.get("ck.claim"))
    with pytest.raises(CheckpointException, match="complex32"):
        dcp.save(bad, storage_writer=writer, no_dist=True)  # its own leftover claim: released, retaken
    assert names() == ["ck.claim"] and on_store(directory, lambda store: store.get("ck.claim")) != first
    dcp.save({"w": torch.ones(3)}, storage_writer=rt.StorageWriter(prefix), no_dist=True)  # `writer` ended
    assert names() == ["ck.data-00000-of-00002", "ck.data-00001-of-00002", "ck.index"]
    assert remoteckpt.CheckpointReader(prefix).get_tensor("w").tolist() == [1, 1, 1]
    del writer


def test_directory_style_checkpoint_ids(tmp_path: Path) -> None:
    """`StorageWriter("ckpt/step-100/")`, as PyTorch users name checkpoints: the bundle goes
    inside the directory (``step-100/ckpt.*``), and the directory reads back."""
    dcp.save({"w": torch.arange(4.0)}, storage_writer=rt.StorageWriter(f"{tmp_path}/step-100/"), no_dist=True)
    assert sorted(p.name for p in (tmp_path / "step-100").iterdir()) == [
        "ckpt.data-00000-of-00002", "ckpt.data-00001-of-00002", "ckpt.index"]
    for checkpoint_id in (f"{tmp_path}/step-100/", f"{tmp_path}/step-100"):
        state = {"w": torch.zeros(4)}
        dcp.load(state, storage_reader=rt.StorageReader(checkpoint_id), no_dist=True)
        assert state["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_empty_state_dict(tmp_path: Path) -> None:
    """A rank with nothing to write still commits (its table is empty)."""
    dcp.save({}, storage_writer=rt.StorageWriter(tmp_path / "e"), no_dist=True)
    assert list(remoteckpt.CheckpointReader(tmp_path / "e").get_variable_to_shape_map()) == [METADATA_TENSOR]
    state: dict[str, Any] = {}
    dcp.load(state, storage_reader=rt.StorageReader(tmp_path / "e"), no_dist=True)
    assert state == {}


def test_metadata_round_trips_as_json() -> None:
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        StorageMeta,
        TensorProperties,
        TensorStorageMetadata,
    )

    metadata = Metadata(
        state_dict_metadata={
            "a.w": TensorStorageMetadata(TensorProperties(dtype=torch.bfloat16, requires_grad=True),
                                         torch.Size([4, 2]),
                                         [ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([2, 2])),
                                          ChunkStorageMetadata(torch.Size([2, 0]), torch.Size([2, 2]))]),
            "b": BytesStorageMetadata(),
        },
        planner_data={"a.w": ("a", "w"), "b": ("b",), "odd": {1: b"\x00", (2, "x"): [torch.Size([3])]},
                      "tagged": {"__tuple__": 1}},
        storage_data={MetadataIndex("a.w", [2, 0]): torch.float16},
        storage_meta=StorageMeta(checkpoint_id="s3://b/p", save_id="x", modules=["m"]),
        version="1.0.0",
    )
    blob = encode_metadata(metadata)
    json.loads(blob)  # plain JSON
    back = decode_metadata(blob)
    assert back == metadata
    assert back.state_dict_metadata["a.w"].properties.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="never pickles"):
        encode_metadata(Metadata({}, planner_data=object()))


def test_import_does_not_pull_in_torch() -> None:
    code = "import sys, remoteckpt, remoteckpt.torch; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
    assert rt.StorageWriter.__module__ == "remoteckpt.plugins.torch_dcp"

