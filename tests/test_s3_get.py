"""Ranged GETs read straight into their targets (`remoteckpt.storage.s3.direct`).

Against SeaweedFS: the same bytes and checksums as aiobotocore's path.  Against a canned HTTP
server on loopback (requests signed by a real botocore client): every way an answer can go
wrong (retryable statuses, a server that ignores Range, cut and stalled bodies, errors, TLS).
"""

from __future__ import annotations

import asyncio
import os
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from remoteckpt.engine import loop
from remoteckpt.errors import CheckpointNotFoundError, CorruptCheckpointError, StorageError
from remoteckpt.format.coding import crc32c
from remoteckpt.storage import open_store
from remoteckpt.storage.s3 import S3Store
from remoteckpt.storage.s3.reads import FIRST_GET

OBJECT = bytes(range(256)) * 4096  # 1 MiB, every byte position distinguishable mod 256
SECRET = "canarySecretKey0123456789"


def _scatter(url: str, key: str, start: int, spans: list[tuple[int, int]], *, direct: bool = True,
             storage_options: dict[str, Any] | None = None) -> tuple[list[bytes], tuple[int, ...], bool]:
    """read_scatter of `spans` ((offset, length), sorted) of `key`: the bytes, the CRCs, and
    whether the direct path served it."""

    async def go() -> tuple[list[bytes], tuple[int, ...], bool]:
        store = open_store(url, storage_options)
        assert isinstance(store, S3Store)
        try:
            if not direct:
                store._direct_checked = True  # as when the client cannot take the direct path
            targets = [(offset, memoryview(bytearray(length))) for offset, length in spans]
            result = await store.read_scatter(key, start, targets)
            assert result.delivered == sum(len(v) for _, v in targets)
            return [bytes(v) for _, v in targets], result.crcs, store._direct is not None
        finally:
            await store.close()

    return loop.run(go())


def test_direct_reads_match_aiobotocore_on_seaweedfs(s3_prefix: str) -> None:
    data = os.urandom(5 * 2**20 + 123)

    async def put() -> None:
        store = open_store(s3_prefix)
        try:
            await store.put("obj", data)
        finally:
            await store.close()

    loop.run(put())
    spans = [(100, 1000), (1200, 2**20), (2**20 + 300_000, 3 * 2**20), (5 * 2**20, 123)]
    direct = _scatter(s3_prefix, "obj", 100, spans)
    fallback = _scatter(s3_prefix, "obj", 100, spans, direct=False)
    assert direct[2] and not fallback[2]
    assert direct[:2] == fallback[:2]
    assert direct[0] == [data[o : o + n] for o, n in spans]
    assert direct[1] == tuple(crc32c(data[o : o + n]) for o, n in spans)


# --- a canned server -----------------------------------------------------------------------

Answer = Callable[[int, dict[str, str], socket.socket], None]
"""(request number, request headers, connection) -> writes the answer (or not)."""


class CannedServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer, self.tls = answer, tls
        self.requests: list[dict[str, str]] = []
        self.connections = 0
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server_address[1]}"


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: CannedServer = self.server  # type: ignore[assignment]
        sock = self.request
        if server.tls is not None:
            sock = server.tls.wrap_socket(sock, server_side=True)
        with server.lock:
            server.connections += 1
        buffered = b""
        while True:
            while b"\r\n\r\n" not in buffered:
                try:
                    chunk = sock.recv(65536)
                except OSError:  # the client closed or reset the connection: done with it
                    return
                if not chunk:
                    return
                buffered += chunk
            head, buffered = buffered.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            headers["target"] = lines[0].split(" ")[1]
            with server.lock:
                server.requests.append(headers)
                number = len(server.requests)
            try:
                server.answer(number, headers, sock)
            except OSError:
                return


def _range(headers: dict[str, str]) -> tuple[int, int]:
    first, last = headers["range"].removeprefix("bytes=").split("-")
    return int(first), int(last) + 1


