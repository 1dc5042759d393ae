"""The reliability soak (benchmarks/soak, ``make soak``) at a tiny size, as a subprocess:
every phase (the lifecycle phases too) does some work and finds nothing wrong, the JSON record
splits the corruption phase's damages by kind, the run ends within its stated bound; the tiers
phase, run only when named, runs a job sharing a local tier and a job with a tier per host and
finds nothing wrong; and a unit of work (or a phase's whole process) that hangs is reported as a
hang while the run still ends in time; a phase's process that dies (a signal, an exit code) is
reported as a violation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks import soak
from remoteckpt.testing import SeaweedServer

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.s3]

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    """The soak runs from the repository root with the test suite's modules importable, as
    `make soak` runs it (and with the AWS_* settings of the moment)."""
    return {**os.environ, "PYTHONPATH": str(ROOT / "tests")}


STARTUP_SLACK = 5.0
"""Seconds the soak's interpreter may take to start before its clock (and bound) starts."""
SMOKE_SEED = 233
"""A seed whose first units are light (two 2-worker crash jobs, one local and one on S3; a race
of two 1-worker jobs on S3; 4-8 MiB network saves; 2-worker retry, zombie and long-save jobs),
so that every phase completes a unit within a tiny run even on a loaded 2-core machine."""
SMOKE_MINUTES = 0.25
"""15 s of windows for nine phases (crash 4.5 s, each of the others a second or two): a tiny run
is mostly grace, in which each phase's first units finish (a lifecycle unit takes 2 to 12 s, a
crash job up to 10 s on a loaded machine), each phase in turn; the run's bound is 90 s, about
45 s of it used."""
SMOKE_GRACE = 60
SMOKE = ["--minutes", str(SMOKE_MINUTES), "--grace", str(SMOKE_GRACE), "--concurrency", "2", "--seed", str(SMOKE_SEED)]
LIFE_UNITS = ("retry_units", "restart_units", "zombie_units", "long_units")
HANG_MINUTES = 0.1
"""A 6 s fuzz window: room for the phase process's start, a first batch and the injected hang's
1 s bound before the cutoff, under load."""
HANG = ["--only", "fuzz", "--minutes", str(HANG_MINUTES), "--grace", "2"]


