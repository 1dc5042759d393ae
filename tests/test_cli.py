"""The `remoteckpt` command: inspect a checkpoint like TF's inspect_checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import remoteckpt
from remoteckpt.cli import main


@pytest.fixture
def prefix(tmp_path: Path) -> str:
    return remoteckpt.save({
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "words": np.array([b"a", b"bc"], object),
        "p": [remoteckpt.Slice(np.ones((2, 2), np.int32), (4, 2), (2, 0)),
              remoteckpt.Slice(np.zeros((2, 2), np.int32), (4, 2), (0, 0))],
    }, tmp_path / "ck")


def test_inspect_lists_tensors(prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", prefix]) == 0
    out = capsys.readouterr().out
    assert "tensor_name: w  float32[2, 3]  24 bytes" in out
    assert "slices ['2,2:-', '0,2:-']" in out


def test_inspect_json_with_values(prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", prefix, "--all-tensors", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by_name = {t["name"]: t for t in doc["tensors"]}
    assert by_name["w"]["value"] == [[0, 1, 2], [3, 4, 5]]
    assert by_name["words"]["value"] == ["a", "bc"]
    assert by_name["words"]["dtype"] == "string"
    assert by_name["p"]["value"] == [[0, 0], [0, 0], [1, 1], [1, 1]]


def test_errors_exit_1_with_message(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "remoteckpt", "inspect", str(tmp_path / "missing")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "checkpoint not found" in result.stderr and "missing.index" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_tensor_exits_1(prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", prefix, "--tensor", "nope"]) == 1
    assert "'nope' not found" in capsys.readouterr().err