def partial(sock: socket.socket, headers: dict[str, str], *, etag: str = '"v1"', cut: int | None = None,
            extra: str = "") -> None:
    start, end = _range(headers)
    end = min(end, len(OBJECT))
    body = OBJECT[start:end]
    head = (f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(body)}\r\nETag: {etag}\r\n"
            f"Content-Range: bytes {start}-{end - 1}/{len(OBJECT)}\r\n{extra}\r\n")
    sock.sendall(head.encode() + body[: len(body) if cut is None else cut])
    if cut is not None:
        sock.close()


def error(sock: socket.socket, status: int, code: str) -> None:
    body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>canned {code}</Message></Error>".encode()
    sock.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)


@pytest.fixture
def canned(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., CannedServer]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "canaryAccessKey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    servers: list[CannedServer] = []

    def start(answer: Answer, tls: ssl.SSLContext | None = None) -> CannedServer:
        server = CannedServer(answer, tls)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _options(server: CannedServer, **config: Any) -> dict[str, Any]:
    return {"endpoint_url": server.endpoint, "config_kwargs": {"retries": {"max_attempts": 4, "mode": "standard"},
                                                                 **config}}


def test_keep_alive_retries_and_gaps(canned: Callable[..., CannedServer]) -> None:
    def answer(number: int, headers: dict[str, str], sock: socket.socket) -> None:
        if number == 1:
            error(sock, 503, "SlowDown")
        else:
            partial(sock, headers)

    server = canned(answer)
    spans = [(10, 100), (5000, 70_000), (200_000, 300_000)]
    for _ in range(2):
        got, crcs, direct = _scatter("s3://bucket/dir", "obj", 10, spans, storage_options=_options(server))
        assert direct and got == [OBJECT[o : o + n] for o, n in spans]
    assert len(server.requests) == 3  # one SlowDown, then one GET per read
    assert server.connections == 2  # a read's store keeps its connection alive; the next store opens its own
    assert all("X-Amz-Signature=" in r["target"] for r in server.requests)


def test_a_cut_body_resumes_pinned_to_its_version(canned: Callable[..., CannedServer]) -> None:
    def answer(number: int, headers: dict[str, str], sock: socket.socket) -> None:
        partial(sock, headers, etag='"v7"', cut=12_345 if number == 1 else None)

    server = canned(answer)
    got, _, _ = _scatter("s3://bucket/dir", "obj", 0, [(0, 2**20)], storage_options=_options(server))
    assert got == [OBJECT]
    first, second = server.requests
    assert first["range"] == f"bytes=0-{2**20 - 1}" and "if-match" not in first
    assert second["range"] == f"bytes=12345-{2**20 - 1}" and second["if-match"] == '"v7"'


@pytest.mark.parametrize("case", ["ignores-range", "chunked", "chunked-with-length", "not-found", "denied", "changed",
                                  pytest.param("stall", marks=pytest.mark.slow), "always-503"])
