"""The format layer against hand-checked bytes (the worked example of the bundle spec, §13)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from remoteckpt.engine.plan import Slice, plan_bundle
from remoteckpt.errors import CorruptCheckpointError
from remoteckpt.format import coding
from remoteckpt.format.block import BlockBuilder, iter_block
from remoteckpt.format.bundle import decode_index, encode_index, make_header
from remoteckpt.format.payload import decode_strings, encode_strings
from remoteckpt.format.slices import Box, box_from_proto, box_to_proto, slice_key
from remoteckpt.format.table import TableBuilder, read_table, short_successor, shortest_separator

# TF 2.21's SaveV2(["a", "b_str", "c"], [float32 [1, 2], string ["hi", ""], int64 7]).
WORKED_DATA = bytes.fromhex("0000803f00000040" "0200 78270b34 6869".replace(" ", "") + "0700000000000000")
WORKED_INDEX = bytes.fromhex(
    "000006" "08011a020801"
    "00010f" "61" "0801120412020802280835593ce535"
    "000511" "625f737472" "08071204120208022008280835 9e9e48ed".replace(" ", "")
    + "00010d" "63" "080912002010280835bbd79f11"
    "00000000" "01000000" "00f98f1286"
    "0000000001000000" "00c0f2a1b0"
    "000102" "64" "004e" "00000000" "01000000" "00c7f7f60a"
    "5308600e" + "00" * 36 + "57fb808b247547db"
)


def _table(entries: dict[bytes, bytes], **kw: int) -> bytes:
    out = io.BytesIO()
    builder = TableBuilder(out, **kw)
    for k in sorted(entries):
        builder.add(k, entries[k])
    builder.finish()
    return out.getvalue()


def test_worked_example_is_byte_identical() -> None:
    plan = plan_bundle(checksum=True, tensors={"a": np.array([1, 2], np.float32), "b_str": np.array([b"hi", b""], object),
                        "c": np.int64(7)})
    assert b"".join(bytes(c) for c in plan.chunks) == WORKED_DATA
    out = io.BytesIO()
    encode_index(make_header(1), plan.entries, out)
    assert out.getvalue() == WORKED_INDEX
    assert len(WORKED_INDEX) == 163


def test_worked_example_decodes() -> None:
    index = decode_index(lambda o, n: WORKED_INDEX[o : o + n], len(WORKED_INDEX))
    assert index.num_shards == 1 and not index.big_endian
    assert sorted(index.entries) == [b"a", b"b_str", b"c"]
    assert index.entries[b"b_str"].offset == 8 and index.entries[b"c"].size == 8


def test_crc32c_and_mask() -> None:
    assert coding.crc32c(b"123456789") == 0xE3069283
    assert coding.mask_crc(0) == 0xA282EAD8
    for value in (0, 1, 0xE3069283, 0xFFFFFFFF):
        assert coding.unmask_crc(coding.mask_crc(value)) == value
    assert coding.crc32c(b"6789", coding.crc32c(b"12345")) == 0xE3069283


@given(st.integers(0, 2**64 - 1))
def test_varint_round_trip(value: int) -> None:
    data = coding.encode_varint(value)
    assert coding.decode_varint(data, 0) == (value, len(data))


def test_varint_rejects_truncation_and_overlong() -> None:
    with pytest.raises(CorruptCheckpointError):
        coding.decode_varint(b"\x80\x80", 0)
    with pytest.raises(CorruptCheckpointError):
        coding.decode_varint(b"\xff" * 11, 0)


def test_empty_block_bytes() -> None:
    assert BlockBuilder().finish() == bytes.fromhex("0000000001000000")


def test_block_restarts_every_16_entries() -> None:
    builder = BlockBuilder()
    keys = [b"key%03d" % i for i in range(40)]
    for k in keys:
        builder.add(k, b"v")
    block = builder.finish()
    assert int.from_bytes(block[-4:], "little") == 3  # restarts at entries 0, 16, 32
    assert [k for k, _ in iter_block(block)] == keys


def test_separator_and_successor() -> None:
    assert shortest_separator(b"abcd", b"abzz") == b"abd"
    assert shortest_separator(b"abc", b"abd") == b"abc"  # no room between c and d
    assert shortest_separator(b"ab", b"abc") == b"ab"  # prefix: unchanged
    assert short_successor(b"c") == b"d"
    assert short_successor(b"\xff\xffa") == b"\xff\xffb"
    assert short_successor(b"\xff\xff") == b"\xff\xff"


def test_table_spans_blocks_and_reads_back() -> None:
    entries = {b"k%06d" % i: bytes(30) for i in range(20_001)}
    data = _table(entries)
    got = dict((k, bytes(v)) for k, v in read_table(lambda o, n: data[o : o + n], len(data)))
    assert got == entries


def test_huge_entry_gets_its_own_block() -> None:
    entries = {b"a": b"1", b"b": bytes(600_000), b"c": b"3"}
    data = _table(entries)
    assert dict((k, bytes(v)) for k, v in read_table(lambda o, n: data[o : o + n], len(data))) == entries


def test_reader_accepts_other_block_sizes() -> None:
    entries = {b"k%04d" % i: b"v" * i for i in range(500)}
    data = _table(entries, block_size=1024)
    assert len(list(read_table(lambda o, n: data[o : o + n], len(data)))) == 500


@pytest.mark.parametrize("cut", [0, 10, 47])
def test_table_too_short(cut: int) -> None:
    with pytest.raises(CorruptCheckpointError, match="too short"):
        list(read_table(lambda o, n: WORKED_INDEX[o : o + n], cut))


def test_table_bad_magic_and_block_crc() -> None:
    bad_magic = WORKED_INDEX[:-1] + b"\x00"
    with pytest.raises(CorruptCheckpointError, match="magic"):
        list(read_table(lambda o, n: bad_magic[o : o + n], len(bad_magic)))
    flipped = bytearray(WORKED_INDEX)
    flipped[20] ^= 0x01
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        list(read_table(lambda o, n: flipped[o : o + n], len(flipped)))


def test_string_payload_bytes() -> None:
    chunks, crc = encode_strings([b"hi", b""])
    assert b"".join(chunks) == bytes.fromhex("020078270b346869")
    empty_chunks, empty_crc = encode_strings([])
    assert b"".join(empty_chunks) == bytes.fromhex("d8ea82a2") and empty_crc == 0x640CC1F6
    values, raw_crc = decode_strings(b"".join(chunks), 2)
    assert values == [b"hi", b""] and coding.mask_crc(raw_crc) == crc


def test_string_length_checksum_is_verified() -> None:
    payload = bytearray(b"".join(encode_strings([b"hi", b"yo"])[0]))
    payload[0] = 1  # claim a shorter first element
    with pytest.raises(CorruptCheckpointError, match="length checksum"):
        decode_strings(payload, 2)


def test_slice_keys_match_tf() -> None:
    first = Box((0, 0), (2, 4), (False, True))
    second = Box((2, 0), (2, 4), (False, True))
    assert slice_key(b"p", first).hex() == "0070000101028082807f"
    assert slice_key(b"p", second).hex() == "0070000101028282807f"
    assert slice_key(b"a\x00\xff", first).startswith(bytes.fromhex("0061 00ff ff00 0001".replace(" ", "")))
    assert box_to_proto(first).SerializeToString() == bytes.fromhex("0a0210020a00")
    assert box_to_proto(second).SerializeToString() == bytes.fromhex("0a04080210020a00")
    assert box_from_proto(box_to_proto(second), (4, 4)) == second


def test_sliced_plan_has_full_entry_and_slice_entries() -> None:
    plan = plan_bundle({
        "p": Slice(np.zeros((2, 3), np.float32), (4, 3), (0, 0)),
        "q": Slice(np.ones((4, 3), np.float32), (4, 3), (0, 0)),  # covers all: a plain entry
        "p2": Slice(np.zeros((2, 3), np.float32), (4, 3), (2, 0)),
    })
    assert len(plan.entries[b"p"].slices) == 1 and not plan.entries[b"q"].slices
    assert slice_key(b"p", Box((0, 0), (2, 3), (False, True))) in plan.entries


# --- damaged and hand-made structures: each inconsistency refused, naming what is wrong ------------


def test_varint_past_64_bits_is_refused() -> None:
    assert coding.decode_varint(b"\xff" * 9 + b"\x01", 0) == (2**64 - 1, 10)
    with pytest.raises(CorruptCheckpointError):
        coding.decode_varint(b"\x80" * 9 + b"\x02", 0)  # 2**64
    with pytest.raises(CorruptCheckpointError):
        coding.decode_varint(b"\x80" * 9 + b"\x7f", 0)


def _block(entries: list[tuple[int, bytes, bytes]], restarts: list[int], *, value_len: int | None = None) -> bytes:
    """A block spelled out: (shared, key delta, value) entries, then the restart array."""
    out = bytearray()
    for shared, delta, value in entries:
        out += coding.encode_varint(shared) + coding.encode_varint(len(delta))
        out += coding.encode_varint(len(value) if value_len is None else value_len) + delta + value
    return bytes(out) + b"".join(coding.encode_fixed32(r) for r in restarts) + coding.encode_fixed32(len(restarts))


def test_block_entries_are_parsed_with_their_shared_prefixes() -> None:
    block = _block([(0, b"ab", b"1"), (1, b"c", b"2"), (0, b"b", b"3")], [0, 11])
    assert [(k, bytes(v)) for k, v in iter_block(block)] == [(b"ab", b"1"), (b"ac", b"2"), (b"b", b"3")]


def test_a_restart_entry_sharing_a_prefix_is_refused() -> None:
    block = _block([(0, b"ab", b"1"), (1, b"c", b"2")], [0, 6])
    with pytest.raises(CorruptCheckpointError, match="restart point shares a prefix"):
        list(iter_block(block))


@pytest.mark.parametrize("claimed", [2, 4, 5])
def test_an_entry_running_into_the_restart_array_is_refused(claimed: int) -> None:
    block = _block([(0, b"a", b"x")], [0], value_len=claimed)
    with pytest.raises(CorruptCheckpointError, match="bad entry"):
        list(iter_block(block))


@pytest.mark.parametrize("length", [127, 128, 129, 255, 256, 16383, 16384])
def test_keys_and_values_of_every_varint_width_round_trip(length: int) -> None:
    entries = {b"k" * length: b"v" * length, b"l": b"w" * length, b"m" * (length + 1): b""}
    data = _table(entries)
    assert {k: bytes(v) for k, v in read_table(lambda o, n: data[o : o + n], len(data))} == entries


def _trailer(block: bytes) -> bytes:
    return b"\x00" + coding.encode_fixed32(coding.mask_crc(coding.crc32c(b"\x00", coding.crc32c(block))))


def _raw_table(blocks: list[tuple[bytes, bytes]]) -> bytes:
    """A table of the given (data block, separator key) pairs, in that order, unchecked."""
    out, index = bytearray(), BlockBuilder(1)
    for block, separator in blocks:
        index.add(separator, coding.encode_varint(len(out)) + coding.encode_varint(len(block)))
        out += block + _trailer(block)
    meta = BlockBuilder().finish()
    meta_handle = coding.encode_varint(len(out)) + coding.encode_varint(len(meta))
    out += meta + _trailer(meta)
    index_block = index.finish()
    footer = meta_handle + coding.encode_varint(len(out)) + coding.encode_varint(len(index_block))
    out += index_block + _trailer(index_block)
    return bytes(out + footer + bytes(40 - len(footer)) + bytes.fromhex("57fb808b247547db"))


def _one_block(*keys: bytes) -> bytes:
    builder = BlockBuilder()
    for key in keys:
        builder.add(key, b"v")
    return builder.finish()


def test_hand_made_tables_read_and_keys_out_of_order_are_refused() -> None:
    good = _raw_table([(_one_block(b"a", b"b"), b"b"), (_one_block(b"c"), b"d")])
    assert [k for k, _ in read_table(lambda o, n: good[o : o + n], len(good))] == [b"a", b"b", b"c"]
    for blocks in ([(_one_block(b"b"), b"b"), (_one_block(b"b"), b"c")],   # a key repeated across blocks
                   [(_one_block(b"b", b"b"), b"b")],                      # and within one
                   [(_one_block(b"c"), b"c"), (_one_block(b"a"), b"d")]):  # a later block sorting first
        bad = _raw_table(blocks)
        with pytest.raises(CorruptCheckpointError, match="out of order"):
            list(read_table(lambda o, n: bad[o : o + n], len(bad)))


def test_a_block_handle_reaching_into_the_footer_is_refused() -> None:
    size = len(WORKED_INDEX)
    footer = WORKED_INDEX[-48:]
    _, pos = coding.decode_varint(footer, 0)
    _, pos = coding.decode_varint(footer, pos)
    offset, end = coding.decode_varint(footer, pos)
    length, end = coding.decode_varint(footer, end)
    for extra in (1, 20, 48):
        handles = footer[:pos] + coding.encode_varint(offset) + coding.encode_varint(length + extra)
        damaged = WORKED_INDEX[:-48] + handles + bytes(40 - len(handles)) + footer[40:]
        with pytest.raises(CorruptCheckpointError, match="points past the end of the file"):
            list(read_table(lambda o, n: damaged[o : o + n], size))


@pytest.mark.parametrize("position", range(8))
def test_every_byte_of_the_magic_is_checked(position: int) -> None:
    damaged = bytearray(WORKED_INDEX)
    damaged[len(damaged) - 8 + position] ^= 0x20
    with pytest.raises(CorruptCheckpointError, match="magic"):
        list(read_table(lambda o, n: damaged[o : o + n], len(damaged)))


def test_string_lengths_claiming_the_checksum_bytes_are_refused() -> None:
    payload = b"".join(encode_strings([b"hi", b"yo"])[0])  # 02 02 | checksum | h i y o
    with pytest.raises(CorruptCheckpointError, match="run past the end"):
        decode_strings(payload[:6], 2)  # the elements' 4 bytes missing: lengths reach into the checksum
    with pytest.raises(CorruptCheckpointError, match="run past the end"):
        decode_strings(payload[:-1], 2)
