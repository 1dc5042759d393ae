"""The simulated fleet (benchmarks/scale, ``make scale``) at 16 ranks, as a subprocess: every
rank saves and restores (each opening the checkpoint, then from one rank's broadcast opening),
and the JSON record holds every quantity docs/scale.md reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.multiprocess]

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"PUT", "GET", "HEAD", "LIST", "DELETE", "POST"}


def test_fleet_of_16_ranks_records_every_quantity(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--ranks", "16", "--processes", "2",
                          "--out", str(tmp_path), "--timeout", "240"],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    [path] = tmp_path.glob("scale-*.json")
    record = json.loads(path.read_text())
    assert set(record["targets"]) == {"worker requests beyond its data parts", "coordinator LIST pages",
                                      "busiest key, requests/s (save)", "commit latency, s",
                                      "index GETs per restoring rank", "HEADs per restoring rank",
                                      "LIST pages per restoring rank", "busiest key, requests/s (restore)",
                                      "index GETs per restore, shared opening",
                                      "busiest key, requests/s (restore, shared opening)"}
    [run] = record["runs"]
    assert run["world"] == 16
    save, restore = run["save"], run["restore"]
    assert save["ranks_ok"] == restore["ranks_ok"] == 16 and not save["errors"] and not restore["errors"]
    workers = save["worker_requests"]
    assert set(workers["by_kind"]) == KINDS and set(save["coordinator_requests"]["by_kind"]) == KINDS
    assert workers["data_parts"]["max"] == 1  # a few KiB: one PUT
    assert workers["total"]["max"] >= 4 and workers["total"]["mean"] > 0  # join, data, report, verdict, ack
    assert save["coordinator_requests"]["by_kind"]["PUT"] >= 3  # claim, notice, index
    assert save["coordinator_list_pages"] >= 1
    assert save["busiest_keys"][0]["peak_per_s"] > 0 and save["busiest_keys"][0]["key"]
    assert 0 <= save["commit_latency_seconds"] < 60
    assert save["seconds"] > 0 and save["coordinator_cpu_seconds"] > 0
    assert save["proxy_cpu_seconds"] >= 0 and save["server_cpu_seconds"] >= 0
    assert save["slowdowns"] == restore["slowdowns"] == 0
    assert restore["rank_requests"]["index_gets"]["max"] == 1
    assert restore["rank_requests"]["by_kind"]["LIST"]["max"] == restore["rank_requests"]["by_kind"]["HEAD"]["max"] == 0
    assert restore["rank_requests"]["data_gets"]["max"] >= 1
    assert restore["seconds"] > 0 and restore["busiest_keys"]
    shared = run["restore_shared"]  # rank 0 opened and "broadcast": one index GET in all
    assert shared["ranks_ok"] == 16 and not shared["errors"]
    assert shared["index_gets"] == 1 and restore["index_gets"] == 16
    assert shared["rank_requests"]["by_kind"]["LIST"]["max"] == shared["rank_requests"]["by_kind"]["HEAD"]["max"] == 0
    assert shared["rank_requests"]["data_gets"]["max"] >= 1
    assert set(run["verdicts"]) == set(record["targets"])
    assert run["verdicts"]["index GETs per restore, shared opening"]
    assert "N=16" in out.stdout and "commit latency" in out.stdout  # the summary table
