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


@pytest.fixture(params=["local", "s3"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "d") if request.param == "local" else request.getfixturevalue("s3_prefix")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "remoteckpt", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_every_command_on_local_and_s3(base: str, tmp_path: Path) -> None:
    saver = remoteckpt.Saver(max_to_keep=5)
    for step in (100, 200):
        saver.save({"w": np.full((300, 300), step, np.float32), "words": np.array([b"a"], object)},
                   f"{base}/model.ckpt", global_step=step)

    listing = _cli("ls", base, "--json")
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    assert [(r["step"], r["latest"]) for r in rows] == [(100, False), (200, True)]
    assert "*" in _cli("ls", base).stdout

    checked = _cli("verify", f"{base}/model.ckpt-200", "--json")
    assert checked.returncode == 0 and json.loads(checked.stdout)["ok"] is True

    copied_to = str(tmp_path / "copy" / "model.ckpt-200")
    copy = _cli("cp", f"{base}/model.ckpt-200", copied_to, "--json")
    assert copy.returncode == 0, copy.stderr
    assert json.loads(copy.stdout)["tensors_verified"] == 2
    np.testing.assert_array_equal(remoteckpt.load(copied_to)["w"], np.full((300, 300), 200, np.float32))
    assert _cli("cp", f"{base}/model.ckpt-200", copied_to).returncode == 1  # never over a committed one
    back = _cli("cp", copied_to, f"{base}/copied-back")
    assert back.returncode == 0, back.stderr
    assert _cli("verify", f"{base}/copied-back").returncode == 0

    swept = _cli("gc", base, "--older-than", "0", "--json")
    assert swept.returncode == 0 and json.loads(swept.stdout)["removed"] == []
    assert _cli("inspect", f"{base}/model.ckpt-100").returncode == 0


def test_verify_reports_every_damaged_tensor(tmp_path: Path) -> None:
    prefix = remoteckpt.save({"a": np.arange(1000, dtype=np.float32), "b": np.arange(1000.0),
                              "c": np.ones(10)}, tmp_path / "ck")
    data = tmp_path / "ck.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[10] ^= 1  # in a
    raw[4000 + 10] ^= 1  # in b
    data.write_bytes(bytes(raw))
    result = _cli("verify", prefix)
    assert result.returncode == 1
    assert "2 PROBLEM(S)" in result.stdout and "'a'" in result.stdout and "'b'" in result.stdout


def test_copy_refuses_a_damaged_source(tmp_path: Path) -> None:
    prefix = remoteckpt.save({"a": np.arange(1000, dtype=np.float32)}, tmp_path / "ck")
    data = tmp_path / "ck.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[99] ^= 4
    data.write_bytes(bytes(raw))
    result = _cli("cp", prefix, str(tmp_path / "out" / "ck"))
    assert result.returncode == 1 and "checksum mismatch" in result.stderr
    assert not (tmp_path / "out" / "ck.index").exists()


def test_progress_events(tmp_path: Path) -> None:
    events: list[remoteckpt.ProgressEvent] = []
    tensors = {f"t{i}": np.ones(2**20, np.float32) for i in range(4)}
    remoteckpt.save(tensors, tmp_path / "p", progress=events.append)
    kinds = [e.kind for e in events]
    assert kinds[0] == "staged" and kinds[-1] == "committed"
    written = [e for e in events if e.kind == "written"]
    assert written[-1].done == written[-1].total == 16 * 2**20
    assert all(a.done <= b.done for a, b in zip(written, written[1:]))
    reads: list[remoteckpt.ProgressEvent] = []
    remoteckpt.load(tmp_path / "p", progress=reads.append)
    assert reads[-1].kind == "read" and reads[-1].done == reads[-1].total == 16 * 2**20


def test_progress_bar_draws_on_a_terminal_only() -> None:
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = remoteckpt.ProgressBar("save", stream, min_interval=0)
        bar(remoteckpt.ProgressEvent("p", 0, 1, "written", 512, 1024))
        bar.close()
    assert "written" in tty.getvalue() and "512B/1.0KiB" in tty.getvalue()
    assert pipe.getvalue() == ""


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.metadata

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"remoteckpt {remoteckpt.__version__}"
    assert importlib.metadata.version("remoteckpt") == remoteckpt.__version__


def test_bench_measures_a_store_and_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(tmp_path), "--gib", "0.01", "--tensors", "3", "--repeat", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["url"] == str(tmp_path) and doc["tensors"] == 3 and doc["bytes"] > 0
    for op in ("save", "restore"):
        assert len(doc[op]["seconds"]) == 2 and doc[op]["best_seconds"] == min(doc[op]["seconds"])
        assert doc[op]["gib_per_s"] > 0
    assert list(tmp_path.iterdir()) == []  # the scratch directory is gone, the URL kept
    assert main(["bench", str(tmp_path), "--gib", "0.01", "--tensors", "2", "--repeat", "1"]) == 0
    assert "save     remoteckpt.save" in capsys.readouterr().out
    assert main(["bench", "--repeat", "0"]) == 2


def test_bench_on_s3_deletes_what_it_wrote(s3_prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    from remoteckpt.tools.inventory import list_checkpoints

    remoteckpt.save({"keep": np.ones(3)}, f"{s3_prefix}/keep.ckpt")
    assert main(["bench", s3_prefix, "--gib", "0.01", "--tensors", "2", "--repeat", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["save"]["gib_per_s"] > 0
    assert [c.prefix.rsplit("/", 1)[1] for c in list_checkpoints(s3_prefix)] == ["keep.ckpt"]
    assert remoteckpt.list_variables(f"{s3_prefix}/keep.ckpt") == [("keep", [3])]
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert [p.rsplit("/", 1)[1] for p in fs.find(s3_prefix.removeprefix("s3://"))] == \
        ["keep.ckpt.data-00000-of-00001", "keep.ckpt.index"]  # objects; SeaweedFS may keep an empty folder