def test_bad_answers_fail_clearly_and_never_deliver_wrong_bytes(canned: Callable[..., CannedServer],
                                                                case: str) -> None:
    def answer(number: int, headers: dict[str, str], sock: socket.socket) -> None:
        if case == "ignores-range":
            sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(OBJECT)}\r\n\r\n".encode() + OBJECT)
        elif case == "chunked":
            sock.sendall(b"HTTP/1.1 206 Partial\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        elif case == "chunked-with-length":  # framing bytes would land in the target
            body = b"1388\r\n" + OBJECT[10:5010] + b"\r\n0\r\n\r\n"
            sock.sendall(f"HTTP/1.1 206 Partial\r\nContent-Range: bytes 10-5009/{len(OBJECT)}\r\n"
                         f"Transfer-Encoding: chunked\r\nContent-Length: 5000\r\n\r\n".encode() + body)
        elif case == "not-found":
            error(sock, 404, "NoSuchKey")
        elif case == "denied":
            error(sock, 403, "AccessDenied")
        elif case == "changed":
            if number == 1:
                partial(sock, headers, cut=1000)
            else:
                error(sock, 412, "PreconditionFailed")
        elif case == "stall":
            threading.Event().wait(5)
        else:
            error(sock, 503, "SlowDown")

    server = canned(answer)
    expected = {"ignores-range": (StorageError, "ignored the Range header"),
                "chunked": (StorageError, "without a Content-Length"),
                "chunked-with-length": (StorageError, "without a Content-Length"),
                "not-found": (CheckpointNotFoundError, "no such file"),
                "denied": (StorageError, "permission denied"),
                "changed": (StorageError, "changed while it was being read"),
                "stall": (StorageError, "TimeoutError"),
                "always-503": (StorageError, "SlowDown")}[case]
    with pytest.raises(expected[0], match=expected[1]) as info:
        _scatter("s3://bucket/dir", "obj", 10, [(10, 5000)],
                 storage_options=_options(server, read_timeout=1, connect_timeout=1))
    text = f"{info.value!r} {info.value.__cause__!r} {info.value.__context__!r}"
    assert "s3://bucket/dir/obj" in str(info.value)
    assert SECRET not in text and "canaryAccessKey" not in text and "Signature" not in text
    if case == "always-503":
        assert len(server.requests) == 5  # the first request and max_attempts retries (botocore)


@pytest.mark.parametrize("start,claimed", [(10, 9), (10, 11), (10, None), (0, None), (0, 1)])
def test_a_206_must_start_at_the_requested_byte(canned: Callable[..., CannedServer], start: int,
                                                claimed: int | None) -> None:
    """A 206 whose Content-Range starts elsewhere (or that has none) would put other bytes of
    the object at the requested position: refused, on every attempt."""
    def answer(number: int, headers: dict[str, str], sock: socket.socket) -> None:
        first, end = _range(headers)
        begin = first if claimed is None else claimed
        body = OBJECT[begin : begin + end - first]
        content_range = "" if claimed is None else f"Content-Range: bytes {begin}-{begin + len(body) - 1}/{len(OBJECT)}\r\n"
        sock.sendall(f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(body)}\r\n{content_range}\r\n".encode()
                     + body)

    server = canned(answer)
    with pytest.raises(StorageError, match=f"does not start at byte {start}"):
        _scatter("s3://bucket/dir", "obj", start, [(start, 5000)], storage_options=_options(server))


def test_a_200_for_a_range_from_byte_0_says_the_range_was_ignored(canned: Callable[..., CannedServer]) -> None:
    """A server that ignores the Range header answers 200 with the whole object; from byte 0
    the first bytes are even the right ones, but the answer is refused as what it is (not as
    a mere excess of bytes), on every attempt, and nothing lands beyond the range."""
    def answer(number: int, headers: dict[str, str], sock: socket.socket) -> None:
        sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(OBJECT)}\r\n\r\n".encode() + OBJECT)

    server = canned(answer)
    with pytest.raises(StorageError, match="ignored the Range header"):
        _scatter("s3://bucket/dir", "obj", 0, [(0, 5000)], storage_options=_options(server))


def test_a_cut_body_resumes_pinned_to_its_version_through_aiobotocore(canned: Callable[..., CannedServer]) -> None:
    def answer(number: int, headers: dict[str, str], sock: socket.socket) -> None:
        partial(sock, headers, etag='"v9"', cut=12_345 if number == 1 else None)

    server = canned(answer)
    got, _, direct = _scatter("s3://bucket/dir", "obj", 0, [(0, 100_000), (200_000, 2**20 - 200_000)],
                              direct=False, storage_options=_options(server))
    assert not direct and got == [OBJECT[:100_000], OBJECT[200_000:]]
    first, second = server.requests[0], server.requests[-1]
    assert "if-match" not in first
    assert second["range"].startswith("bytes=12345-") and second["if-match"] == '"v9"'