def _soak(args: list[str], out: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], float]:
    """Run the soak with `args`; its process, JSON record and wall time."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.soak", *args, "--out", str(out)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=180)
    wall = time.monotonic() - start
    records = sorted(out.glob("soak-*.json"))
    assert records, proc.stdout + proc.stderr
    return proc, json.loads(records[-1].read_text()), wall


def _assert_within_bound(record: dict[str, Any], wall: float, minutes: float, grace: float) -> None:
    bound = minutes * 60 + grace + soak.EXIT_SECONDS + soak.TEARDOWN_SECONDS
    assert record["bound_seconds"] == pytest.approx(bound)
    assert record["wall_seconds"] <= bound, record["schedule"]
    assert wall <= bound + STARTUP_SLACK, record["schedule"]


def test_tiny_soak_runs_every_phase_within_its_bound(s3_server: SeaweedServer, tmp_path: Path) -> None:
    proc, record, wall = _soak([*SMOKE, "--s3-endpoint", s3_server.endpoint_url, "--s3-bucket", s3_server.bucket],
                               tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert record["violations"] == [], output
    c = record["counts"]
    for key in ("crash_scenarios", "net_operations", "races", "damages", "fuzz_executions", *LIFE_UNITS):
        assert c.get(key, 0) > 0, (key, output)
    assert set(record["schedule"]) == set(soak.PHASES), record["schedule"]
    assert not any(e.get("killed") or "skipped" in e for e in record["schedule"].values()), record["schedule"]
    # corruption, detected per kind of damage, in the JSON and the summary
    by_kind = record["corruption_by_kind"]
    assert set(by_kind) == {*soak.DAMAGE_KINDS, "total"}
    assert by_kind["total"]["damages"] == c["damages"] == sum(by_kind[k]["damages"] for k in soak.DAMAGE_KINDS)
    assert by_kind["total"]["detected"] == sum(by_kind[k]["detected"] for k in soak.DAMAGE_KINDS)
    for row in by_kind.values():
        assert row["detected"] == row["effective"] == row["damages"] - row["without_effect"], by_kind
    assert "by kind, detected/effective" in proc.stdout
    assert "UnnamedSaveWarning" not in output  # every soak job saves with its own save id
    _assert_within_bound(record, wall, SMOKE_MINUTES, SMOKE_GRACE)


TIERS_SEED = 14
"""A seed whose first two tiers units are light: a 1-worker job sharing a tier, killed after its
drain's commit, then a per-host job of 2 hosts, worker 1 killed after its drain's commit."""
TIERS = ["--only", "tiers", "--minutes", "0.02", "--grace", "90", "--concurrency", "2", "--seed", str(TIERS_SEED)]
"""The tiers phase (run only when named) at its smallest: a window of 1.2 s in which each of
two threads starts one unit, a shared tier's job then a per-host one, and up to 90 s of grace
for them to finish on a loaded machine."""


def test_tiny_tiers_soak_runs_a_shared_and_a_per_host_job(s3_server: SeaweedServer, tmp_path: Path) -> None:
    proc, record, wall = _soak([*TIERS, "--s3-endpoint", s3_server.endpoint_url, "--s3-bucket", s3_server.bucket],
                               tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and record["violations"] == [], output
    c = record["counts"]
    assert c["tier_jobs"] == 1 and c["tier_kills_injected"] == 1, (c, output)
    assert c["host_tier_jobs"] == 1 and c["host_tier_kills_injected"] == 1 and c["host_tier_w2x1"] == 1, (c, output)
    assert c["host_tier_remote_committed"] == 1 and c["host_tier_restores_byte_exact"] == 5, (c, output)
    assert "per-host: 1 jobs" in proc.stdout
    _assert_within_bound(record, wall, 0.02, 90)


@pytest.mark.parametrize("how", ["unit", "exit"])
def test_a_hang_is_reported_and_the_run_still_ends_in_time(how: str, tmp_path: Path) -> None:
    """--hang-unit: the phase's second unit never returns (its thread is abandoned at the cutoff);
    --hang-exit: the phase's process never exits (a non-daemon thread, as the old soak's network
    phase left behind) and is killed.  Either way: a hang violation that shows where, and the
    run ends within its bound."""
    proc, record, wall = _soak([*HANG, f"--hang-{how}", "fuzz"], tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (violation,) = record["violations"]
    assert violation["phase"] == "fuzz" and violation["what"].startswith("HANG"), violation
    assert "_hang_forever" in json.dumps(violation), violation  # where it hung
    assert record["counts"]["hangs_fuzz"] == 1
    assert record["counts"]["fuzz_executions"] > 0  # the work done before the hang is counted
    entry = record["schedule"]["fuzz"]
    if how == "unit":
        assert violation["repro"]["injected_hang"] is True
        assert not entry["killed"] and entry["finished"], entry
    else:
        assert entry["killed"] and entry["finished"], entry  # its work had ended, it did not exit
    _assert_within_bound(record, wall, HANG_MINUTES, 2)


@pytest.mark.parametrize("how", ["segv", "exit"])
def test_a_phase_process_that_dies_is_a_violation(how: str, tmp_path: Path) -> None:
    """--die-in fuzz:HOW: the phase's process dies in its second unit, by SIGSEGV (faulthandler
    leaves its stack) or os._exit(3): a "died" violation with the unit in flight, not a cut-off."""
    proc, record, wall = _soak([*HANG, "--die-in", f"fuzz:{how}"], tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (violation,) = record["violations"]
    what = violation["what"]
    assert violation["phase"] == "fuzz" and what.startswith("phase process died"), violation
    assert ("signal 11" in what and "_die" in what) if how == "segv" else "exit code 3" in what, violation
    assert [u["repro"]["injected_death"] for u in violation["repro"]["in_flight"]] == [how], violation
    entry = record["schedule"]["fuzz"]
    assert entry["cut_off"] == 0 and not entry["killed"] and not entry["finished"], entry
    assert record["counts"]["died_fuzz"] == 1 and record["counts"]["fuzz_executions"] > 0
    _assert_within_bound(record, wall, HANG_MINUTES, 2)


def test_a_phase_given_twice_is_refused(tmp_path: Path) -> None:
    """Each phase's snapshot is named by the phase: a second run of it would read the first's."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--only", "fuzz,fuzz", "--out",
                           str(tmp_path)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "twice" in proc.stderr, proc.stderr
    assert not list(tmp_path.iterdir())
