"""The index commit, by its behaviour (local disk and S3): a committed checkpoint is never
replaced by a save that was not asked to, and an unknown outcome is settled only by our own
bytes.  Written against what `remoteckpt.save` and the default commit protocol promise, not
against how the protocol gets there."""

from __future__ import annotations

import asyncio
import inspect
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import remoteckpt
from remoteckpt import CheckpointError, CheckpointExistsError, IOOptions, StorageError
from remoteckpt.api import save_checkpoint
from remoteckpt.engine import loop
from remoteckpt.engine.plan import plan_bundle
from remoteckpt.format.bundle import encode_index, make_header
from remoteckpt.protocol.commit import DEFAULT_COMMIT, CommitProtocol
from remoteckpt.storage import Store, on_store
from remoteckpt.storage.base import Buffer, ObjectWriter

FAST = IOOptions(commit_timeout=10.0, poll_interval=0.01)


@pytest.fixture(params=["local", "s3"])
def directory(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path) if request.param == "local" else request.getfixturevalue("s3_prefix")


def index_bytes(tensors: dict[str, Any]) -> bytes:
    """A real one-shard index over `tensors` (what another save would commit)."""
    out = io.BytesIO()
    encode_index(make_header(1), plan_bundle(tensors, checksum=True).entries, out)
    return out.getvalue()


OURS = index_bytes({"w": np.arange(6, dtype=np.float32)})
THEIRS = index_bytes({"w": np.ones(6, dtype=np.float32)})


async def commit_index(store: Any, key: str, data: bytes) -> None:
    """The default protocol's commit of a fresh checkpoint (not replacing one)."""
    if "overwrite" in inspect.signature(DEFAULT_COMMIT.commit).parameters:
        await DEFAULT_COMMIT.commit(store, key, data, overwrite=False)
    else:
        await DEFAULT_COMMIT.commit(store, key, data)


def run(directory: str, work: Callable[[Store], Awaitable[Any]]) -> Any:
    return on_store(directory, work)


# --- a store whose commit of one key has an unknown outcome ------------------------------------


class _UnknownOutcomeWriter(ObjectWriter):
    """Writes through to the real writer; its commit runs `settle` instead, which decides what
    lands, then fails as a lost acknowledgement does."""

    def __init__(self, inner: ObjectWriter, settle: Callable[[ObjectWriter], Awaitable[None]]) -> None:
        self.key = inner.key
        self._inner, self._settle = inner, settle

    async def write(self, data: Buffer, release: Callable[[], None] | None = None) -> None:
        await self._inner.write(data, release)

    async def commit(self) -> None:
        await self._settle(self._inner)
        raise StorageError(f"{self.key}: connection reset before the answer (acknowledgement lost)")

    async def abort(self) -> None:
        await self._inner.abort()


class UnknownOutcomeStore:
    """`store`, except that committing `key` fails after `settle` ran (see above)."""

    def __init__(self, store: Store, key: str, settle: Callable[[Store, ObjectWriter], Awaitable[None]]) -> None:
        self._store, self._key, self._settle = store, key, settle
        self.commits = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def writer(self, key: str, *, exclusive: bool = False, size_hint: int | None = None) -> ObjectWriter:
        inner = self._store.writer(key, exclusive=exclusive, size_hint=size_hint)
        if key != self._key:
            return inner

        async def settle(writer: ObjectWriter) -> None:
            self.commits += 1
            await self._settle(self._store, writer)

        return _UnknownOutcomeWriter(inner, settle)

    async def put(self, key: str, data: Buffer, *, exclusive: bool = False) -> None:
        async with self.writer(key, exclusive=exclusive) as w:
            await w.write(data)


async def landed(store: Store, writer: ObjectWriter) -> None:
    await writer.commit()  # the write happened; only its answer is lost


def other_bytes_landed(other: bytes) -> Callable[[Store, ObjectWriter], Awaitable[None]]:
    async def settle(store: Store, writer: ObjectWriter) -> None:
        await writer.abort()  # ours never happened, another writer's did
        await store.put("ck.index", other)

    return settle


async def nothing_landed(store: Store, writer: ObjectWriter) -> None:
    await writer.abort()


# --- the commit itself --------------------------------------------------------------------------


def test_commit_creates_a_missing_index(directory: str) -> None:
    async def go(store: Store) -> bytes:
        await commit_index(store, "ck.index", OURS)
        return await store.get("ck.index")

    assert run(directory, go) == OURS


def test_commit_never_replaces_a_committed_index(directory: str) -> None:
    async def go(store: Store) -> bytes:
        await store.put("ck.index", THEIRS)
        with pytest.raises(CheckpointExistsError, match=r"ck\.index"):
            await commit_index(store, "ck.index", OURS)
        return await store.get("ck.index")

    assert run(directory, go) == THEIRS


