"""A process SIGKILLed in the middle of an incremental save's copies (``part-copied``, after
the first range copied into the new data file), on local disk and S3 (SeaweedFS): the base
checkpoint is intact, nothing of the new one is committed (no index, no data file; on S3 an
incomplete multipart upload holding copied parts), and `gc` aborts that upload and removes
the rest, after which the base still restores exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import remoteckpt
from remoteckpt.management.state import format_state
from remoteckpt.options import IOOptions
from remoteckpt.storage import Store, on_store

pytestmark = [pytest.mark.multiprocess]

MiB = 2**20

VICTIM = """
import sys, numpy as np, remoteckpt
from remoteckpt.options import IOOptions
rng = np.random.default_rng(0)
tensors = {f"w{i}": rng.random(6 * 2**20 // 4, dtype=np.float32) for i in range(6)}
tensors["w2"] = tensors["w2"] + 1
remoteckpt.save(tensors, sys.argv[1] + "/m-2", incremental=True, options=IOOptions(lease_timeout=2))
"""


def first_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"w{i}": rng.random(6 * MiB // 4, dtype=np.float32) for i in range(6)}


def on(directory: str, body: Any) -> Any:
    return on_store(directory, body)


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_kill_mid_copy_leaves_the_base_intact_and_gc_aborts_the_copies(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    directory = str(tmp_path / "run") if backend == "local" else request.getfixturevalue("s3_prefix")
    first = first_tensors()
    remoteckpt.save(first, f"{directory}/m-1", incremental=True)

    async def mark(store: Store) -> None:
        await store.put("checkpoint", format_state("m-1", ["m-1"]))

    on(directory, mark)
    env = dict(os.environ, REMOTECKPT_CRASH_AT="part-copied", PYTHONPATH=os.pathsep.join(sys.path))
    victim = subprocess.run([sys.executable, "-c", VICTIM, directory], env=env, capture_output=True, timeout=180)
    assert victim.returncode == -9, victim.stderr.decode()[-2000:]

    async def leftovers(store: Store) -> tuple[list[str], list[str]]:
        return await store.list("m-2."), [u.key for u in await store.pending_uploads()]

    keys, uploads = on(directory, leftovers)  # type: ignore[misc]
    assert "m-2.index" not in keys
    assert not [k for k in keys if k.startswith("m-2.data-") and ".tempstate" not in k], keys  # none committed
    if backend == "s3":
        assert uploads == ["m-2.data-00000-of-00001"]  # the copied parts, pending
    else:
        assert [k for k in keys if ".tempstate" in k], keys  # the half-copied temp file
    restored = remoteckpt.load(f"{directory}/m-1")
    assert all(restored[k].tobytes() == v.tobytes() for k, v in first.items())
    assert remoteckpt.latest_checkpoint(directory) == f"{directory}/m-1"

    report = remoteckpt.gc(directory, older_than=0, options=IOOptions(lease_timeout=2))
    assert report.aborted_uploads == (["m-2.data-00000-of-00001"] if backend == "s3" else [])
    keys, uploads = on(directory, leftovers)  # type: ignore[misc]
    assert keys == [] and uploads == []
    restored = remoteckpt.load(f"{directory}/m-1")
    assert all(restored[k].tobytes() == v.tobytes() for k, v in first.items())
