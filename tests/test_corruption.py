"""Damaged checkpoints: every bit flip, random byte change, truncation and swapped shard is
detected when the tensors are read, with a `CorruptCheckpointError` naming the file and the
tensor; a tensor whose bytes are intact still reads exactly.

Files: a 2-shard checkpoint written by two workers (sliced tensors, strings, scalars, a
tensor with per-chunk CRCs), its ``.index``, both data files and the ``checkpoint`` state file.
(tests/test_hostile.py fuzzes `decode_index` alone; here every damage goes through the full
reader, and the data files and state file are covered too.)
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import remoteckpt
from remoteckpt.engine import loop
from remoteckpt.errors import CorruptCheckpointError
from remoteckpt.format.block import iter_block
from remoteckpt.format.bundle import data_filename
from remoteckpt.format.coding import decode_varint
from remoteckpt.format.table import BLOCK_TRAILER_SIZE, FOOTER_SIZE
from remoteckpt.management.state import format_state, parse_state
from remoteckpt.storage import open_store

CHUNK = 4096  # small CRC chunks, so that "big" has several
OPTIONS = remoteckpt.IOOptions(crc_chunk=CHUNK, commit_timeout=60, poll_interval=0.01)


def worker_tensors(rank: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed * 10 + rank)
    if rank == 0:
        return {
            "f32": rng.standard_normal(300).astype(np.float32),
            "i64": rng.integers(-2**62, 2**62, 17),
            "words": np.array([b"", b"alpha", bytes(rng.integers(0, 256, 40, dtype=np.uint8)), "ünï".encode()],
                              dtype=object),
            "scalar": np.float64(rng.standard_normal()),
            "flags": rng.integers(0, 2, 5).astype(bool),
            "c64": (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex64),
            "half": rng.standard_normal(7).astype(np.float16),
            "big": rng.standard_normal(3 * CHUNK // 4 + 100).astype(np.float32),  # 4 chunks, the last short
            "shared": remoteckpt.Slice(rng.standard_normal((4, 6)).astype(np.float32), (8, 6), (0, 0)),
        }
    return {
        "r1/vec": rng.integers(0, 1000, 50).astype(np.int32),
        "r1/words": np.array([bytes([120 + seed]) * 3, b"yz"], dtype=object).reshape(2, 1),
        "shared": remoteckpt.Slice(rng.standard_normal((4, 6)).astype(np.float32), (8, 6), (4, 0)),
    }


def expected(seed: int) -> dict[str, np.ndarray]:
    zero, one = worker_tensors(0, seed), worker_tensors(1, seed)
    out = {k: np.asarray(v) for k, v in {**zero, **one}.items() if k != "shared"}
    out["shared"] = np.concatenate([zero["shared"].array, one["shared"].array])
    return out


def save_two_workers(prefix: str, seed: int) -> None:
    """Two workers (threads: they meet through the storage, as processes do)."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(remoteckpt.save, worker_tensors(r, seed), prefix, rank=r, world_size=2,
                               save_id="corruption", options=OPTIONS)
                   for r in (0, 1)]
        for f in futures:
            f.result(timeout=120)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "O":
        return [bytes(x) for x in a.reshape(-1)] == [bytes(x) for x in b.reshape(-1)]
    return a.tobytes() == b.tobytes()


@dataclass(frozen=True)
class Span:
    """The bytes of one stored entry: which tensor reading them depends on."""

    tensor: str
    shard: int
    start: int
    end: int


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Span]]:
    directory = tmp_path_factory.mktemp("pristine")
    save_two_workers(str(directory / "ck"), seed=1)
    save_two_workers(str(directory / "other"), seed=2)  # same layout, other values
    spans = []
    with remoteckpt.CheckpointReader(directory / "ck") as reader:
        index = reader.index
        for name in reader.get_variable_to_shape_map():
            key = name.encode()
            entry = index.entries[key]
            stored = [index.entries[k] for _, k in index.slice_boxes(key)] if entry.slices else [entry]
            spans += [Span(name, e.shard_id, e.offset, e.offset + e.size) for e in stored if e.size]
    return directory, spans