@pytest.mark.parametrize("what", ["one-byte-differs", "a-prefix", "one-byte-longer"])
def test_commit_never_replaces_an_index_differing_from_ours(directory: str, what: str) -> None:
    there = {"one-byte-differs": OURS[:-9] + bytes([OURS[-9] ^ 1]) + OURS[-8:], "a-prefix": OURS[:-1],
             "one-byte-longer": OURS + b"\0"}[what]

    async def go(store: Store) -> bytes:
        await store.put("ck.index", there)
        with pytest.raises(CheckpointExistsError):
            await commit_index(store, "ck.index", OURS)
        return await store.get("ck.index")

    assert run(directory, go) == there


def test_a_lost_acknowledgement_of_our_own_commit_is_a_success(directory: str) -> None:
    async def go(store: Store) -> bytes:
        flaky = UnknownOutcomeStore(store, "ck.index", landed)
        await commit_index(flaky, "ck.index", OURS)
        assert flaky.commits >= 1
        return await store.get("ck.index")

    assert run(directory, go) == OURS


@pytest.mark.parametrize("what", ["theirs", "one-byte-differs", "a-prefix", "one-byte-longer"])
def test_an_unknown_outcome_is_settled_only_by_byte_identical_bytes(directory: str, what: str) -> None:
    """After a commit whose answer was lost, an index that is not exactly ours is another
    save's: the commit fails, and that index stays."""
    there = {"theirs": THEIRS, "one-byte-differs": OURS[:-9] + bytes([OURS[-9] ^ 1]) + OURS[-8:],
             "a-prefix": OURS[:-1], "one-byte-longer": OURS + b"\0"}[what]

    async def go(store: Store) -> bytes:
        flaky = UnknownOutcomeStore(store, "ck.index", other_bytes_landed(there))
        with pytest.raises(CheckpointError):
            await commit_index(flaky, "ck.index", OURS)
        return await store.get("ck.index")

    assert run(directory, go) == there


def test_an_unknown_outcome_with_nothing_landed_fails(directory: str) -> None:
    async def go(store: Store) -> bool:
        flaky = UnknownOutcomeStore(store, "ck.index", nothing_landed)
        with pytest.raises(CheckpointError):
            await commit_index(flaky, "ck.index", OURS)
        return await store.exists("ck.index")

    assert not run(directory, go)


# --- a save whose coordinator reaches the commit after another save committed --------------------


class AnotherSaveCommitsFirst(CommitProtocol):
    """The default commit, but another save's index lands at the key just before it."""

    def __init__(self, other: bytes) -> None:
        self.other = other

    async def commit(self, store: Store, key: str, data: bytes, **kwargs: Any) -> None:  # type: ignore[override]
        await store.put(key, self.other)
        await DEFAULT_COMMIT.commit(store, key, data, **kwargs)


def _index(prefix: str) -> bytes:
    directory, _, name = prefix.rpartition("/")
    return on_store(directory, lambda store: store.get(f"{name}.index"))


def test_a_save_committing_after_another_save_fails_and_keeps_the_others(directory: str) -> None:
    prefix = f"{directory}/ck"
    with pytest.raises(CheckpointExistsError, match=r"ck\.index"):
        remoteckpt.save({"w": np.arange(6, dtype=np.float32)}, prefix, commit=AnotherSaveCommitsFirst(THEIRS))
    assert _index(prefix) == THEIRS


def test_a_multiworker_save_committing_after_another_save_fails_on_every_worker(directory: str) -> None:
    prefix = f"{directory}/ck"
    late = AnotherSaveCommitsFirst(THEIRS)

    async def both() -> list[Any]:
        return await asyncio.gather(
            save_checkpoint({"w": remoteckpt.Slice(np.zeros((2, 3), np.float32), (4, 3), (0, 0))}, prefix,
                            rank=0, world_size=2, save_id="late", options=FAST, commit=late),
            save_checkpoint({"w": remoteckpt.Slice(np.ones((2, 3), np.float32), (4, 3), (2, 0))}, prefix,
                            rank=1, world_size=2, save_id="late", options=FAST),
            return_exceptions=True)

    coordinator, worker = loop.run(both())
    assert isinstance(coordinator, CheckpointExistsError), coordinator
    assert isinstance(worker, CheckpointError), worker
    assert _index(prefix) == THEIRS


# --- replacing a checkpoint -------------------------------------------------------------------------


class FailingCommit(CommitProtocol):
    """A commit that never happens (the storage refuses it)."""

    async def commit(self, store: Store, key: str, data: bytes, **kwargs: Any) -> None:  # type: ignore[override]
        raise StorageError(f"{store.describe(key)}: service unavailable")


def test_a_failed_overwrite_never_leaves_the_old_index_over_new_data(directory: str) -> None:
    """Replacing a checkpoint whose commit then fails: the prefix holds the old checkpoint whole,
    or none at all; never the old index over the new save's data files."""
    prefix = f"{directory}/ck"
    old = {"w": np.arange(1000, dtype=np.float32)}
    remoteckpt.save(old, prefix)
    with pytest.raises(StorageError, match="service unavailable"):
        remoteckpt.save({"w": -np.arange(1000, dtype=np.float32)}, prefix, overwrite=True, commit=FailingCommit())
    try:
        restored = remoteckpt.load(prefix)
    except remoteckpt.CheckpointNotFoundError:
        return
    np.testing.assert_array_equal(restored["w"], old["w"])
