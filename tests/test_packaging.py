"""What users install: the wheel holds the library and nothing else, and the library works with
the lowest versions of its dependencies that pyproject.toml declares.

Both build or install from PyPI (network), so they are `slow`.
"""

from __future__ import annotations

import email.parser
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import remoteckpt

if sys.version_info >= (3, 11):
    import tomllib
else:
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CORE = ("numpy", "protobuf", "fsspec", "s3fs", "aiofiles", "crc32c", "ml_dtypes")
"""The dependencies whose declared floors `test_the_declared_minimum_versions_work` installs."""

pytestmark = pytest.mark.slow


def _source_copy(dest: Path) -> Path:
    """The repository's tracked kinds of files (no environments, build output or caches)."""
    ignore = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".hypothesis", "bench-results")
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def _pip(python: str | Path, *args: str, cwd: Path) -> None:
    subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "--quiet", *args], cwd=cwd,
                   check=True, timeout=900)


def test_the_wheel_holds_the_library_only(tmp_path: Path) -> None:
    source = _source_copy(tmp_path / "src")
    _pip(sys.executable, "wheel", "--no-deps", "--wheel-dir", str(tmp_path / "dist"), str(source), cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("remoteckpt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    info = f"remoteckpt-{remoteckpt.__version__}.dist-info/"
    library = [n for n in names if not n.startswith(info)]
    assert all(n.startswith("remoteckpt/") for n in library), [n for n in library if not n.startswith("remoteckpt/")]
    assert all(n.endswith((".py", ".pyi")) or n == "remoteckpt/py.typed" for n in library), library
    assert "remoteckpt/py.typed" in library and "remoteckpt/testing/seaweed.py" in library
    assert not [n for n in library if n.split("/")[1] in ("bench", "benchmarks", "tests", "examples", "demo.py",
                                                          "devserver.py")]
    packaged = {n.removeprefix("remoteckpt/") for n in library if n.endswith((".py", ".pyi"))}
    on_disk = {str(p.relative_to(ROOT / "remoteckpt")) for p in (ROOT / "remoteckpt").rglob("*.py*")
               if p.suffix in (".py", ".pyi") and "__pycache__" not in p.parts}
    assert packaged == on_disk
    assert f"{info}licenses/LICENSE" in names
    metadata = email.parser.Parser().parsestr(zipfile.ZipFile(wheel).read(f"{info}METADATA").decode())
    assert metadata["Version"] == remoteckpt.__version__
    assert metadata["License-Expression"] == "Apache-2.0"
    assert sorted(metadata.get_all("Provides-Extra")) == ["jax", "tensorflow", "test", "testing", "torch"]
    entry_points = zipfile.ZipFile(wheel).read(f"{info}entry_points.txt").decode()
    assert "remoteckpt = remoteckpt.cli:main" in entry_points


def _floors() -> dict[str, str]:
    floors = {}
    for text in PYPROJECT["project"]["dependencies"]:
        req = Requirement(text)
        (floor,) = [s.version for s in req.specifier if s.operator == ">="]
        floors[req.name] = floor
    return floors


def test_every_dependency_has_a_floor_and_the_core_ones_are_checked() -> None:
    assert set(CORE) <= set(_floors())


ROUND_TRIP = """
import importlib.metadata, json, sys, numpy as np, ml_dtypes, remoteckpt
tensors = {"f32": np.arange(12, dtype=np.float32).reshape(3, 4), "i64": np.int64(7),
           "bf16": np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16),
           "f4": np.array([0.5, 6.0], dtype=ml_dtypes.float4_e2m1fn),
           "words": np.array([b"a", "\\u00fcn".encode()], dtype=object),
           "part": [remoteckpt.Slice(np.ones((2, 3), np.float32), full_shape=(4, 3), offset=(0, 0)),
                    remoteckpt.Slice(np.zeros((2, 3), np.float32), full_shape=(4, 3), offset=(2, 0))]}
prefix = remoteckpt.save(tensors, sys.argv[1])
got = remoteckpt.load(prefix)
assert got["f32"].tolist() == tensors["f32"].tolist() and int(got["i64"]) == 7
assert got["bf16"].dtype == ml_dtypes.bfloat16 and got["bf16"].astype(float).tolist() == [1.5, -2.0]
assert got["f4"].dtype == ml_dtypes.float4_e2m1fn and got["f4"].astype(float).tolist() == [0.5, 6.0]
assert got["words"].tolist() == [b"a", "\\u00fcn".encode()]
assert got["part"].tolist() == [[1.0] * 3] * 2 + [[0.0] * 3] * 2
assert remoteckpt.CheckpointReader(prefix).get_slice("part", (slice(1, 3),)).tolist() == [[1.0] * 3, [0.0] * 3]
print(json.dumps({d.metadata["Name"].lower().replace("-", "_"): d.version for d in importlib.metadata.distributions()}))
"""


def test_the_declared_minimum_versions_work(tmp_path: Path) -> None:
    """A fresh environment with each core dependency at exactly its declared floor (the rest as
    pip resolves them) installs remoteckpt and round-trips a checkpoint on local disk."""
    floors = {name: _floors()[name] for name in CORE}
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in floors.items()))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    _pip(python, "install", "--constraint", str(constraints), str(_source_copy(tmp_path / "src")), cwd=tmp_path)
    result = subprocess.run([str(python), "-c", ROUND_TRIP, str(tmp_path / "ck" / "model.ckpt-1")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    installed = json.loads(result.stdout.splitlines()[-1])
    for name, version in floors.items():
        assert Version(installed[name.lower().replace("-", "_")]) == Version(version), (name, installed)


@pytest.mark.parametrize("stack", [
    ("tensorflow==2.21.0",),  # the GPU package, not only tensorflow-cpu
    ("torch==2.4.0",),  # the oldest torch the DCP plugin supports
    ("torch==2.13.0", "jax"),  # the newest torch, with current JAX
], ids=lambda stack: "+".join(stack))
def test_installs_beside_each_ml_stack(tmp_path: Path, stack: tuple[str, ...]) -> None:
    """pip resolves remoteckpt together with each framework stack its users run (a dry run:
    the metadata of every wheel, none installed), so no pin of ours conflicts with theirs."""
    report = tmp_path / "report.json"
    _pip(sys.executable, "install", "--dry-run", "--ignore-installed", "--report", str(report),
         str(_source_copy(tmp_path / "src")), *stack, cwd=tmp_path)
    chosen = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
              for item in json.loads(report.read_text())["install"]}
    assert "remoteckpt" in chosen, sorted(chosen)
    for pin in stack:
        requirement = Requirement(pin)
        assert requirement.name in chosen and requirement.specifier.contains(chosen[requirement.name]), (pin, chosen)
