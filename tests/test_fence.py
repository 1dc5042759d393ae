"""The fence (`protocol.fence`): just before the commit, every data file must be the version
its worker wrote; a file replaced meanwhile (same size, other bytes) or gone stops the commit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from remoteckpt import SaveFailedError
from remoteckpt.protocol.fence import check_data_files
from remoteckpt.protocol.records import DataIdentity
from remoteckpt.storage import Store, on_store


@pytest.fixture(params=["local", "s3"])
def directory(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path) if request.param == "local" else request.getfixturevalue("s3_prefix")


def test_only_the_versions_written_pass(directory: str) -> None:
    async def go(store: Store) -> None:
        written = [DataIdentity(key=f"ck.data-0000{r}-of-00002", size=4,
                                etag=await store.put(f"ck.data-0000{r}-of-00002", b"abcd")) for r in (0, 1)]
        await check_data_files(store, "ck.data-", written)
        await asyncio.sleep(0.01)
        await store.put("ck.data-00001-of-00002", b"zzzz")  # a zombie's bytes, same size
        with pytest.raises(SaveFailedError, match=r"data-00001-of-00002 is not the version its worker wrote"):
            await check_data_files(store, "ck.data-", written)
        await store.delete("ck.data-00001-of-00002")
        with pytest.raises(SaveFailedError, match=r"data-00001-of-00002 is gone"):
            await check_data_files(store, "ck.data-", written)

    on_store(directory, go)


def test_a_zombie_write_before_the_commit_fails_the_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data file replaced between the worker's write and the commit: nothing is committed."""
    import numpy as np

    import remoteckpt
    from remoteckpt.protocol import fence

    real = fence.check_data_files

    async def replaced_first(store: Any, prefix: str, expected: Any) -> None:
        (tmp_path / "ck.data-00000-of-00001").write_bytes(b"\0" * expected[0].size)
        await real(store, prefix, expected)

    monkeypatch.setattr(fence, "check_data_files", replaced_first)
    with pytest.raises(SaveFailedError, match="not committed"):
        remoteckpt.save({"w": np.ones(8, np.float32)}, tmp_path / "ck")
    assert not (tmp_path / "ck.index").exists()