def _read(server: CannedServer, start: int, length: int, *, direct: bool, etag: str | None = None) -> Any:
    """One read_scatter through `server`: its `ScatterResult`."""
    async def go() -> Any:
        store = open_store("s3://bucket/dir", _options(server))
        assert isinstance(store, S3Store)
        try:
            if not direct:
                store._direct_checked = True
            return await store.read_scatter("obj", start, [(start, memoryview(bytearray(length)))], etag=etag)
        finally:
            await store.close()

    return loop.run(go())


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "aiobotocore"])
def test_a_read_reports_the_version_and_size_its_answer_states(canned: Callable[..., CannedServer],
                                                                direct: bool) -> None:
    """A 206 states the object's size after the slash of Content-Range, a 416 as ``bytes */N``."""
    def answer(number: int, headers: dict[str, str], sock: socket.socket) -> None:
        if _range(headers)[0] >= len(OBJECT):
            body = b"<Error><Code>InvalidRange</Code><Message>canned</Message></Error>"
            sock.sendall(f"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len(OBJECT)}\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        else:
            partial(sock, headers, etag='"v3"')

    server = canned(answer)
    inside = _read(server, 100, 1000, direct=direct)
    assert (inside.delivered, inside.etag, inside.size) == (1000, "v3", len(OBJECT))
    across = _read(server, len(OBJECT) - 10, 1000, direct=direct)
    assert (across.delivered, across.etag, across.size) == (10, "v3", len(OBJECT))
    past = _read(server, len(OBJECT) + 10, 1000, direct=direct)
    assert (past.delivered, past.etag, past.size) == (0, "", len(OBJECT))


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "aiobotocore"])
def test_a_pinned_read_answered_with_another_version_is_refused(canned: Callable[..., CannedServer],
                                                                direct: bool) -> None:
    """A server that ignores If-Match answers with the object's current version: the answer's
    ETag is compared, and the read refused as the object changed."""
    def answer(number: int, headers: dict[str, str], sock: socket.socket) -> None:
        partial(sock, headers, etag='"v2"')

    server = canned(answer)
    assert _read(server, 0, 100, direct=direct, etag="v2").etag == "v2"
    with pytest.raises(StorageError, match="changed while it was being read"):
        _read(server, 0, 100, direct=direct, etag="v1")
    assert server.requests[-1]["if-match"] == '"v1"'


