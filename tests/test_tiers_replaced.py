"""Which local commits a restarted per-host worker takes for pending (`tiers.replaced`): one
whose remote copy is not there, or is of other bytes; never a leftover older than the
directory's latest checkpoint, a drained one, or one that cannot be read; and which of them a
worker lost (no table of its own on its tier).  The whole scenario, a host replaced between a
local commit and its drain, is in tests/test_tiers_hosts.py."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

import remoteckpt
from remoteckpt.engine import loop
from remoteckpt.management.state import format_state
from remoteckpt.storage import on_store
from remoteckpt.tiers import replaced
from remoteckpt.tiers.hosts import table_key
from remoteckpt.tiers.layout import local_prefix


def _index(tmp_path: Path, name: str, value: float) -> bytes:
    """The index of a checkpoint of one data file (saved for real, then read back)."""
    prefix = str(tmp_path / "made" / name)
    remoteckpt.save({"w": np.full(4, value, np.float32)}, prefix)
    with open(prefix + ".index", "rb") as f:
        return f.read()


def test_pending_commits_are_the_ones_whose_drain_has_not_committed(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    remote = tmp_path / "remote"
    (remote / ".tiers").mkdir(parents=True)
    a, b = _index(tmp_path, "a", 1.0), _index(tmp_path, "b", 2.0)
    old = time.time() - 100
    # ckpt-1: a leftover older than the latest checkpoint (ckpt-2) of the state file
    (remote / ".tiers" / "ckpt-1.index").write_bytes(a)
    os.utime(remote / ".tiers" / "ckpt-1.index", (old, old))
    (remote / "ckpt-2.index").write_bytes(a)
    os.utime(remote / "ckpt-2.index", (old + 10, old + 10))
    on_store(str(remote), lambda store: store.put("checkpoint", format_state("ckpt-2", ["ckpt-2"])))
    (remote / ".tiers" / "ckpt-3.index").write_bytes(a)   # pending: nothing at the remote prefix
    (remote / ".tiers" / "ckpt-4.index").write_bytes(a)   # drained: the same bytes there
    (remote / "ckpt-4.index").write_bytes(a)
    (remote / ".tiers" / "ckpt-5.index").write_bytes(b)   # pending over an older checkpoint of other bytes
    (remote / "ckpt-5.index").write_bytes(a)
    (remote / ".tiers" / "ckpt-6.index").write_bytes(b"not an index")
    with caplog.at_level(logging.WARNING, logger="remoteckpt"):
        found = loop.run(replaced.pending_commits(str(remote)))
    assert sorted((os.path.basename(c.remote), c.over, c.workers) for c in found) == [
        ("ckpt-3", False, 1), ("ckpt-5", True, 1)]
    assert any("ckpt-6.index" in r.getMessage() for r in caplog.records)
    # A worker lost the ones of which its tier holds no table of its own.
    tier = remoteckpt.LocalTier(path=str(tmp_path / "tier"), per_host=True)
    local = local_prefix(tier, found[0].remote)
    os.makedirs(os.path.dirname(local), exist_ok=True)
    with open(os.path.join(os.path.dirname(local), table_key(os.path.basename(local), 0)), "wb") as f:
        f.write(b"")
    assert [os.path.basename(c.remote) for c in replaced.lost(found, tier, 0)] == [
        os.path.basename(c.remote) for c in found[1:]]
    assert replaced.lost(found, tier, 1) == []  # rank 1 is not among their workers
