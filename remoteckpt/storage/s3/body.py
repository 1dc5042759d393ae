"""One request body made of views of the caller's buffers, sent without copying them.

A multipart part is up to `part_size` bytes taken from one or more buffers (8 MiB blocks of a
big tensor, or many small tensors packed together).  The usual ways to hand it to
aiobotocore each cost memory and CPU per byte:

    bytes        join the views (copy 1); botocore turns bytes into ``BytesIO`` and aiohttp's
                 ``BytesIOPayload`` calls ``getbuffer()``, which un-shares it (copy 2): peak
                 memory is two copies of every part in flight
    a file       aiohttp reads it 256 KiB at a time in a thread pool: a thread hop and a copy
                 per read, thousands per GiB

`PartBody` is neither: botocore sees a seekable file (it reads it once, 1 MiB at a time, for
the SigV4 payload hash over plain HTTP, and rewinds it for a retry) and aiohttp sees a
``Payload`` (objects that already are one are used as they are), whose `write_with_length`
passes 1 MiB memoryview slices of the caller's buffers straight to the transport.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Sequence

from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

from ..base import Buffer

SEND_SLICE = 1 * 2**20
"""Bytes handed to the transport per write: the transport copies what the socket does not
take at once, so a slice bounds that copy; 1 MiB keeps the Python calls per GiB near 1000."""


class PartBody(Payload):
    """The concatenation of `views`, readable and seekable like a file, and an aiohttp
    payload.  The views must stay unchanged until the request is done."""

    _autoclose = True  # holds no resource: the caller owns the buffers

    def __init__(self, views: Sequence[Buffer]) -> None:
        self._views = [memoryview(v).cast("B") for v in views if len(v)]
        self._starts: list[int] = []
        total = 0
        for view in self._views:
            self._starts.append(total)
            total += len(view)
        super().__init__(self._views, content_type="application/octet-stream")
        self._size = total  # aiohttp's: the Content-Length it sends
        self._total = total
        self._pos = 0

    @property
    def views(self) -> list[memoryview]:
        return list(self._views)

    # --- the file botocore sees ----------------------------------------------------------

    def __len__(self) -> int:
        return self._total - self._pos

    def __bool__(self) -> bool:
        return True  # botocore treats a falsy body as no body

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._total}[whence]
        self._pos = min(max(0, base + offset), self._total)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = self._total if size is None or size < 0 else min(self._total, self._pos + size)
        out = b"".join(self._slices(self._pos, end))
        self._pos = end
        return out

    def _slices(self, start: int, end: int, step: int | None = None) -> list[memoryview]:
        """Views of bytes [start, end), each within one buffer and at most `step` long."""
        out: list[memoryview] = []
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        while start < end and i < len(self._views):
            view, base = self._views[i], self._starts[i]
            stop = min(end, base + len(view))
            while start < stop:
                take = stop - start if step is None else min(step, stop - start)
                out.append(view[start - base : start - base + take])
                start += take
            i += 1
        return out

    # --- the payload aiohttp sees ----------------------------------------------------------

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._views).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        end = self._total if content_length is None else min(self._total, self._pos + content_length)
        for piece in self._slices(self._pos, end, SEND_SLICE):
            await writer.write(piece)
