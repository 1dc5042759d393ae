"""`storage.s3.body.PartBody`: the multipart body sent from the caller's buffers."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os

import pytest

from remoteckpt.storage.s3.body import SEND_SLICE, PartBody


class Collect:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    async def write(self, chunk: memoryview) -> None:
        assert isinstance(chunk, memoryview) and len(chunk) <= SEND_SLICE  # slices, never a joined copy
        self.chunks.append(bytes(chunk))


@pytest.mark.parametrize("sizes", [[0], [5], [3, 0, 7, 1], [SEND_SLICE + 3, 2, 2 * SEND_SLICE]])
def test_reads_seeks_and_sends_the_concatenation(sizes: list[int]) -> None:
    views = [bytearray(os.urandom(n)) for n in sizes]
    whole = b"".join(views)
    body = PartBody(views)
    assert len(body) == len(whole) and bool(body) and body.size == len(whole)
    # botocore's payload hash: read in chunks, then rewind
    assert b"".join(iter(lambda: body.read(1000), b"")) == whole
    assert body.tell() == len(whole) and len(body) == 0
    assert body.seek(0) == 0 and body.read() == whole
    body.seek(2)
    assert body.read(4) == whole[2:6]
    body.seek(-3, io.SEEK_END)
    assert body.read() == whole[-3:]
    body.seek(0)
    sink = Collect()
    asyncio.run(body.write(sink))
    assert b"".join(sink.chunks) == whole
    sink = Collect()
    asyncio.run(body.write_with_length(sink, 4))
    assert b"".join(sink.chunks) == whole[:4]


def test_sends_the_buffers_not_a_copy() -> None:
    buf = bytearray(b"a" * 10)
    body = PartBody([buf])
    buf[0:1] = b"z"  # the caller's buffer is what goes out (why save_async snapshots first)
    assert body.read(1) == b"z"
    assert hashlib.md5(b"".join(body.views)).hexdigest() == hashlib.md5(bytes(buf)).hexdigest()