def test_tls_with_a_private_certificate_authority(canned: Callable[..., CannedServer], tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = canned(lambda number, headers, sock: partial(sock, headers), context)
    options = {**_options(server), "client_kwargs": {"verify": str(cert)}}
    got, _, direct = _scatter("s3://bucket/dir", "obj", 0, [(0, 300_000)], storage_options=options)
    assert direct and got == [OBJECT[:300_000]]
    with pytest.raises(StorageError, match="CERTIFICATE_VERIFY_FAILED|certificate"):  # an unknown CA is refused
        _scatter("s3://bucket/dir", "obj", 0, [(0, 300_000)], storage_options=_options(server))


def test_a_proxy_in_the_environment_keeps_reads_on_aiobotocore(canned: Callable[..., CannedServer],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    server = canned(lambda number, headers, sock: partial(sock, headers))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # aiobotocore honours it; the direct path does not try
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    got, _, direct = _scatter("s3://bucket/dir", "obj", 0, [(0, 1000)], storage_options=_options(server))
    assert not direct and got == [OBJECT[:1000]]


def test_sse_c_and_requester_pays_read_through_aiobotocore(s3_server: Any, s3_prefix: str) -> None:
    """Parameters that every GET must carry as headers (an SSE-C key, RequestPayer) take the
    path that sends them; a checkpoint encrypted with a customer key round-trips, and is
    unreadable without the key."""
    import os

    import numpy as np

    import remoteckpt
    from remoteckpt.engine import loop
    from remoteckpt.storage import open_store

    key = os.urandom(32)
    sse_c = {"s3_additional_kwargs": {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": key}}
    tensors = {"w": np.arange(300_000, dtype=np.float32), "s": np.array([b"secret"], dtype=object)}
    remoteckpt.save(tensors, f"{s3_prefix}/enc", storage_options=sse_c)
    got = remoteckpt.load(f"{s3_prefix}/enc", storage_options=sse_c)
    assert got["w"].tobytes() == tensors["w"].tobytes() and got["s"][0] == b"secret"
    with pytest.raises(remoteckpt.StorageError, match="InvalidArgument|HTTP 400"):
        remoteckpt.load(f"{s3_prefix}/enc")

    async def direct_used(options: dict[str, Any]) -> bool:
        store = open_store(s3_prefix, options)
        try:
            return await store._direct_gets() is not None  # type: ignore[attr-defined]
        finally:
            await store.close()

    assert loop.run(direct_used({})) is True
    assert loop.run(direct_used(sse_c)) is False
    assert loop.run(direct_used({"requester_pays": True})) is False


# --- whole objects (records, tables, an index) on the direct path ----------------------------

def _get_object(server: CannedServer, key: str, max_size: int | None = None) -> tuple[bytes, str]:
    async def go() -> tuple[bytes, str]:
        store = open_store("s3://bucket/dir", _options(server))
        try:
            found = await store.get_object(key, max_size=max_size)
            assert store._direct is not None  # type: ignore[attr-defined]
            return found.data, found.etag
        finally:
            await store.close()

    return loop.run(go())


def test_a_whole_object_larger_than_the_first_get_takes_a_second_pinned_to_its_version(
        canned: Callable[..., CannedServer]) -> None:
    server = canned(lambda number, headers, sock: partial(sock, headers, etag='"v3"'))
    assert _get_object(server, "obj") == (OBJECT, "v3")
    first, second = server.requests
    assert first["range"] == f"bytes=0-{FIRST_GET - 1}" and "if-match" not in first
    assert second["range"] == f"bytes={FIRST_GET}-{len(OBJECT) - 1}" and second["if-match"] == '"v3"'


def test_a_whole_object_replaced_between_its_gets_is_read_again_from_the_start(
        canned: Callable[..., CannedServer]) -> None:
    def answer(number: int, headers: dict[str, str], sock: socket.socket) -> None:
        if number == 2:
            error(sock, 412, "PreconditionFailed")
        else:
            partial(sock, headers, etag='"v1"' if number == 1 else '"v2"')

    server = canned(answer)
    assert _get_object(server, "obj") == (OBJECT, "v2")
    assert [r["range"] for r in server.requests] == [f"bytes=0-{FIRST_GET - 1}", f"bytes={FIRST_GET}-{len(OBJECT) - 1}",
                                                     f"bytes=0-{FIRST_GET - 1}", f"bytes={FIRST_GET}-{len(OBJECT) - 1}"]
    assert server.requests[3]["if-match"] == '"v2"'


def test_a_whole_object_over_its_limit_is_refused_after_one_small_get(canned: Callable[..., CannedServer]) -> None:
    server = canned(lambda number, headers, sock: partial(sock, headers))
    with pytest.raises(CorruptCheckpointError, match=f"s3://bucket/dir/obj is {len(OBJECT)} bytes, more than the 1000"):
        _get_object(server, "obj", max_size=1000)
    (only,) = server.requests
    assert only["range"] == "bytes=0-1000"


def test_a_cut_whole_object_is_read_again(canned: Callable[..., CannedServer]) -> None:
    server = canned(lambda number, headers, sock: partial(sock, headers, cut=1000 if number == 1 else None))
    assert _get_object(server, "obj", max_size=len(OBJECT)) == (OBJECT, "v1")
    assert [r["range"] for r in server.requests] == [f"bytes=0-{FIRST_GET - 1}"] * 2 + [
        f"bytes={FIRST_GET}-{len(OBJECT) - 1}"]


def test_whole_objects_on_seaweedfs_empty_ones_through_aiobotocore(s3_prefix: str) -> None:
    async def go() -> list[bytes]:
        store = open_store(s3_prefix)
        try:
            await store.put("empty", b"")
            await store.put("small", b"x" * 300)
            await store.put("large", OBJECT)
            got = [(await store.get_object(k)).data for k in ("empty", "small", "large")]
            assert store._direct is not None  # type: ignore[attr-defined]
            return got
        finally:
            await store.close()

    assert loop.run(go()) == [b"", b"x" * 300, OBJECT]


KEYS = ["plain", "with space/and+plus", "t~ilde=eq&amp", "uni/é中", "per%cent", "a//double/slash", "star*(paren)"]


@pytest.fixture(scope="module")
def signed_s3() -> Iterator[tuple[str, dict[str, Any], Any]]:
    """A server that checks every request's signature: (its bucket's URL, storage options, it)."""
    from remoteckpt.testing import SeaweedServer

    with SeaweedServer(bucket="signed", verify_signatures=True) as server:
        yield f"s3://{server.bucket}/presign", server.storage_options(), server


def test_cheaply_signed_urls_read_every_key(signed_s3: tuple[str, dict[str, Any], Any]) -> None:
    """After the first URL of a bucket, URLs are signed by botocore's S3 signer on the first
    one's base (`presign`): keys with spaces, reserved and non-ASCII characters read back,
    each signed the cheap way on a server that checks signatures, and a cheap URL has the
    form of botocore's."""
    from remoteckpt.storage.s3.presign import Presigner

    prefix, options, _ = signed_s3

    async def body() -> None:
        store = open_store(prefix, options)
        try:
            for key in KEYS:
                await store.put(key, key.encode())
            direct = await store._direct_gets()
            assert direct is not None
            for key in KEYS:
                assert await store.get(key) == key.encode(), key
            cheap = [c for (_, k), (_, _, c) in direct._urls.items()]
            assert cheap.count(False) == 1 and cheap.count(True) == len(KEYS) - 1
            signer = Presigner(await store.client.botocore_client())
            first, was_cheap = await signer.url(store.bucket, store.object_key("plain"), 60)
            second, now_cheap = await signer.url(store.bucket, store.object_key("plain"), 60)
            assert (was_cheap, now_cheap) == (False, True)
            assert first.split("?")[0] == second.split("?")[0]
            names = lambda url: sorted(p.split("=")[0] for p in url.split("?")[1].split("&"))  # noqa: E731
            assert names(first) == names(second)
        finally:
            await store.close()

    loop.run(body())


def test_a_refused_cheap_url_is_asked_again_through_botocore(signed_s3: tuple[str, dict[str, Any], Any],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A store that refuses the cheaply signed URL (here: signed with a wrong secret) answers
    403 once; the read is asked again with botocore's URL, and every later one too."""
    from remoteckpt.storage.s3 import presign

    prefix, options, server = signed_s3

    async def body() -> None:
        store = open_store(prefix, options)
        try:
            await store.put("a", b"A")
            await store.put("b", b"B")
            direct = await store._direct_gets()
            assert direct is not None
            assert await store.get("a") == b"A"  # the first URL: botocore's

            async def wrong(self: Any) -> Any:
                from botocore.credentials import ReadOnlyCredentials

                return ReadOnlyCredentials(server.access_key, "not-the-secret", None)

            keys = [f"k{i}" for i in range(8)]
            for key in keys:
                await store.put(key, key.encode())
            original = presign.Presigner._credentials
            presign.Presigner._credentials = wrong  # type: ignore[method-assign]
            try:
                with caplog.at_level("WARNING", logger="remoteckpt"):
                    # reads in flight together when the first refusal comes back: each asked again
                    got = await asyncio.gather(store.get("b"), *(store.get(k) for k in keys))
                    assert got == [b"B", *(k.encode() for k in keys)]
                    assert await store.get("k0") == b"k0"  # its cached URL: botocore's by now
            finally:
                presign.Presigner._credentials = original  # type: ignore[method-assign]
            assert not direct._presigner.cheap
            assert "refused (403)" in caplog.text
        finally:
            await store.close()

    loop.run(body())
