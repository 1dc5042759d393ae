"""One contract, every backend: local disk, an in-memory fsspec store, and S3 (SeaweedFS).

Each test is a coroutine run on remoteckpt's I/O loop against a fresh, empty store root.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from remoteckpt.engine import loop
from remoteckpt.errors import (
    CheckpointChangedError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
)
from remoteckpt.storage import Store, on_store, open_store
from remoteckpt.storage.base import ScatterResult
from remoteckpt.storage.local import LocalWriter
from remoteckpt.storage.s3 import PART_SIZE, S3Store


@pytest.fixture(params=["local", "memory", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "root")
    if request.param == "memory":
        return f"memory://conformance/{uuid.uuid4().hex}"
    return request.getfixturevalue("s3_prefix")


def run(url: str, body: Callable[[Store], Awaitable[Any]]) -> Any:
    return on_store(url, body)


def test_put_get_size_exists(store_url: str) -> None:
    async def body(store: Store) -> None:
        assert not await store.exists("a.bin")
        await store.put("a.bin", b"hello world")
        assert await store.exists("a.bin")
        assert await store.get("a.bin") == b"hello world"
        assert await store.size("a.bin") == 11
        await store.put("a.bin", [b"new ", memoryview(b"contents")])  # overwrite, from chunks
        assert await store.get("a.bin") == b"new contents"

    run(store_url, body)


def test_get_refuses_an_object_above_max_size(store_url: str) -> None:
    async def body(store: Store) -> None:
        await store.put("k", b"x" * 100)
        assert await store.get("k", max_size=100) == b"x" * 100
        with pytest.raises(CorruptCheckpointError, match="100 bytes, more than the 99"):
            await store.get("k", max_size=99)

    run(store_url, body)


def test_read_into(store_url: str) -> None:
    async def body(store: Store) -> None:
        await store.put("r", bytes(range(100)))
        buf = bytearray(10)
        assert await store.read_into("r", 20, memoryview(buf)) == 10
        assert bytes(buf) == bytes(range(20, 30))
        tail = bytearray(10)
        assert await store.read_into("r", 95, memoryview(tail)) == 5  # short read is reported
        assert bytes(tail[:5]) == bytes(range(95, 100))
        assert await store.read_into("r", 50, memoryview(bytearray(0))) == 0  # no request at all

    run(store_url, body)


def test_missing_keys_are_not_found(store_url: str) -> None:
    async def body(store: Store) -> None:
        for call in (store.get("nope"), store.size("nope"), store.read_into("nope", 0, memoryview(bytearray(4)))):
            with pytest.raises(CheckpointNotFoundError, match="nope"):
                await call
        await store.delete("nope")  # not an error

    run(store_url, body)


def test_writer_is_invisible_until_commit(store_url: str) -> None:
    async def body(store: Store) -> None:
        writer = store.writer("w.bin")
        await writer.write(b"part one, ")
        assert not await store.exists("w.bin")
        await writer.write(b"part two")
        await writer.commit()
        assert await store.get("w.bin") == b"part one, part two"
        assert await store.list() == ["w.bin"]  # no temp files left

    run(store_url, body)


def test_a_large_streamed_write_is_invisible_until_commit(store_url: str) -> None:
    """Several MiB in many writes (past every writer's gathering, into its upload or temp file)."""
    data = np.random.default_rng(5).integers(0, 256, 7 * 2**20 + 13, dtype=np.uint8).tobytes()

    async def body(store: Store) -> None:
        writer = store.writer("big.bin", exclusive=True)
        for start in range(0, len(data), 3 * 2**19):
            await writer.write(memoryview(data)[start : start + 3 * 2**19])
            assert not await store.exists("big.bin")
        await writer.commit()
        assert await store.get("big.bin") == data
        assert await store.list() == ["big.bin"]
        again = store.writer("big.bin", exclusive=True)
        await again.write(data)
        with pytest.raises(CheckpointExistsError):
            await again.commit()
        assert await store.get("big.bin") == data
        assert await store.list() == ["big.bin"]  # the refused write left nothing

    run(store_url, body)


def test_the_generic_writer_streams_through_the_file_object() -> None:
    """The fsspec store's writer hands its bytes to the filesystem as they come: it holds at
    most `GATHER` of them, the rest is in the temporary object already."""
    from remoteckpt.storage.fsspec_store import GATHER

    url = f"memory://conformance/{uuid.uuid4().hex}"
    piece = bytes(GATHER // 3 + 1)

    async def body(store: Store) -> None:
        writer = store.writer("s.bin")
        for n in range(1, 13):
            await writer.write(piece)
            assert writer._gathered_size < GATHER  # type: ignore[attr-defined]
            temps = [i for i in await store.list_info("s.bin.tempstate")]
            assert sum(i.size for i in temps) + writer._gathered_size == n * len(piece)  # type: ignore[attr-defined]
        await writer.commit()
        assert await store.list() == ["s.bin"] and await store.size("s.bin") == 12 * len(piece)

    run(url, body)


def test_abort_leaves_nothing(store_url: str) -> None:
    async def body(store: Store) -> None:
        with pytest.raises(RuntimeError):
            async with store.writer("x.bin") as writer:
                await writer.write(b"doomed")
                raise RuntimeError("boom")
        assert await store.list() == []

    run(store_url, body)


def test_exclusive_commit_refuses_existing_key(store_url: str) -> None:
    async def body(store: Store) -> None:
        await store.put("idx", b"first", exclusive=True)
        with pytest.raises(CheckpointExistsError, match="idx"):
            await store.put("idx", b"second", exclusive=True)
        assert await store.get("idx") == b"first"
        assert await store.list() == ["idx"]

    run(store_url, body)


def test_list_and_delete(store_url: str) -> None:
    async def body(store: Store) -> None:
        for key in ("ck-1.index", "ck-1.data-00000-of-00001", "ck-2.index", "sub/x"):
            await store.put(key, b"1")
        assert await store.list("ck-1") == ["ck-1.data-00000-of-00001", "ck-1.index"]
        assert "sub/x" in await store.list()
        await store.delete("ck-1.index")
        assert await store.list("ck-1") == ["ck-1.data-00000-of-00001"]

    run(store_url, body)


def test_list_prefixes_cross_directories(store_url: str) -> None:
    """A prefix is a string prefix of keys, not a directory: it may end mid-name and match
    keys in several directories, at any depth."""
    keys = ["run/ck.tmp1/part-0", "run/ck.tmp1/deep/er/part-1", "run/ck.tmp2/x", "run/ck.index", "run/other/ck.tmp3",
            "run/ckx", "runner/y", "top"]

    async def body(store: Store) -> None:
        for key in keys:
            await store.put(key, b"1")
        assert await store.list("run/ck.tmp") == ["run/ck.tmp1/deep/er/part-1", "run/ck.tmp1/part-0", "run/ck.tmp2/x"]
        assert await store.list("run/ck.tmp1/deep/") == ["run/ck.tmp1/deep/er/part-1"]
        assert await store.list("run/ck") == sorted(k for k in keys if k.startswith("run/ck"))
        assert await store.list("run") == sorted(k for k in keys if k.startswith("run"))
        assert await store.list("") == sorted(keys)

    run(store_url, body)


def test_list_info_has_sizes_and_times(store_url: str) -> None:
    import time

    async def body(store: Store) -> None:
        await store.put("one", b"12345")
        (info,) = await store.list_info()
        assert (info.key, info.size) == ("one", 5)
        assert abs(info.mtime - time.time()) < 600 or info.mtime == 0.0

    run(store_url, body)


def test_large_streamed_object(store_url: str) -> None:
    """Several multipart parts on S3 (cut across writes), one file elsewhere."""
    chunk = bytes(range(256)) * (3 * 2**20 // 256)  # 3 MiB

    async def body(store: Store) -> None:
        async with store.writer("big") as writer:
            for _ in range(PART_SIZE * 2 // len(chunk) + 2):
                await writer.write(chunk)
        expected = chunk * (PART_SIZE * 2 // len(chunk) + 2)
        assert await store.size("big") == len(expected)
        buf = bytearray(1000)
        await store.read_into("big", PART_SIZE - 500, memoryview(buf))
        assert bytes(buf) == expected[PART_SIZE - 500 : PART_SIZE + 500]
        if isinstance(store, S3Store):  # no multipart upload left open
            uploads = await store.client.call("list_multipart_uploads", Bucket=store.bucket, Prefix=store.object_key(""))
            assert not uploads.get("Uploads")

    run(store_url, body)


def test_a_released_buffer_is_the_callers_again(store_url: str) -> None:
    """A buffer written with `release` is handed back exactly once, and only once the writer
    keeps no reference to it: the caller scribbling over it at once (as a reused or freed
    buffer is) changes nothing that lands.  On S3 the buffers span parts (cut across writes),
    and a tail waiting in the part being filled is released with the write (copied), so a
    writer never holds a caller's counted buffer while it waits for more bytes."""
    from remoteckpt.storage.s3 import MIN_PART_SIZE

    rng = np.random.default_rng(7)
    sizes = [2 * MIN_PART_SIZE + 123, 3 * 2**20, 1, MIN_PART_SIZE, 7 * 2**20 + 5]
    payloads = [rng.integers(0, 255, n, dtype=np.uint8).tobytes() for n in sizes]

    async def body(store: Store) -> None:
        released: list[int] = []
        waiting: list[int] = []  # released at once by the write itself (its tail copied)
        buffers = [bytearray(p) for p in payloads]

        def release(i: int) -> None:
            released.append(i)
            buffers[i][:] = b"\xff" * len(buffers[i])

        async with store.writer("scribbled") as writer:
            for i, buf in enumerate(buffers):
                await writer.write(buf, lambda i=i: release(i))
                if i in released:
                    waiting.append(i)
            # anything still held is held by parts in flight, which commit waits for
        assert sorted(released) == list(range(len(payloads)))  # each once
        assert await store.get("scribbled") == b"".join(payloads)
        if isinstance(store, S3Store):
            assert 0 not in waiting  # its first two parts were still to be sent when its write returned

    async def go() -> None:
        options = {"part_size": MIN_PART_SIZE} if store_url.startswith("s3://") else None
        store = open_store(store_url, options)
        try:
            await body(store)
        finally:
            await store.close()

    loop.run(go())


def test_a_failed_or_aborted_write_releases_its_buffers(s3_prefix: str) -> None:
    """Parts cancelled by an abort hand their buffers back too: no budget is ever lost."""
    from remoteckpt.storage.s3 import MIN_PART_SIZE

    async def go() -> None:
        store = open_store(s3_prefix, {"part_size": MIN_PART_SIZE})
        released: list[int] = []
        try:
            writer = store.writer("aborted")
            for i in range(3):
                await writer.write(bytearray(MIN_PART_SIZE + 1), lambda i=i: released.append(i))
            await writer.abort()
            assert sorted(released) == [0, 1, 2]
            assert not await store.exists("aborted")
        finally:
            await store.close()

    loop.run(go())


def test_many_parts_in_flight(s3_prefix: str) -> None:
    """More parts than may be in flight at once, of the smallest legal size: every byte lands
    in order (part numbers are never reused while uploads overlap)."""
    from remoteckpt.storage.s3 import MIN_PART_SIZE

    payload = np.random.default_rng(1).integers(0, 255, 9 * MIN_PART_SIZE + 1234, dtype=np.uint8).tobytes()

    async def body(store: Store) -> None:
        assert isinstance(store, S3Store) and store.part_size == MIN_PART_SIZE
        async with store.writer("many") as writer:
            for start in range(0, len(payload), 3 * 2**20 + 7):
                await writer.write(payload[start : start + 3 * 2**20 + 7])
        assert await store.get("many") == payload

    async def go() -> None:
        store = open_store(s3_prefix, {"part_size": MIN_PART_SIZE})
        try:
            await body(store)
        finally:
            await store.close()

    loop.run(go())


def test_an_object_too_large_for_its_parts_gets_larger_parts(s3_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 allows 10,000 parts per object: a writer told the object's size sizes its parts so
    that it fits (here with the bound lowered to 4 parts), with fewer of them in flight, and
    every byte lands in order."""
    from remoteckpt.storage.s3 import MIN_PART_SIZE, uploads

    monkeypatch.setattr(uploads, "MAX_WRITTEN_PARTS", 4)
    payload = np.random.default_rng(2).integers(0, 255, 6 * MIN_PART_SIZE + 99, dtype=np.uint8).tobytes()

    async def go() -> None:
        store = open_store(s3_prefix, {"part_size": MIN_PART_SIZE})
        try:
            assert isinstance(store, S3Store)
            writer = store.writer("big", size_hint=len(payload))
            assert writer._part_size * 4 >= len(payload) > MIN_PART_SIZE * 4  # type: ignore[attr-defined]
            async with writer:
                for start in range(0, len(payload), 2**20 + 3):
                    await writer.write(payload[start : start + 2**20 + 3])
            assert await store.get("big") == payload
            assert store.writer("small", size_hint=MIN_PART_SIZE)._part_size == MIN_PART_SIZE  # type: ignore[attr-defined]
        finally:
            await store.close()

    loop.run(go())


def test_aborted_multipart_upload_is_cleaned(store_url: str) -> None:
    if not store_url.startswith("s3://"):
        pytest.skip("multipart uploads exist on S3 only")

    async def body(store: Store) -> None:
        with pytest.raises(RuntimeError):
            async with store.writer("partial") as writer:
                await writer.write(bytes(PART_SIZE + 1))  # starts a multipart upload
                raise RuntimeError("crash")
        assert isinstance(store, S3Store)
        assert await store.pending_uploads() == []
        assert await store.list() == []
        # An upload left behind (a crashed writer) is listed and can be aborted.
        writer = store.writer("orphan")
        await writer.write(bytes(PART_SIZE + 1))
        await asyncio.sleep(0.5)
        (pending,) = await store.pending_uploads()
        assert pending.key == "orphan" and pending.initiated > 0
        await store.abort_upload(pending)
        assert await store.pending_uploads() == []
        writer._closed = True  # type: ignore[attr-defined]  # already aborted behind its back

    run(store_url, body)


def test_every_version_has_its_own_etag(store_url: str) -> None:
    """head, list_info, get_object and the writer agree on the etag of a version, and a new
    version has a new one (even with the same bytes)."""
    async def body(store: Store) -> None:
        assert await store.head("v") is None
        first = await store.put("v", b"same bytes")
        assert first
        head = await store.head("v")
        assert head is not None and head.etag == first and head.size == 10
        assert (await store.get_object("v")).etag == first
        assert [i.etag for i in await store.list_info("v")] == [first]
        await asyncio.sleep(0.01)  # a new version, even of equal bytes, within the clock's resolution
        second = await store.put("v", b"other data")
        assert second != first and (await store.head("v")).etag == second

    run(store_url, body)


def test_conditional_replace_and_delete(store_url: str) -> None:
    from remoteckpt.errors import CheckpointChangedError

    async def body(store: Store) -> None:
        first = await store.put("c", b"one", exclusive=True)
        second = await store.put("c", b"two", if_match=first)
        with pytest.raises(CheckpointChangedError):
            await store.put("c", b"three", if_match=first)  # no longer that version
        assert await store.get("c") == b"two"
        with pytest.raises(CheckpointChangedError):
            await store.put("missing", b"x", if_match=first)
        assert not await store.exists("missing")
        assert await store.delete("c", if_match=first) is False  # another version is there
        assert await store.get("c") == b"two"
        assert await store.delete("c", if_match=second) is True
        assert not await store.exists("c")
        assert await store.delete("c", if_match=second) is True  # gone already

    run(store_url, body)


def test_pinned_reads_refuse_another_version(store_url: str) -> None:
    from remoteckpt.errors import CheckpointChangedError

    async def body(store: Store) -> None:
        first = await store.put("p", bytes(range(100)))
        buf = memoryview(bytearray(10))
        assert (await store.read_scatter("p", 10, [(10, buf)], etag=first)).delivered == 10
        await store.put("p", bytes(reversed(range(100))))
        with pytest.raises(CheckpointChangedError, match="changed while it was being read"):
            await store.read_scatter("p", 10, [(10, buf)], etag=first)

    run(store_url, body)


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_racing_conditional_replaces_one_wins(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Of many writers replacing the same version at once, exactly one succeeds (where the
    store claims conditional writes)."""
    from remoteckpt.errors import CheckpointChangedError

    url = str(tmp_path / "root") if backend == "local" else request.getfixturevalue("s3_prefix")

    async def body(store: Store) -> None:
        base = await store.put("race", b"base")

        async def one(i: int) -> bool:
            try:
                await store.put("race", f"writer {i}".encode(), if_match=base)
                return True
            except CheckpointChangedError:
                return False

        won = await asyncio.gather(*(one(i) for i in range(8)))
        assert sum(won) == 1
        assert await store.get("race") == f"writer {won.index(True)}".encode()

    run(url, body)


def test_delete_many_removes_every_version_and_ignores_missing_keys(store_url: str) -> None:
    async def body(store: Store) -> None:
        keys = [f"stage/r-{i:05d}" for i in range(1203)]  # more than one DeleteObjects request on S3
        await asyncio.gather(*(store.put(k, b"x") for k in keys[:1200]))
        await store.put("stage/kept", b"k")
        await store.delete_many([*keys, keys[0]])  # missing and repeated keys are no error
        assert await store.list("stage/") == ["stage/kept"]
        await store.delete_many([])

    run(store_url, body)


# --- copies from another object (incremental saves) ----------------------------------------------

MiB = 2**20


def _source_bytes(size: int, seed: int = 7) -> bytes:
    return np.random.default_rng(seed).integers(0, 255, size, dtype=np.uint8).tobytes()


def test_writer_copies_ranges_of_another_object(store_url: str) -> None:
    """Written bytes, a copied range, written bytes, and a short copied range last make one
    object; S3 and local disk copy inside the store, the generic fsspec store reads and writes
    (and says so)."""
    source = _source_bytes(20 * MiB)

    async def body(store: Store) -> None:
        assert store.writer("x").server_side_copy is (not store_url.startswith("memory://"))
        etag = await store.put("src", source)
        async with store.writer("dst") as writer:
            await writer.write(b"h" * (6 * MiB))  # 6 MiB pending: a part boundary on S3 too
            assert writer.bytes_before_copy() == 0
            await writer.copy("src", 1 * MiB + 3, 13 * MiB, etag=etag)  # two copied parts on S3
            await writer.write(b"m" * (5 * MiB))
            assert writer.bytes_before_copy() == 0
            await writer.copy("src", 100, 1000)  # shorter than a part: the object's last
            with pytest.raises(ValueError, match="nothing may follow") if writer.copy_granule else nullcontext():
                await writer.write(b"more")
        expected = b"h" * (6 * MiB) + source[MiB + 3 : 14 * MiB + 3] + b"m" * (5 * MiB) + source[100:1100]
        if not writer.copy_granule:
            expected += b"more"
        assert await store.get("dst") == expected
        assert await store.pending_uploads() == []

    run(store_url, body)


def test_a_copy_waits_for_a_part_boundary(store_url: str) -> None:
    """On S3 a copy cannot follow fewer than 5 MiB of written bytes (they could not form a
    part): `bytes_before_copy` says how many more are needed, and a copy before that is a
    caller's error, not a corrupt object.  Elsewhere a copy may begin anywhere."""
    async def body(store: Store) -> None:
        await store.put("src", _source_bytes(6 * MiB))
        async with store.writer("dst") as writer:
            await writer.write(b"abc")
            need = writer.bytes_before_copy()
            if writer.copy_granule:
                assert need == writer.copy_granule - 3
                with pytest.raises(ValueError, match="part boundary"):
                    await writer.copy("src", 0, 6 * MiB)
                await writer.write(b"z" * need)
                assert writer.bytes_before_copy() == 0
            else:
                assert need == 0
            await writer.copy("src", 0, 6 * MiB)
        assert await store.get("dst") == b"abc" + b"z" * need + _source_bytes(6 * MiB)

    run(store_url, body)


def test_a_copy_refuses_another_version_a_missing_source_or_missing_bytes(store_url: str) -> None:
    """A copy pinned to a version of its source fails if the source was replaced; a missing
    source is not found; a range past the source's end is corrupt; each leaves nothing."""
    async def body(store: Store) -> None:
        old = await store.put("src", _source_bytes(6 * MiB))
        await store.put("src", _source_bytes(6 * MiB, seed=8))
        with pytest.raises(CheckpointChangedError):
            async with store.writer("dst") as writer:
                await writer.copy("src", 0, 6 * MiB, etag=old)
        with pytest.raises(CheckpointNotFoundError):
            async with store.writer("dst") as writer:
                await writer.copy("absent", 0, 6 * MiB)
        with pytest.raises(CorruptCheckpointError):
            async with store.writer("dst") as writer:
                await writer.copy("src", MiB, 6 * MiB)
        assert not await store.exists("dst")
        assert await store.pending_uploads() == []
        assert [k for k in await store.list() if k != "src"] == []

    run(store_url, body)


def test_reads_report_the_version_and_size_they_read(store_url: str) -> None:
    """What a reader pins its later reads to: the etag `head` reports, and the object's size,
    also from a read reaching past the end (and, where the backend states it, from one that
    starts past the end)."""
    async def body(store: Store) -> None:
        first = await store.put("v", bytes(range(100)))
        head = await store.head("v")
        assert head is not None and head.etag == first
        buf = memoryview(bytearray(10))
        got = await store.read_scatter("v", 10, [(10, buf)])
        assert (got.delivered, got.etag, got.size) == (10, first, 100)
        got = await store.read_scatter("v", 95, [(95, buf)])
        assert (got.delivered, got.etag, got.size) == (5, first, 100)
        got = await store.read_scatter("v", 150, [(150, buf)])
        assert got.delivered == 0 and got.etag in ("", first) and got.size == 100
        second = await store.put("v", bytes(50))
        got = await store.read_scatter("v", 0, [(0, buf)])
        assert (got.etag, got.size) == (second, 50) and second != first
        assert await store.read_scatter("v", 0, []) == ScatterResult(0, (), "", None)  # no request

    run(store_url, body)


def test_checked_writes_check_each_piece_before_it_lands(store_url: str) -> None:
    """`write_checked` calls its check on each piece, in order, and lands the same bytes as
    `write`, between plain writes (buffered on local disk) and before a copy; a check that
    raises fails the write, and nothing is committed."""
    rng = np.random.default_rng(11)
    big = rng.integers(0, 255, 5 * MiB + 77, dtype=np.uint8)
    source = _source_bytes(2 * MiB)

    async def body(store: Store) -> None:
        etag = await store.put("src", source)
        seen: list[bytes] = []
        async with store.writer("checked") as writer:
            temp = writer._temp if isinstance(writer, LocalWriter) else None  # its bytes so far can be seen

            def check(piece: memoryview) -> None:
                if temp is not None:  # this piece is not in the file yet
                    assert os.stat(temp).st_size == 4 + sum(map(len, seen[:6])) + 6 * (len(seen) >= 6)
                seen.append(bytes(piece))

            await writer.write(b"head")  # small: waits in the local file's buffer
            await writer.write_checked(memoryview(big), check, MiB)
            await writer.write(b"middle")
            await writer.write_checked(memoryview(big)[:100], check, MiB)
            await writer.copy("src", 10, MiB, etag=etag)
        assert [len(p) for p in seen] == [MiB] * 5 + [77, 100]
        assert b"".join(seen) == big.tobytes() + big.tobytes()[:100]
        assert await store.get("checked") == b"head" + big.tobytes() + b"middle" + big.tobytes()[:100] \
            + source[10 : MiB + 10]

        def refuse(piece: memoryview) -> None:
            if len(seen) == 9:
                raise ValueError("this piece is refused")
            seen.append(bytes(piece))

        with pytest.raises(ValueError, match="refused"):
            async with store.writer("refused") as writer:
                await writer.write_checked(memoryview(big), refuse, MiB)
        assert not await store.exists("refused")

    run(store_url, body)


async def _nothing_lands_in_the_next_file_opened(path: Path) -> None:
    """A file opened at `path` (taking the lowest free descriptor, which a writer just closed)
    receives no byte within 50 ms: no thread goes on writing through the closed descriptor."""
    victim = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        await asyncio.sleep(0.05)
        assert os.fstat(victim).st_size == 0
    finally:
        os.close(victim)


def test_a_cancelled_checked_write_leaves_no_file_and_no_stray_write(tmp_path: Path) -> None:
    """Cancelled while its thread writes, a local `write_checked` waits for that thread to
    stop before the writer closes its file: a descriptor closed under a running write may
    already name the next file opened (here: the one opened right after)."""
    import threading

    root = tmp_path / "root"
    big = np.zeros(64 * MiB, dtype=np.uint8)
    started = threading.Event()
    checking = threading.Event()  # set while a check runs
    pieces: list[int] = []

    def check(piece: memoryview) -> None:
        checking.set()
        pieces.append(len(piece))
        started.set()
        threading.Event().wait(0.005)  # a slow check: cancellation lands mid-write
        checking.clear()

    async def body(store: Store) -> None:
        writer = store.writer("cancelled")
        task = asyncio.ensure_future(writer.write_checked(memoryview(big), check, MiB))
        while not started.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not checking.is_set()  # the writing thread is done before the file is closed
        done = len(pieces)
        await _nothing_lands_in_the_next_file_opened(tmp_path / "victim")
        assert len(pieces) == done < 64  # stopped, and stopped for good
        assert not any(root.iterdir())

    run(str(root), body)


def test_a_cancelled_local_copy_stops_before_its_file_is_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local `copy` runs in a worker thread; cancelled, it stops that thread and waits for
    it before the writer closes its file, as a checked write does."""
    import threading

    root = tmp_path / "root"
    real = os.copy_file_range
    copying = threading.Event()  # set while a piece is being copied
    calls: list[int] = []

    def slow(src: int, dst: int, count: int, offset_src: int | None = None, offset_dst: int | None = None) -> int:
        copying.set()
        calls.append(count)
        threading.Event().wait(0.005)  # cancellation lands mid-copy
        n = real(src, dst, min(count, MiB), offset_src, offset_dst)
        copying.clear()
        return n

    async def body(store: Store) -> None:
        etag = await store.put("src", bytes(64 * MiB))
        monkeypatch.setattr(os, "copy_file_range", slow)
        writer = store.writer("copied")
        task = asyncio.ensure_future(writer.copy("src", 0, 64 * MiB, etag=etag))
        while not calls:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not copying.is_set()
        done = len(calls)
        await _nothing_lands_in_the_next_file_opened(tmp_path / "victim")
        assert len(calls) == done < 64
        assert sorted(p.name for p in root.iterdir()) == ["src"]

    run(str(root), body)
