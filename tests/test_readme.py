"""The README's and the plugin docs' examples run as written, against the S3 test server (the
only change: the doc's example bucket becomes the test's)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import remoteckpt

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def _block(path: Path, after: str, language: str = "python") -> str:
    """The first ``` block of `language` after the line `after` in `path`."""
    found = re.search(re.escape(after) + r"\n.*?```" + language + r"\n(.*?)```", path.read_text(), re.S)
    assert found, f"{path.name} has no {language} block after {after!r}"
    return found.group(1)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def test_quickstart_runs_on_s3(s3_server: object, s3_prefix: str) -> None:
    source = _block(README, "## Quickstart")
    assert '"s3://my-bucket/run1/model.ckpt-1000"' in source
    source = source.replace('"s3://my-bucket/run1/model.ckpt-1000"', repr(f"{s3_prefix}/model.ckpt-1000"))
    namespace: dict[str, object] = {}
    exec(compile(source, str(README), "exec"), namespace)
    assert namespace["rows"].shape == (10, 64)  # type: ignore[attr-defined]


def test_the_command_line_examples_run_on_s3(s3_server: object, s3_prefix: str, tmp_path: Path) -> None:
    """Every line of the README's command-line block but `bench` (a GiB), its optional parts
    left out, on a checkpoint saved where the README's examples put it."""
    remoteckpt.save({"dense/kernel": np.ones((4, 3), np.float32)}, f"{s3_prefix}/run1/model.ckpt-1000")
    lines = [line.split("#", 1)[0].strip() for line in _block(README, "## Command line", "").splitlines()]
    ran = []
    for line in filter(None, lines):
        if line.startswith("remoteckpt bench"):
            continue
        line = re.sub(r"\s*\[[^\]]*\]", "", line)
        line = line.replace("s3://my-bucket/run1", f"{s3_prefix}/run1").replace("/data/", f"{tmp_path}/data/")
        args = shlex.split(line)
        assert args[0] == "remoteckpt"
        result = subprocess.run([sys.executable, "-m", "remoteckpt", *args[1:]], capture_output=True, text=True,
                                timeout=300, env=_env())
        assert result.returncode == 0, (line, result.stderr)
        ran.append(args[1])
    assert ran == ["inspect", "ls", "verify", "cp", "gc", "--version"]
    assert (tmp_path / "data" / "model.ckpt-1000.index").exists()  # cp into a folder keeps the name


@pytest.mark.slow
@pytest.mark.tensorflow
def test_tensorflow_reads_local_copies_not_s3(s3_server: object, s3_prefix: str, tmp_path: Path) -> None:
    """What the README says after the quickstart: TensorFlow reads a local copy (`remoteckpt
    cp` first), and has no s3:// file system."""
    tf: Any = pytest.importorskip("tensorflow")
    prefix = remoteckpt.save({"dense/kernel": np.arange(6, dtype=np.float32)}, f"{s3_prefix}/model.ckpt-1000")
    copied = subprocess.run([sys.executable, "-m", "remoteckpt", "cp", prefix, f"{tmp_path}/data/"],
                            capture_output=True, text=True, timeout=300, env=_env())
    assert copied.returncode == 0, copied.stderr
    local = tf.train.load_checkpoint(str(tmp_path / "data" / "model.ckpt-1000"))
    np.testing.assert_array_equal(local.get_tensor("dense/kernel"), np.arange(6))
    with pytest.raises(Exception, match="scheme 's3' not implemented"):
        tf.train.load_checkpoint(prefix)


def _run_script(source: str, path: Path) -> subprocess.CompletedProcess[str]:
    path.write_text(source)
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=900, env=_env(),
                          cwd=path.parent)


@pytest.mark.slow
@pytest.mark.tensorflow
def test_the_tensorflow_example_runs_on_s3_twice(s3_server: object, s3_prefix: str, tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    doc = DOCS / "plugins" / "tensorflow.md"
    source = _block(doc, "## Example")
    line = 'base = "s3://my-bucket/run1"  # or a local directory'
    assert line in source
    source = source.replace(line, f"base = {s3_prefix!r}")
    for run in (1, 2):  # a second run finds its checkpoints committed, and replaces them
        result = _run_script(source, tmp_path / "example.py")
        assert result.returncode == 0, (run, result.stderr[-3000:])
        assert "save_counter/.ATTRIBUTES/VARIABLE_VALUE" in result.stdout


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.multiprocess
def test_the_torch_example_runs_on_s3(s3_server: object, s3_prefix: str, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    doc = DOCS / "plugins" / "torch.md"
    source = _block(doc, "## Example")
    assert "os.listdir" not in source
    line = 'base = os.path.join(workdir, "run")                # or "s3://my-bucket/run"'
    assert line in source
    for base in (f"{s3_prefix}/run", None):  # on S3, then as written (local)
        script = source if base is None else source.replace(line, f"base = {base!r}")
        result = _run_script(script, tmp_path / "example.py")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "3\n{'_DCP_BYTES/step': [], '_DCP_METADATA': [], 'model.bias': [4], 'model.embedding': [8, 4]}" \
            in result.stdout
        assert "step-100.index already exists: a committed checkpoint is there" in result.stdout
