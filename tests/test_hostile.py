"""Hostile and damaged input: only remoteckpt errors, quickly, with bounded memory."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import remoteckpt
from remoteckpt.engine.plan import plan_bundle
from remoteckpt.errors import CheckpointError, CorruptCheckpointError
from remoteckpt.format.bundle import BundleEntry, BundleHeader, decode_index, encode_index, make_header
from remoteckpt.format.coding import crc32c, encode_fixed32, encode_varint, mask_crc


def _valid_index() -> bytes:
    plan = plan_bundle(checksum=True, tensors={"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.array([b"x", b"yz"], object),
                        "n": np.int64(3)})
    out = io.BytesIO()
    encode_index(make_header(1), plan.entries, out)
    return out.getvalue()


VALID = _valid_index()


def _decode(data: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """The decoded index, as bytes that compare: its header and every entry."""
    index = decode_index(lambda o, n: data[o : o + n], len(data))
    return index.header.SerializeToString(), {k: e.SerializeToString() for k, e in index.entries.items()}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_never_escape(data: bytes) -> None:
    try:
        _decode(data)
    except CorruptCheckpointError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.integers(1, 255))
def test_every_single_byte_change_is_detected(position: int, xor: int) -> None:
    data = bytearray(VALID)
    data[position] ^= xor
    footer = range(len(VALID) - 48, len(VALID) - 8)
    if position not in footer:
        with pytest.raises(CorruptCheckpointError):
            _decode(bytes(data))
        return
    # The footer's block handles are varints padded to 40 bytes: its padding is ignored by
    # design (TF ignores it too), and a handle's last byte given a continuation bit into a zero
    # of the padding is an over-long varint of the same value.  A change there is detected or
    # means the same index; never another one.
    try:
        decoded = _decode(bytes(data))
    except CorruptCheckpointError:
        return
    assert decoded == _decode(VALID)


def test_every_truncation_is_detected() -> None:
    for cut in range(len(VALID)):
        with pytest.raises(CorruptCheckpointError):
            _decode(VALID[:cut])


def _write_index(directory: Path, entries: dict[bytes, BundleEntry], header: BundleHeader | None = None) -> str:
    out = io.BytesIO()
    encode_index(header or make_header(1), entries, out)
    (directory / "ck.index").write_bytes(out.getvalue())
    (directory / "ck.data-00000-of-00001").write_bytes(bytes(64))
    return str(directory / "ck")


@pytest.mark.parametrize("shape,dtype,size", [
    ([2**62], 1, 64),            # claims 2^62 floats
    ([2**40, 2**40], 1, 64),     # element count overflows int64
    ([-1], 1, 4),                # negative dimension
    ([10**9], 7, 64),            # a billion strings in 64 bytes
    ([4], 1, 2**60),             # size far beyond the file
    ([2**61], 7, 2**61 + 4),     # 2^61 strings: their array of objects beyond an address space
])
def test_huge_claims_fail_before_allocating(tmp_path: Path, shape: list[int], dtype: int, size: int) -> None:
    entry = BundleEntry(dtype=dtype, size=size)
    for d in shape:
        entry.shape.dim.add(size=d)
    prefix = _write_index(tmp_path, {b"x": entry})
    with pytest.raises(CheckpointError):
        remoteckpt.CheckpointReader(prefix).get_tensor("x")


def test_huge_shard_count_and_newer_version(tmp_path: Path) -> None:
    header = make_header(2**30)
    with pytest.raises(CorruptCheckpointError, match="shards"):
        remoteckpt.CheckpointReader(_write_index(tmp_path, {}, header))
    newer = make_header(1)
    newer.version.min_consumer = 99
    with pytest.raises(CorruptCheckpointError, match="newer"):
        remoteckpt.CheckpointReader(_write_index(tmp_path, {}, newer))


def test_unsupported_dtype_names_tensor(tmp_path: Path) -> None:
    entry = BundleEntry(dtype=21, size=4)  # DT_VARIANT
    entry.shape.SetInParent()
    reader = remoteckpt.CheckpointReader(_write_index(tmp_path, {b"v": entry}))
    with pytest.raises(remoteckpt.UnsupportedDTypeError, match="'v'.*variant"):
        reader.get_tensor("v")


def test_big_endian_bundle_reads(tmp_path: Path) -> None:
    """A bundle from a big-endian host: payloads and the string length checksum are BE."""
    floats = np.array([1.5, -2.0, 3.25], dtype=">f4")
    cplx = np.array([1 + 2j], dtype=">c8")
    data = bytearray()
    entries = {}

    def add(name: bytes, dtype: int, shape: list[int], payload: bytes) -> None:
        entry = BundleEntry(dtype=dtype, offset=len(data), size=len(payload), crc32c=mask_crc(crc32c(payload)))
        entry.shape.SetInParent()
        for d in shape:
            entry.shape.dim.add(size=d)
        entries[name] = entry
        data.extend(payload)

    add(b"f", 1, [3], floats.tobytes())
    add(b"c", 8, [1], cplx.tobytes())
    strings = [b"hi", b"there"]
    length_crc = crc32c(b"".join(len(s).to_bytes(4, "big") for s in strings))
    lc = mask_crc(length_crc).to_bytes(4, "big")
    crc = crc32c(b"".join(strings), crc32c(lc, length_crc))
    payload = b"".join(encode_varint(len(s)) for s in strings) + lc + b"".join(strings)
    add(b"s", 7, [2], payload)
    entries[b"s"].crc32c = mask_crc(crc)
    header = make_header(1)
    header.endianness = BundleHeader.BIG
    (tmp_path / "be.data-00000-of-00001").write_bytes(bytes(data))
    out = io.BytesIO()
    encode_index(header, entries, out)
    (tmp_path / "be.index").write_bytes(out.getvalue())
    got = remoteckpt.load(tmp_path / "be")
    np.testing.assert_array_equal(got["f"], floats.astype("<f4"))
    np.testing.assert_array_equal(got["c"], cplx.astype("<c8"))
    assert list(got["s"]) == strings
    assert encode_fixed32(1) == b"\x01\x00\x00\x00"


def test_a_huge_index_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """An index file claiming more than MAX_INDEX_BYTES (a sparse 2 GiB file here) is refused
    from its size alone: nothing is allocated or read."""
    from remoteckpt.reader import MAX_INDEX_BYTES

    with open(tmp_path / "ck.index", "wb") as f:
        f.truncate(MAX_INDEX_BYTES + 1)
    with pytest.raises(CorruptCheckpointError, match=r"ck\.index is \d+ bytes, more than"):
        remoteckpt.CheckpointReader(tmp_path / "ck")



def _entry(dtype: int, shape: list[int], *, offset: int = 0, size: int = 0, shard: int = 0) -> BundleEntry:
    entry = BundleEntry(dtype=dtype, offset=offset, size=size, shard_id=shard)
    entry.shape.SetInParent()
    for d in shape:
        entry.shape.dim.add(size=d)
    return entry


@pytest.mark.parametrize("dtype,count", [(7, 10**8), (1, 2**28)], ids=["strings", "floats"])
def test_a_claim_past_its_data_file_is_refused_without_filling_memory(tmp_path: Path, dtype: int,
                                                                     count: int) -> None:
    """A reader does not know its data files' sizes before their first answers.  An entry that
    claims far more bytes than its 64-byte data file holds is refused naming tensor and file,
    and nothing near its size is filled: 10^8 strings (an array of 10^8 objects and a
    100 MB payload, were they allocated) are refused by one ranged read of the claim's last
    byte first; a GiB of floats (whose output is only mapped) by the first answer."""
    import tracemalloc

    size = count + 4 if dtype == 7 else 4 * count
    prefix = _write_index(tmp_path, {b"x": _entry(dtype, [count], size=size)})
    reader = remoteckpt.CheckpointReader(prefix)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptCheckpointError, match=rf"'x'.*bytes 0\.\.{size} lie outside .*ck\.data-00000-of-00001 "
                                                         r"\(64 bytes\)"):
            reader.get_tensor("x")
        touched = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        reader.close()
    assert touched < (16 * 2**20 if dtype == 7 else 4 * count + 16 * 2**20)


@pytest.mark.parametrize("shape", [[-1, 0], [0, -1], [-2, 0], [3, -1, 0]])
def test_negative_dimensions_are_refused_even_with_no_elements(tmp_path: Path, shape: list[int]) -> None:
    prefix = _write_index(tmp_path, {b"x": _entry(1, shape)})
    with pytest.raises(CorruptCheckpointError, match=r"'x'.*invalid shape"):
        remoteckpt.CheckpointReader(prefix).get_tensor("x")


@pytest.mark.parametrize("shard,shards", [(1, 1), (2, 2), (7, 1)])
def test_an_entry_in_a_shard_past_the_last_is_refused(tmp_path: Path, shard: int, shards: int) -> None:
    prefix = _write_index(tmp_path, {b"x": _entry(1, [1], size=4, shard=shard)}, make_header(shards))
    with pytest.raises(CorruptCheckpointError, match=f"shard {shard} of a {shards}-shard bundle"):
        remoteckpt.CheckpointReader(prefix)


def test_format_versions_a_version_1_reader_may_read(tmp_path: Path) -> None:
    header = make_header(1)
    header.version.min_consumer = 1  # "readers of version 1 and up": us
    header.version.producer = 2
    prefix = _write_index(tmp_path, {b"x": _entry(1, [0])}, header)
    assert remoteckpt.CheckpointReader(prefix).get_tensor("x").shape == (0,)
    header.version.bad_consumers.append(1)
    with pytest.raises(CorruptCheckpointError, match="newer"):
        remoteckpt.CheckpointReader(_write_index(tmp_path, {b"x": _entry(1, [0])}, header))


def _sliced_index(tmp_path: Path, full: list[int], boxes: list[list[tuple[int, int]]]) -> str:
    """An index of tensor "w" (float32, `full`) stored as `boxes` ((start, length) per dim),
    each box's entry pointing at zeros of the right size in the data file."""
    from remoteckpt.format.slices import Box, box_to_proto, slice_key

    entries = {b"w": _entry(1, full)}
    offset = 0
    for extents in boxes:
        box = Box(tuple(s for s, _ in extents), tuple(n for _, n in extents), tuple(False for _ in extents))
        entries[b"w"].slices.append(box_to_proto(box))
        size = 4 * int(np.prod([n for _, n in extents]))
        entries[slice_key(b"w", box)] = _entry(1, [n for _, n in extents], offset=offset, size=size)
        entries[slice_key(b"w", box)].crc32c = mask_crc(crc32c(bytes(size)))
        offset += size
    prefix = _write_index(tmp_path, entries)
    (tmp_path / "ck.data-00000-of-00001").write_bytes(bytes(max(offset, 64)))
    return prefix


def test_stored_boxes_reaching_past_their_tensor_are_refused(tmp_path: Path) -> None:
    prefix = _sliced_index(tmp_path, [4, 2], [[(0, 2), (0, 2)], [(2, 4), (0, 2)]])
    with pytest.raises(CorruptCheckpointError, match="outside dimension of size 4"):
        remoteckpt.CheckpointReader(prefix).get_tensor("w")


def test_overlapping_stored_boxes_are_refused(tmp_path: Path) -> None:
    prefix = _sliced_index(tmp_path, [4, 2], [[(0, 3), (0, 2)], [(2, 2), (0, 2)]])
    reader = remoteckpt.CheckpointReader(prefix)
    with pytest.raises(CorruptCheckpointError, match="'w'.*stored slices overlap"):
        reader.get_tensor("w")
    with pytest.raises(CorruptCheckpointError, match="overlap"):
        reader.get_slice("w", (slice(0, 1),))
    np.testing.assert_array_equal(
        remoteckpt.CheckpointReader(_sliced_index(tmp_path, [4, 2], [[(0, 2), (0, 2)], [(2, 2), (0, 2)]]))
        .get_tensor("w"), np.zeros((4, 2), np.float32))