@pytest.fixture
def damaged(pristine: tuple[Path, list[Span]], tmp_path: Path) -> Iterator[tuple[Path, list[Span]]]:
    directory, spans = pristine
    for f in directory.iterdir():
        shutil.copy(f, tmp_path / f.name)
    yield tmp_path, spans


def data_path(directory: Path, shard: int, name: str = "ck") -> Path:
    return directory / data_filename(name, shard, 2)


class Checker:
    """Reads every tensor of a checkpoint through one reader; for each damage, the tensors
    whose bytes were touched must raise (naming tensor and file), the others read exactly."""

    def __init__(self, prefix: Path, spans: list[Span]) -> None:
        self.prefix, self.spans = prefix, spans
        self.want = expected(1)
        self.reader = remoteckpt.CheckpointReader(prefix, options=OPTIONS)
        self.names = sorted(self.want)
        self.detected = 0

    def check(self, damaged: set[str], shard: int, what: str) -> None:
        file = str(data_path(self.prefix.parent, shard))
        for name in sorted(damaged):
            with pytest.raises(CorruptCheckpointError) as info:
                self.reader.get_tensor(name)
            message = str(info.value)
            assert repr(name) in message and file in message, (what, message)
            self.detected += 1
        intact = [n for n in self.names if n not in damaged]
        got = loop.run(self.reader.read_many(intact))
        for name in intact:
            assert same(got[name], self.want[name]), (what, name)

    def close(self) -> None:
        self.reader.close()


def flip(path: Path, position: int, xor: int) -> None:
    """Bit rot: one byte changed in place, the file's times left as they were (the medium,
    not a writer, changed it; a reader open on the file must call it corrupt, not replaced)."""
    before = path.stat()
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ xor]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _positions(spans: list[Span], shard: int, rng: random.Random) -> list[int]:
    """Every byte of every small tensor; for "big" (several CRC chunks), the bytes around
    each chunk boundary and random ones."""
    out: list[int] = []
    for s in spans:
        if s.shard != shard:
            continue
        if s.tensor != "big":
            out += range(s.start, s.end)
            continue
        for k in range(0, s.end - s.start, CHUNK):
            out += range(s.start + max(0, k - 8), min(s.end, s.start + k + 8))
        out += [rng.randrange(s.start, s.end) for _ in range(64)]
        out.append(s.end - 1)
    return sorted(set(out))


