"""The command line on SavedModels, without TensorFlow (its own tool, ``saved_model_cli``, is
the referee for `inspect` where installed): `inspect` (tags, signatures, variables; --json),
`verify` and `cp` of a SavedModel directory and of a versioned base directory (local and S3),
`ls` of a base directory (its complete versions), `gc` of partial versions; and checkpoint
tools carrying a TF1 Saver's ``PREFIX.meta``, which retention deletes with its checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from saved_model_files import upload

import remoteckpt
from remoteckpt.cli import main
from remoteckpt.management import versions
from remoteckpt.storage import Store, on_store

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "tf-2.21"
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "manifest.json").read_text())["checkpoints"]
DT = {"float32": "DT_FLOAT", "int64": "DT_INT64", "string": "DT_STRING"}


@pytest.fixture(params=["local", "s3"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "models") if request.param == "local" else request.getfixturevalue("s3_prefix")


def files(url: str) -> dict[str, bytes]:
    async def go(store: Store) -> dict[str, bytes]:
        return {k: await store.get(k) for k in await store.list()}

    return on_store(url, go)


def run_json(args: list[str], capsys: pytest.CaptureFixture[str], code: int = 0) -> dict[str, Any]:
    assert main([*args, "--json"]) == code
    return json.loads(capsys.readouterr().out)


def versioned(base: str) -> None:
    """BASE/1 and BASE/2 (TF-written SavedModels), BASE/3 partial (variables only)."""
    upload(FIXTURES / "saved_model_module", f"{base}/1")
    upload(FIXTURES / "saved_model_keras", f"{base}/2")
    upload(FIXTURES / "saved_model_keras" / "variables", f"{base}/3/variables")


@pytest.mark.parametrize("name", ["saved_model_keras", "saved_model_module"])
def test_inspect_shows_signatures_and_variables(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    spec = MANIFEST[name]
    directory = FIXTURES / spec["saved_model"]["directory"]
    doc = run_json(["inspect", str(directory)], capsys)
    assert doc["kind"] == "saved_model" and len(doc["meta_graphs"]) == 1
    graph = doc["meta_graphs"][0]
    assert graph["tags"] == spec["saved_model"]["tags"]
    # TensorFlow's own __saved_model_init_op is listed too, as saved_model_cli lists it.
    assert sorted(graph["signatures"]) == sorted([*spec["saved_model"]["signatures"], "__saved_model_init_op"])
    for key, expected in spec["saved_model"]["signatures"].items():
        got = graph["signatures"][key]
        assert got["method_name"] == "tensorflow/serving/predict"
        for side in ("inputs", "outputs"):
            assert sorted(got[side]) == sorted(expected[side])
            for tensor, want in expected[side].items():
                assert got[side][tensor]["dtype"] == DT[want["dtype"]]
                assert got[side][tensor]["shape"] == [-1 if d is None else d for d in want["shape"]]
                assert got[side][tensor]["name"]
    assert {row["name"] for row in doc["variables"]} == set(spec["tensors"]) | set(spec["also"])
    assert graph["assets"] == spec["saved_model"]["assets"]
    assert main(["inspect", str(directory)]) == 0
    text = capsys.readouterr().out
    assert "MetaGraphDef with tag-set: 'serve' contains the following SignatureDefs:" in text
    assert "Method name is: tensorflow/serving/predict" in text


@pytest.mark.parametrize("name", ["saved_model_keras", "saved_model_module"])
def test_inspect_prints_what_saved_model_cli_prints(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    tool = Path(sys.executable).parent / "saved_model_cli"
    if not tool.exists():
        pytest.skip("saved_model_cli (TensorFlow) is not installed")
    directory = FIXTURES / name
    theirs = subprocess.run([str(tool), "show", "--dir", str(directory), "--all"], capture_output=True, text=True,
                            check=True, timeout=300).stdout
    assert main(["inspect", str(directory)]) == 0
    ours = capsys.readouterr().out
    # saved_model_cli's signature section, up to the ops and concrete functions it also lists
    # (which need TensorFlow's graph protos), is ours line for line.
    block = theirs.split("The MetaGraph with tag set")[0].split("Concrete Functions:")[0].strip().splitlines()
    start = ours.splitlines().index(block[0])
    assert ours.splitlines()[start : start + len(block)] == block


def test_verify_saved_model_and_base(base: str, capsys: pytest.CaptureFixture[str]) -> None:
    versioned(base)
    doc = run_json(["verify", f"{base}/2"], capsys)
    assert doc["ok"] and doc["versions"][0]["tensors"] == doc["versions"][0]["tensors_total"] == 3
    doc = run_json(["verify", base], capsys)
    assert doc["ok"] and [v["prefix"] for v in doc["versions"]] == [f"{base}/1", f"{base}/2"]
    assert doc["partial"] == [3]
    # A damaged byte in version 1's variables: verify says so, exit code 1.
    data = "1/variables/variables.data-00000-of-00001"
    raw = bytearray(files(base)[data])
    raw[0] ^= 1
    on_store(base, lambda store: store.put(data, bytes(raw)))
    doc = run_json(["verify", base], capsys, code=1)
    assert not doc["ok"] and not doc["versions"][0]["ok"] and doc["versions"][1]["ok"]
    assert "checksum" in doc["versions"][0]["problems"][0]
    # An asset the graph names, missing: a problem too.
    on_store(base, lambda store: store.delete("1/assets/vocab.txt"))
    doc = run_json(["verify", f"{base}/1"], capsys, code=1)
    assert any("assets/vocab.txt: missing" in p for p in doc["versions"][0]["problems"])


CP_KILL_POINTS = ["committing", "export-variables", "export-fingerprint", "export-committing"]


@pytest.mark.parametrize("point", CP_KILL_POINTS)
def test_cp_killed_leaves_no_complete_saved_model(point: str, base: str) -> None:
    source = FIXTURES / "saved_model_module"
    env = {**os.environ, "REMOTECKPT_CRASH_AT": point,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-m", "remoteckpt", "cp", str(source), f"{base}/m"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, (point, killed.stderr)
    assert "saved_model.pb" not in files(f"{base}/m")
    assert main(["ls", base]) == 0  # "m/" is no version: a folder
    # Run again, it completes (what the killed copy left is replaced: nothing there was complete).
    assert main(["cp", str(source), f"{base}/m"]) == 0
    copied = files(f"{base}/m")
    for path in (p for p in source.rglob("*") if p.is_file()):
        assert copied[path.relative_to(source).as_posix()] == path.read_bytes(), path


def test_cp_saved_model_directory_round_trip(base: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = FIXTURES / "saved_model_module"
    doc = run_json(["cp", str(source), f"{base}/m"], capsys)
    assert doc["kind"] == "saved_model" and doc["tensors_verified"] == 2
    back = tmp_path / "back"
    assert main(["cp", f"{base}/m", str(back)]) == 0
    for path in (p for p in source.rglob("*") if p.is_file()):
        assert (back / path.relative_to(source)).read_bytes() == path.read_bytes(), path
    assert sorted(files(f"{base}/m")) == sorted(p.relative_to(source).as_posix()
                                                for p in source.rglob("*") if p.is_file())
    # A complete SavedModel is not replaced without --overwrite; with it, it is.
    assert main(["cp", str(FIXTURES / "saved_model_keras"), f"{base}/m"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["cp", str(FIXTURES / "saved_model_keras"), f"{base}/m", "--overwrite"]) == 0
    assert files(f"{base}/m")["saved_model.pb"] == (FIXTURES / "saved_model_keras" / "saved_model.pb").read_bytes()
    # Into a folder (a trailing slash): the directory keeps its name.
    assert main(["cp", str(source), f"{base}/into/"]) == 0
    assert "saved_model.pb" in files(f"{base}/into/saved_model_module")


def test_cp_and_ls_of_a_base_directory(base: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    versioned(base)
    doc = run_json(["ls", base], capsys)
    assert doc["kind"] == "saved_model_versions"
    assert [v["version"] for v in doc["versions"]] == [1, 2] and doc["partial"] == [3]
    assert main(["ls", base]) == 0
    assert "2 SavedModel versions" in capsys.readouterr().out
    copy = tmp_path / "copy"
    doc = run_json(["cp", base, str(copy)], capsys)
    assert doc["versions"] == [1, 2]
    assert sorted(p.name for p in copy.iterdir()) == ["1", "2"]  # never the partial version
    for number, name in ((1, "saved_model_module"), (2, "saved_model_keras")):
        for path in (p for p in (FIXTURES / name).rglob("*") if p.is_file()):
            assert (copy / str(number) / path.relative_to(FIXTURES / name)).read_bytes() == path.read_bytes()
    assert main(["cp", base, str(copy)]) == 1  # complete versions there: refused, nothing copied


def test_gc_removes_partial_versions_only(base: str) -> None:
    versioned(base)
    on_store(base, lambda store: store.put("100/ckpt.index", b"not a SavedModel"))
    report = remoteckpt.gc(base, older_than=0)
    assert sorted(report.removed) == ["3/variables/variables.data-00000-of-00001", "3/variables/variables.index"]
    assert report.removed[0].endswith(".index")  # the variables' index first: no half checkpoint
    left = on_store(base, versions.scan_versions)
    assert sorted(left) == [1, 2] and all(v.complete for v in left.values())
    assert "100/ckpt.index" in files(base)
    assert not remoteckpt.gc(base, older_than=3600).removed


def test_cp_carries_a_savers_meta_graph(base: str) -> None:
    source = FIXTURES / "v1_saver" / "model.ckpt-40"
    report = remoteckpt.tools.copy.copy_checkpoint(str(source), f"{base}/model.ckpt-40")
    copied = files(base)
    assert copied["model.ckpt-40.meta"] == Path(f"{source}.meta").read_bytes()
    assert report.files == 3
    assert remoteckpt.CheckpointReader(f"{base}/model.ckpt-40").get_variable_to_shape_map()


def test_retention_deletes_the_meta_graph(tmp_path: Path) -> None:
    saver = remoteckpt.Saver(max_to_keep=1)
    first = saver.save({"w": np.ones(3, np.float32)}, str(tmp_path / "model.ckpt"), global_step=1)
    shutil.copy(FIXTURES / "v1_saver" / "model.ckpt-40.meta", f"{first}.meta")
    saver.save({"w": np.zeros(3, np.float32)}, str(tmp_path / "model.ckpt"), global_step=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("model.ckpt-1")) == []


def test_retiring_a_version_deletes_its_variables_index_first_even_beside_an_asset_named_index(tmp_path: Path) -> None:
    """An asset whose name ends in ``.index`` (a FAISS index) neither takes the variables
    index's place in the deletion order nor keeps it from being deleted."""
    keys = ["1/saved_model.pb", "1/fingerprint.pb", "1/assets/embeddings.index", "1/variables/variables.index",
            "1/variables/variables.data-00000-of-00001"]
    order = versions.deletion_order(keys)
    assert order[:2] == ["1/saved_model.pb", "1/variables/variables.index"]
    for key in keys:
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(b"x")
    info = versions.VersionInfo(number=1, complete=True, bytes=len(keys), mtime=0.0, keys=tuple(keys))
    on_store(str(tmp_path), lambda store: versions.retire(store, info))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
