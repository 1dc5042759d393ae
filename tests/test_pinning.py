"""A restore reads the index once and lists nothing: each data file's version is pinned by the
first answer that names it (`engine.versions`), later reads carry it, and every answer must
agree.  A checkpoint replaced or deleted under an open reader is reported as such, never as
damage and never as a mix of two versions."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import remoteckpt
from remoteckpt.engine import loop
from remoteckpt.engine.fetch import execute
from remoteckpt.engine.ranges import Piece, ReadOp
from remoteckpt.engine.versions import Versions
from remoteckpt.errors import CheckpointChangedError, CheckpointNotFoundError, CorruptCheckpointError
from remoteckpt.storage import ObjectInfo, on_store
from remoteckpt.storage.base import ScatterResult, Store
from remoteckpt.storage.local import LocalStore

MiB = 2**20


@pytest.fixture(params=["local", "s3"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path) if request.param == "local" else request.getfixturevalue("s3_prefix")


def tensors(rank: int, value: float, size: int = 64 * 1024) -> dict[str, np.ndarray]:
    return {f"r{rank}/w": np.full(size, value + rank, np.float32), f"r{rank}/b": np.arange(10.0) + value}


def assert_saved(got: dict[str, np.ndarray], value: float) -> None:
    """`got` holds both workers' tensors of `save_two(..., value)`."""
    for rank in (0, 1):
        for name, expected in tensors(rank, value).items():
            np.testing.assert_array_equal(got[name], expected)


