"""S3 over TLS: a SeaweedFS gateway speaking HTTPS only, with a certificate from a private
authority.  Saves and restores verify it (botocore, and the direct GET path), and refuse a
server they cannot verify."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import remoteckpt
from remoteckpt.engine import loop
from remoteckpt.storage import open_store
from remoteckpt.testing import SeaweedServer, find_weed

pytestmark = [pytest.mark.s3, pytest.mark.slow]


@pytest.fixture(scope="module")
def tls_server() -> Iterator[SeaweedServer]:
    if find_weed() is None:
        pytest.skip("SeaweedFS 'weed' binary not found")
    with SeaweedServer(tls=True) as server:
        yield server


def test_saves_and_restores_over_verified_tls(tls_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in tls_server.env().items():
        monkeypatch.setenv(name, value)
    assert tls_server.endpoint_url.startswith("https://")
    prefix = f"s3://{tls_server.bucket}/tls/ck"
    tensors = {"w": np.arange(2_000_000, dtype=np.float32), "words": np.array([b"over", b"tls"], dtype=object)}
    remoteckpt.save(tensors, prefix, rank=0, world_size=1)
    got = remoteckpt.load(prefix)
    assert got["w"].tobytes() == tensors["w"].tobytes() and list(got["words"]) == [b"over", b"tls"]

    async def direct() -> bool:
        store = open_store(f"s3://{tls_server.bucket}/tls")
        try:
            return await store._direct_gets() is not None  # type: ignore[attr-defined]
        finally:
            await store.close()

    assert loop.run(direct())  # the ranged GETs above went through the direct path, verified


def test_an_unverifiable_server_is_refused(tls_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in tls_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_CA_BUNDLE")  # the system's authorities do not know this one
    options = {"config_kwargs": {"retries": {"max_attempts": 1}}}
    with pytest.raises(remoteckpt.StorageError, match="(?i)certificate|SSL"):
        remoteckpt.load(f"s3://{tls_server.bucket}/tls/ck", storage_options=options)