def test_every_byte_of_the_data_files(damaged: tuple[Path, list[Span]]) -> None:
    """Each byte of both data files (around chunk boundaries and a sample for the large
    tensor), one bit flipped, the bit rotating with the position; then random byte changes at
    random positions: the tensor owning the byte raises, naming itself and the file; the other
    tensors read exactly (checked on every 8th damage).  For "big" (per-chunk CRCs) boxes
    are read too: a box raises iff it needs a damaged chunk."""
    directory, spans = damaged
    checker = Checker(directory / "ck", spans)
    rng = random.Random(5)
    big = next(s for s in spans if s.tensor == "big")
    damages = 0
    try:
        for shard in (0, 1):
            path = data_path(directory, shard)
            size = path.stat().st_size
            owners = {p: s.tensor for s in spans if s.shard == shard for p in range(s.start, s.end)}
            assert len(owners) == size  # the data file is nothing but payloads
            changes = [(p, 1 << (p % 8)) for p in _positions(spans, shard, rng)]
            changes += [(rng.randrange(size), rng.randrange(1, 256)) for _ in range(100)]
            for i, (position, xor) in enumerate(changes):
                flip(path, position, xor)
                what = f"shard {shard} byte {position} ^ {xor:#x}"
                if i % 8 == 0:
                    checker.check({owners[position]}, shard, what)
                else:
                    with pytest.raises(CorruptCheckpointError) as info:
                        checker.reader.get_tensor(owners[position])
                    assert repr(owners[position]) in str(info.value) and str(path) in str(info.value), what
                damages += 1
                if owners[position] == "big":
                    chunk = (position - big.start) // CHUNK
                    for lo in (0, CHUNK // 4 * chunk, CHUNK // 4 + 5):
                        hi = lo + 7
                        touched = (lo * 4) // CHUNK <= chunk <= (hi * 4 - 1) // CHUNK
                        if touched:
                            with pytest.raises(CorruptCheckpointError, match="'big'"):
                                checker.reader.get_slice("big", (slice(lo, hi),))
                        else:
                            assert same(checker.reader.get_slice("big", (slice(lo, hi),)), checker.want["big"][lo:hi])
                flip(path, position, xor)
        assert damages > 2000
    finally:
        checker.close()


def _index_structure(data: bytes) -> list[int]:
    """Offsets of every structural boundary of an index: each block's start, end of its
    contents, end of its trailer; the footer's start and each of its fields."""
    footer = data[-FOOTER_SIZE:]
    meta_offset, pos = decode_varint(footer, 0, 40)
    meta_size, pos = decode_varint(footer, pos, 40)
    index_offset, pos = decode_varint(footer, pos, 40)
    index_size, handles_end = decode_varint(footer, pos, 40)
    blocks = [(meta_offset, meta_size), (index_offset, index_size)]
    for _, handle in iter_block(data[index_offset:index_offset + index_size]):
        offset, p = decode_varint(handle, 0, len(handle))
        size, _ = decode_varint(handle, p, len(handle))
        blocks.append((offset, size))
    cuts = {0}
    for offset, size in blocks:
        cuts |= {offset, offset + 1, offset + size - 1, offset + size, offset + size + BLOCK_TRAILER_SIZE - 1,
                 offset + size + BLOCK_TRAILER_SIZE}
    base = len(data) - FOOTER_SIZE
    cuts |= {base, base + 1, base + handles_end, base + 40, len(data) - 1}
    return sorted(c for c in cuts if 0 <= c < len(data))


def test_every_bit_of_the_index(damaged: tuple[Path, list[Span]]) -> None:
    """All 8 bit flips of every byte of the index, and random byte changes: the reader
    refuses to open it (naming the index file), except in the footer's padding, which no
    reader looks at (TF neither), and the one flip that re-encodes the same handle: there,
    every tensor still reads exactly."""
    directory, spans = damaged
    path = directory / "ck.index"
    original = path.read_bytes()
    footer = range(len(original) - FOOTER_SIZE, len(original) - 8)
    padding = range(len(original) - FOOTER_SIZE + _footer_handles_end(original), len(original) - 8)
    rng = random.Random(6)
    changes = [(p, 1 << b) for p in range(len(original)) for b in range(8)]
    changes += [(rng.randrange(len(original)), rng.randrange(1, 256)) for _ in range(300)]
    ignored = 0
    for position, xor in changes:
        data = bytearray(original)
        data[position] ^= xor
        path.write_bytes(data)
        try:
            reader = remoteckpt.CheckpointReader(directory / "ck")
        except CorruptCheckpointError as exc:
            assert str(path) in str(exc), exc
            continue
        # Only the footer's padding, and an equivalent encoding of its last handle (the
        # continuation bit of the varint's last byte set: the next byte, padding, is 0),
        # change nothing that a reader interprets.
        assert position in footer, (position, xor)
        ignored += 1
        got = remoteckpt.load(directory / "ck")
        reader.close()
        assert all(same(got[n], v) for n, v in expected(1).items())
    assert ignored >= sum(1 for p, _ in changes if p in padding)
    assert ignored <= sum(1 for p, _ in changes if p in padding) + 2


def _footer_handles_end(data: bytes) -> int:
    footer = data[-FOOTER_SIZE:]
    pos = 0
    for _ in range(4):
        _, pos = decode_varint(footer, pos, 40)
    return pos


def test_index_truncated_at_every_structural_boundary(damaged: tuple[Path, list[Span]]) -> None:
    directory, _ = damaged
    path = directory / "ck.index"
    original = path.read_bytes()
    cuts = _index_structure(original)
    assert len(cuts) >= 12
    for cut in cuts:
        path.write_bytes(original[:cut])
        with pytest.raises(CorruptCheckpointError) as info:
            remoteckpt.CheckpointReader(directory / "ck")
        assert str(path) in str(info.value)
    path.write_bytes(original + b"\0")  # one byte too many: the footer is no longer last
    with pytest.raises(CorruptCheckpointError):
        remoteckpt.CheckpointReader(directory / "ck")


def test_data_truncated_at_every_tensor_and_chunk_boundary(damaged: tuple[Path, list[Span]]) -> None:
    """Cut a data file at each entry's start, middle and end, and at each CRC chunk boundary
    of "big": every tensor with bytes past the cut raises (naming it and the file, before
    anything is read), every tensor before it reads exactly."""
    directory, spans = damaged
    for shard in (0, 1):
        path = data_path(directory, shard)
        original = path.read_bytes()
        mine = [s for s in spans if s.shard == shard]
        cuts = {c for s in mine for c in (s.start, (s.start + s.end) // 2, s.end - 1)}
        big = [s for s in mine if s.tensor == "big"]
        cuts |= {b.start + k * CHUNK + d for b in big for k in range(1, 4) for d in (-1, 0, 1)}
        for cut in sorted(c for c in cuts if c < len(original)):
            path.write_bytes(original[:cut])
            checker = Checker(directory / "ck", spans)
            try:
                checker.check({s.tensor for s in mine if s.end > cut}, shard, f"shard {shard} cut at {cut}")
            finally:
                checker.close()
        path.write_bytes(original)


def test_a_shard_swapped_in_from_another_checkpoint(damaged: tuple[Path, list[Span]]) -> None:
    """`other` has the same layout (same names, shapes, offsets) and other values: a data
    file copied from it is caught by the CRCs of every tensor it holds."""
    directory, spans = damaged
    for shard in (0, 1):
        original = data_path(directory, shard).read_bytes()
        swapped = data_path(directory, shard, "other").read_bytes()
        assert len(swapped) == len(original) and swapped != original
        data_path(directory, shard).write_bytes(swapped)
        checker = Checker(directory / "ck", spans)
        try:
            checker.check({s.tensor for s in spans if s.shard == shard}, shard, f"shard {shard} swapped")
        finally:
            checker.close()
        data_path(directory, shard).write_bytes(original)


def test_a_missing_shard_is_named(damaged: tuple[Path, list[Span]]) -> None:
    directory, spans = damaged
    data_path(directory, 1).unlink()
    with remoteckpt.CheckpointReader(directory / "ck") as reader:
        with pytest.raises(remoteckpt.CheckpointNotFoundError, match=r"'r1/vec'.*data-00001-of-00002"):
            reader.get_tensor("r1/vec")
        assert same(reader.get_tensor("f32"), expected(1)["f32"])


# --- the state file ---------------------------------------------------------------------------

STATE = format_state("ck-30", ["ck-10", "ck-20", "ck-30"], [1795310858.25, 1795310900.5, 1795310999.75],
                     1795310000.0)


def test_every_bit_of_the_state_file(tmp_path: Path) -> None:
    """The state file is TensorFlow's text proto, with no checksum: a damaged one is refused
    with a `CorruptCheckpointError` naming it, or parses to paths that stay inside the
    directory (a flipped digit can name another checkpoint: latest_checkpoint then returns it
    only if it has an index, else None).  Never another exception, never a path outside."""
    directory = str(tmp_path)
    refused = parsed = 0
    rng = random.Random(7)
    changes = [(p, 1 << b) for p in range(len(STATE)) for b in range(8)]
    changes += [(rng.randrange(len(STATE)), rng.randrange(1, 256)) for _ in range(500)]
    for position, xor in changes:
        data = bytearray(STATE)
        data[position] ^= xor
        try:
            state = parse_state(bytes(data), directory, f"{directory}/checkpoint")
        except CorruptCheckpointError as exc:
            assert f"{directory}/checkpoint" in str(exc)
            refused += 1
            continue
        parsed += 1
        for name in (state.model_checkpoint_path, *state.all_model_checkpoint_paths):
            assert name and ".." not in name.split("/") and not name.startswith("/"), name
            assert Path(state.prefix(name)).resolve().is_relative_to(tmp_path.resolve()), name
    assert refused > parsed > 0


def test_damaged_state_file_through_latest_checkpoint(tmp_path: Path) -> None:
    saver = remoteckpt.Saver(max_to_keep=2)
    for step in (10, 20):
        saver.save({"w": np.full(3, step)}, tmp_path / "ck", global_step=step)
    state_path = tmp_path / "checkpoint"
    original = state_path.read_bytes()
    rng = random.Random(8)
    for _ in range(200):
        data = bytearray(original)
        position = rng.randrange(len(data))
        data[position] ^= 1 << rng.randrange(8)
        state_path.write_bytes(data)
        try:
            latest = remoteckpt.latest_checkpoint(tmp_path)
        except CorruptCheckpointError as exc:
            assert str(state_path) in str(exc)
            continue
        assert latest in (None, str(tmp_path / "ck-10"), str(tmp_path / "ck-20")), latest
        if latest is not None:
            assert remoteckpt.load(latest)["w"][0] in (10, 20)
    state_path.write_bytes(original[: len(original) // 2])
    try:
        assert remoteckpt.latest_checkpoint(tmp_path) in (None, str(tmp_path / "ck-10"), str(tmp_path / "ck-20"))
    except CorruptCheckpointError:
        pass


# --- on S3 ---------------------------------------------------------------------------------------

def test_damage_on_s3_is_detected(s3_prefix: str) -> None:
    """The S3 read path (ranged GETs streamed into place) checks the same CRCs: one flipped
    byte per tensor, a truncated data object, a swapped shard."""
    prefix, other = f"{s3_prefix}/ck", f"{s3_prefix}/other"
    save_two_workers(prefix, 1)
    save_two_workers(other, 2)
    with remoteckpt.CheckpointReader(prefix) as reader:
        index = reader.index
        spans = []
        for name in reader.get_variable_to_shape_map():
            entry = index.entries[name.encode()]
            stored = [index.entries[k] for _, k in index.slice_boxes(name.encode())] if entry.slices else [entry]
            spans += [Span(name, e.shard_id, e.offset, e.offset + e.size) for e in stored if e.size]

    async def rewrite(key: str, change: Any) -> bytes:
        store = open_store(s3_prefix)
        try:
            original = await store.get(key)
            await store.put(key, change(original))
            return original
        finally:
            await store.close()

    want = expected(1)
    rng = random.Random(9)
    for span in spans:
        key = data_filename("ck", span.shard, 2)
        position = rng.randrange(span.start, span.end)

        def damage(data: bytes, position: int = position) -> bytes:
            return data[:position] + bytes([data[position] ^ 0x10]) + data[position + 1:]

        original = loop.run(rewrite(key, damage))
        with remoteckpt.CheckpointReader(prefix) as reader:
            with pytest.raises(CorruptCheckpointError, match=repr(span.tensor)):
                reader.get_tensor(span.tensor)
            others = [n for n in want if n != span.tensor]
            got = loop.run(reader.read_many(others))
            assert all(same(got[n], want[n]) for n in others)
        loop.run(rewrite(key, lambda _: original))
    key = data_filename("ck", 0, 2)
    cut = next(s for s in spans if s.tensor == "big").start + 10
    loop.run(rewrite(key, lambda data: data[:cut]))
    with remoteckpt.CheckpointReader(prefix) as reader:
        with pytest.raises(CorruptCheckpointError, match=r"'big'.*lie outside"):
            reader.get_tensor("big")

    async def swap_in_other() -> None:  # shard 0 of the checkpoint with the same layout
        store = open_store(s3_prefix)
        try:
            await store.put(key, await store.get(data_filename("other", 0, 2)))
        finally:
            await store.close()

    loop.run(swap_in_other())
    with remoteckpt.CheckpointReader(prefix) as reader:
        for name in {s.tensor for s in spans if s.shard == 0}:
            with pytest.raises(CorruptCheckpointError, match=repr(name)):
                reader.get_tensor(name)
        assert same(reader.get_tensor("r1/vec"), want["r1/vec"])