def save_two(prefix: str, value: float, size: int = 64 * 1024, **kw: Any) -> None:
    """A checkpoint of two data files, by two workers (threads meeting through the storage)."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(remoteckpt.save, tensors(r, value, size), prefix, rank=r, world_size=2,
                               save_id=f"pin-{value}-{size}", **kw) for r in (0, 1)]
        for f in futures:
            f.result(timeout=120)




# --- requests of a restore, counted on S3 --------------------------------------------------

@pytest.mark.parametrize("cached", [False, True], ids=["plain", "host-cache"])
def test_a_restore_sends_one_index_get_and_no_list_or_head(cached: bool, s3_server: Any, s3_prefix: str,
                                                          tmp_path: Path) -> None:
    """Without a host cache: one GET of the index, ranged GETs of the data, nothing else.  A
    host cache names what it keeps by the data files' versions before it fetches: there the
    data files are listed once, as before."""
    from faultproxy import FaultProxy, classify

    prefix = f"{s3_prefix}/ck"
    save_two(prefix, 1.0)
    options = remoteckpt.IOOptions(host_cache=str(tmp_path / "cache")) if cached else remoteckpt.IOOptions()
    with FaultProxy(s3_server.endpoint_url) as proxy:
        opts = {"endpoint_url": proxy.endpoint_url}
        with remoteckpt.CheckpointReader(prefix, storage_options=opts, options=options) as reader:
            opened = [classify(method, target) for method, target, _ in proxy.log]
            got = loop.run(reader.read_many(reader.get_variable_to_shape_map()))
        kinds = [classify(method, target)[0] for method, target, _ in proxy.log]
    assert [kind for kind, _ in opened] == (["LIST", "GET"] if cached else ["GET"])
    assert opened[-1][1].endswith("ck.index")
    assert kinds.count("LIST") == (1 if cached else 0)
    assert kinds.count("HEAD") == 0
    assert sum(1 for method, target, _ in proxy.log if classify(method, target)[1].endswith(".index")) == 1
    assert_saved(got, 1.0)


# --- one opening for many readers -----------------------------------------------------------

@pytest.mark.parametrize("cached", [False, True], ids=["plain", "host-cache"])
def test_readers_opened_from_one_opening_send_no_request_to_open(cached: bool, s3_server: Any, s3_prefix: str,
                                                                 tmp_path: Path) -> None:
    """A job's rank opens, broadcasts its `Opening` (here: pickled), and the others open from it
    with no request at all: one index GET per job.  Their reads are those of any reader."""
    import pickle

    from faultproxy import FaultProxy, classify

    prefix = f"{s3_prefix}/ck"
    save_two(prefix, 1.0)
    options = remoteckpt.IOOptions(host_cache=str(tmp_path / "cache")) if cached else remoteckpt.IOOptions()
    with FaultProxy(s3_server.endpoint_url) as proxy:
        opts = {"endpoint_url": proxy.endpoint_url}
        with remoteckpt.CheckpointReader(prefix, storage_options=opts, options=options) as first:
            sent = pickle.dumps(first.opening())
        proxy.log.clear()
        opening = pickle.loads(sent)
        assert isinstance(opening, remoteckpt.Opening) and opening.prefix == prefix
        assert (opening.data_files is not None) == cached
        readers = [remoteckpt.CheckpointReader.from_opening(opening, storage_options=opts, options=options)
                   for _ in range(3)]
        assert proxy.log == []
        try:
            for reader in readers:
                assert reader.opening() is opening and reader.prefix == prefix
                got = loop.run(reader.read_many(reader.get_variable_to_shape_map()))
                assert_saved(got, 1.0)
        finally:
            for reader in readers:
                reader.close()
        targets = [classify(method, target) for method, target, _ in proxy.log]
    assert not any(key.endswith(".index") for _, key in targets)
    assert {kind for kind, _ in targets} == {"GET"}


def test_a_reader_opened_from_an_opening_still_sees_the_checkpoint_replaced(base: str) -> None:
    """The opening's index is the one its readers check every byte against: a checkpoint
    replaced after it was taken is reported as replaced, never read as the new values."""
    prefix = f"{base}/ck"
    save_two(prefix, 1.0)
    with remoteckpt.CheckpointReader(prefix) as first:
        opening = first.opening()
    save_two(prefix, 2.0, overwrite=True)
    with remoteckpt.CheckpointReader.from_opening(opening) as reader:
        with pytest.raises(CheckpointChangedError, match="replaced or deleted"):
            reader.get_tensor("r0/w")


def test_an_opening_is_refused_where_it_cannot_be_shared(tmp_path: Path) -> None:
    """A reader through a local tier routes its reads by its own host's tier; a damaged opening
    is refused like a damaged index."""
    import dataclasses

    prefix = str(tmp_path / "remote" / "ck")
    save_two(prefix, 1.0)
    with remoteckpt.CheckpointReader(prefix) as plain:
        opening = plain.opening()
    with remoteckpt.CheckpointReader(prefix, local_tier=str(tmp_path / "tier")) as tiered:
        with pytest.raises(ValueError, match="local tier"):
            tiered.opening()
    damaged = dataclasses.replace(opening, index=opening.index[:-9] + bytes(9))
    with pytest.raises(CorruptCheckpointError, match=r"ck\.index"):
        remoteckpt.CheckpointReader.from_opening(damaged)


# --- replaced or deleted under an open reader ----------------------------------------------

@pytest.mark.parametrize("change", ["same-layout", "shorter", "deleted"])
def test_a_checkpoint_replaced_between_open_and_read_is_reported_as_changed(change: str, base: str) -> None:
    """Replaced (the new data files met by the reader's first reads fail the old index's CRCs,
    or end before its entries) or deleted after the reader opened: `CheckpointChangedError`,
    never `CorruptCheckpointError` nor the new values."""
    prefix = f"{base}/ck"
    save_two(prefix, 1.0)
    reader = remoteckpt.CheckpointReader(prefix)
    try:
        if change == "same-layout":
            save_two(prefix, 2.0, overwrite=True)
        elif change == "shorter":  # the same files, shorter: the old entries reach past their ends
            save_two(prefix, 2.0, size=16, overwrite=True)
        else:
            on_store(base, lambda store: store.delete_many(["ck.index", "ck.data-00000-of-00002",
                                                            "ck.data-00001-of-00002"]))
        with pytest.raises(CheckpointChangedError, match=r"ck was replaced or deleted while it was being read"):
            reader.get_tensor("r0/w")
    finally:
        reader.close()


def test_the_error_path_looks_at_the_index_once_and_lists_nothing(s3_server: Any, s3_prefix: str) -> None:
    """The check that tells a replaced checkpoint from a damaged one is one HEAD of the index,
    sent only when a read failed."""
    from faultproxy import FaultProxy, classify

    prefix = f"{s3_prefix}/ck"
    save_two(prefix, 1.0)
    with FaultProxy(s3_server.endpoint_url) as proxy:
        opts = {"endpoint_url": proxy.endpoint_url}
        with remoteckpt.CheckpointReader(prefix, storage_options=opts) as reader:
            save_two(prefix, 2.0, overwrite=True)
            proxy.log.clear()
            with pytest.raises(CheckpointChangedError, match="replaced or deleted"):
                reader.get_tensor("r1/w")
            kinds = [classify(method, target)[0] for method, target, _ in proxy.log]
    assert kinds.count("HEAD") == 1 and kinds.count("LIST") == 0


def test_damage_with_the_index_unchanged_stays_damage(tmp_path: Path) -> None:
    prefix = str(tmp_path / "ck")
    save_two(prefix, 1.0)
    data = tmp_path / "ck.data-00000-of-00002"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0x40
    data.write_bytes(bytes(raw))
    with remoteckpt.CheckpointReader(prefix) as reader:
        with pytest.raises(CorruptCheckpointError, match=r"'r0/w'.*checksum mismatch.*ck\.data-00000-of-00002"):
            reader.get_tensor("r0/w")


def test_a_missing_data_file_is_named_on_s3(s3_prefix: str) -> None:
    prefix = f"{s3_prefix}/ck"
    save_two(prefix, 1.0)
    on_store(s3_prefix, lambda store: store.delete("ck.data-00001-of-00002"))
    with remoteckpt.CheckpointReader(prefix) as reader:
        with pytest.raises(CheckpointNotFoundError, match=r"'r1/w'.*data file missing: .*ck\.data-00001-of-00002"):
            reader.get_tensor("r1/w")
        np.testing.assert_array_equal(reader.get_tensor("r0/w"), tensors(0, 1.0)["r0/w"])


def test_a_range_past_the_end_is_refused_from_the_answer_on_s3(s3_prefix: str) -> None:
    """A data file cut short: its first answer (S3's 416, or a 206 stating the size) refuses the
    entries past the cut, naming tensor, file and size; the entries before it read."""
    prefix = f"{s3_prefix}/ck"
    save_two(prefix, 1.0)

    async def cut(store: Store) -> int:
        data = await store.get("ck.data-00000-of-00002")
        await store.put("ck.data-00000-of-00002", data[:1000])
        return len(data)

    on_store(s3_prefix, cut)
    with remoteckpt.CheckpointReader(prefix) as reader:
        entry = reader.index.entries[b"r0/w"]
        assert entry.offset + entry.size > 1000
        with pytest.raises(CorruptCheckpointError, match=rf"'r0/w'.*bytes {entry.offset}\.\.{entry.offset + entry.size} "
                                                         r"lie outside .*ck\.data-00000-of-00002 \(1000 bytes\)"):
            reader.get_tensor("r0/w")
        if reader.index.entries[b"r0/b"].offset + reader.index.entries[b"r0/b"].size <= 1000:
            np.testing.assert_array_equal(reader.get_tensor("r0/b"), tensors(0, 1.0)["r0/b"])


# --- pins -----------------------------------------------------------------------------------

def test_later_reads_are_pinned_to_the_first_answer(tmp_path: Path) -> None:
    prefix = remoteckpt.save({"w": np.arange(MiB, dtype=np.float32)}, tmp_path / "ck")  # 4 MiB
    options = remoteckpt.IOOptions(read_chunk=MiB, max_concurrency=1)
    with remoteckpt.CheckpointReader(prefix, options=options) as reader:
        store = reader.store
        inner = store.read_scatter
        sent: list[str | None] = []
        answered: list[str] = []

        async def spy(key: str, start: int, targets: Any, *, etag: str | None = None) -> ScatterResult:
            sent.append(etag)
            result = await inner(key, start, targets, etag=etag)
            answered.append(result.etag)
            return result

        store.read_scatter = spy  # type: ignore[method-assign]
        np.testing.assert_array_equal(reader.get_tensor("w"), np.arange(MiB, dtype=np.float32))
    assert len(sent) == 4 and sent[0] is None and answered[0]
    assert sent[1:] == [answered[0]] * 3


def test_answers_in_flight_together_must_name_one_version(tmp_path: Path) -> None:
    """Reads sent before any answer pinned a version are compared as they land: one naming
    another version than the first fails the read as the checkpoint replaced."""
    prefix = remoteckpt.save({"w": np.arange(MiB, dtype=np.float32)}, tmp_path / "ck")
    options = remoteckpt.IOOptions(read_chunk=MiB, max_concurrency=4)
    with remoteckpt.CheckpointReader(prefix, options=options) as reader:
        store = reader.store
        inner = store.read_scatter
        calls = 0

        async def other_version(key: str, start: int, targets: Any, *, etag: str | None = None) -> ScatterResult:
            nonlocal calls
            calls += 1
            mine = calls
            result = await inner(key, start, targets)
            return ScatterResult(result.delivered, result.crcs, f"{result.etag}-{mine}", result.size)

        store.read_scatter = other_version  # type: ignore[method-assign]
        with pytest.raises(CheckpointChangedError, match=r"ck was replaced or deleted while it was being read"):
            reader.get_tensor("w")


class _Versioned(Store):
    """A store whose reads (whatever version they are pinned to, as a server that ignores
    ``If-Match``) deliver what they are asked for, or `delivered` bytes, and say they read
    version `etags[i]` (the last one from then on) of an object of `size` bytes (or None)."""

    url = "mem"

    def __init__(self, etags: list[str], size: int | None, delivered: int | None = None) -> None:
        self.etags, self.size_stated, self.delivered = list(etags), size, delivered
        self.missing = False

    async def read_scatter(self, key: str, start: int, targets: Any, *, etag: str | None = None) -> ScatterResult:
        if self.missing:
            raise CheckpointNotFoundError(f"{key}: no such file or object")
        total = sum(len(v) for _, v in targets) if self.delivered is None else self.delivered
        return ScatterResult(total, tuple(0 for _ in targets), self.etags.pop(0) if len(self.etags) > 1
                             else self.etags[0], self.size_stated)

    async def head(self, key: str) -> ObjectInfo | None:
        raise NotImplementedError

    async def get_object(self, key: str, *, max_size: int | None = None) -> Any:
        raise NotImplementedError

    def writer(self, key: str, **kw: Any) -> Any:
        raise NotImplementedError

    async def delete(self, key: str, *, if_match: str | None = None) -> bool:
        raise NotImplementedError

    async def list(self, prefix: str = "") -> list[str]:
        raise NotImplementedError

    async def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        raise NotImplementedError


def _ops(key: str, count: int) -> tuple[list[ReadOp], dict[tuple[int, int], memoryview]]:
    pieces = [Piece(key, 100 * i, 100, i, 0) for i in range(count)]
    return [ReadOp(key, p.offset, p.length, (p,)) for p in pieces], {(i, 0): memoryview(bytearray(100))
                                                                      for i in range(count)}


def test_execute_pins_reports_and_refuses() -> None:
    def run(store: _Versioned, versions: Versions, count: int = 2) -> Any:
        ops, views = _ops("d", count)
        return loop.run(execute(store, ops, views, max_concurrency=count, describe=lambda p: "tensor 't'",
                                versions=versions))

    versions = Versions()
    run(_Versioned(["v1"], 1000), versions)
    assert versions.etag("d") == "v1" and versions.size("d") == 1000
    with pytest.raises(CheckpointChangedError, match="version v1, then v2"):
        run(_Versioned(["v1", "v2"], 1000), Versions())
    with pytest.raises(CorruptCheckpointError, match=r"'t'.*bytes 0\.\.100 lie outside mem/d \(50 bytes\)"):
        run(_Versioned(["v1"], 50, delivered=50), Versions(), 1)
    with pytest.raises(CorruptCheckpointError, match=r"'t'.*mem/d is truncated \(bytes 0\.\.100 requested, 50"):
        run(_Versioned(["v1"], None, delivered=50), Versions(), 1)  # no size stated: a cut, not a claim
    missing = _Versioned(["v1"], 1000)
    missing.missing = True
    with pytest.raises(CheckpointNotFoundError, match=r"'t': data file missing: mem/d"):
        run(missing, Versions(), 1)
    with pytest.raises(CheckpointChangedError, match="mem/d was deleted while it was being read"):
        run(missing, versions, 1)  # `versions` met it before


def test_a_listing_pins_from_the_start_and_knows_what_is_missing() -> None:
    versions = Versions({"d": ObjectInfo("d", 10, 0.0, "v1")})
    assert versions.complete and versions.etag("d") == "v1" and versions.pin("e") is None
    versions.reset(None)
    assert not versions.complete and versions.etag("d") is None


def test_the_local_store_reports_the_version_of_the_file_it_read(tmp_path: Path) -> None:
    async def body() -> None:
        store = LocalStore(tmp_path)
        first = await store.put("f", b"x" * 10)
        result = await store.read_scatter("f", 0, [(0, memoryview(bytearray(4)))])
        assert (result.etag, result.size) == (first, 10)

    loop.run(body())


def test_an_entry_outside_a_file_of_known_size_is_refused_before_a_request(s3_server: Any, s3_prefix: str) -> None:
    """Once an answer stated a data file's size, an entry reaching past it is refused from the
    index alone, naming tensor, file and size, with no request for its bytes."""
    import io

    from faultproxy import FaultProxy, classify

    from remoteckpt.format.bundle import decode_index, encode_index

    prefix = f"{s3_prefix}/ck"
    save_two(prefix, 1.0)

    async def forge(store: Store) -> int:
        size = len(await store.get("ck.data-00000-of-00002"))
        data = await store.get("ck.index")
        index = decode_index(lambda o, k: data[o : o + k], len(data))
        index.entries[b"r0/w"].offset = size - 10  # its size unchanged: it reaches past the end
        out = io.BytesIO()
        encode_index(index.header, index.entries, out)
        await store.put("ck.index", out.getvalue())
        return size

    size = on_store(s3_prefix, forge)
    with FaultProxy(s3_server.endpoint_url) as proxy:
        with remoteckpt.CheckpointReader(prefix, storage_options={"endpoint_url": proxy.endpoint_url}) as reader:
            np.testing.assert_array_equal(reader.get_tensor("r0/b"), tensors(0, 1.0)["r0/b"])
            before = len(proxy.log)
            with pytest.raises(CorruptCheckpointError, match=rf"'r0/w'.*lie outside .*ck\.data-00000-of-00002 "
                                                             rf"\({size} bytes\)"):
                reader.get_tensor("r0/w")
            # at most the error path's look at the index (replaced, or damaged?), no data GET
            assert [key for m, t, _ in proxy.log[before:] if ".data-" in (key := classify(m, t)[1])] == []


class _OneRank:
    """A group of one rank, as `engine.group.Collective` (broadcasts are the value itself)."""

    rank, size = 0, 1

    def all_gather_object(self, value: Any) -> list[Any]:
        import pickle

        return [pickle.loads(pickle.dumps(value))]

    def broadcast(self, buffer: Any, src: int) -> None:
        pass

    def send(self, buffer: Any, dst: int) -> None:
        pass

    def recv(self, buffer: Any, src: int) -> None:
        pass


def test_opened_once_by_a_group_and_its_errors_travel(tmp_path: Path) -> None:
    """Rank 0 opens and sends its opening (or its error: one the other ranks could not unpickle
    travels as a `CheckpointError` naming it)."""
    from remoteckpt.engine.group import Collective
    from remoteckpt.reader import _sendable

    group = type("OneRank", (_OneRank, Collective), {})()
    prefix = str(tmp_path / "ck")
    save_two(prefix, 1.0)
    with remoteckpt.CheckpointReader.opened_once(prefix, group) as reader:
        np.testing.assert_array_equal(reader.get_tensor("r1/b"), tensors(1, 1.0)["r1/b"])
    with pytest.raises(CheckpointNotFoundError):
        remoteckpt.CheckpointReader.opened_once(str(tmp_path / "missing"), group)

    class Unpicklable(Exception):
        def __init__(self, a: int, b: int) -> None:
            super().__init__(f"{a}/{b}")

    sent = _sendable(Unpicklable(1, 2))
    assert isinstance(sent, remoteckpt.CheckpointError) and str(sent) == "Unpicklable: 1/2"
    plain = CheckpointNotFoundError("gone")
    assert _sendable(plain) is plain


def test_a_tier_holding_nothing_reads_as_a_plain_restore(s3_server: Any, s3_prefix: str, tmp_path: Path) -> None:
    """A restore through a local tier that holds nothing of the checkpoint (a replaced node):
    one GET of the index and the data's ranged GETs, no listing: today's S3 restore."""
    from faultproxy import FaultProxy, classify

    prefix = f"{s3_prefix}/ck"
    save_two(prefix, 1.0)
    with FaultProxy(s3_server.endpoint_url) as proxy:
        opts = {"endpoint_url": proxy.endpoint_url}
        got = remoteckpt.load(prefix, storage_options=opts, local_tier=str(tmp_path / "empty-tier"))
        kinds = [classify(method, target) for method, target, _ in proxy.log]
    assert {kind for kind, _ in kinds} == {"GET"}
    assert sum(1 for _, key in kinds if key.endswith("ck.index")) == 1
    assert_saved(got, 1.0)
