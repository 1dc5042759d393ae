"""The `remoteckpt` command: inspect a checkpoint like TF's inspect_checkpoint."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    result = _cli("inspect", str(tmp_path / "missing"))
    assert result.returncode == 1
    assert "checkpoint not found" in result.stderr and "missing.index" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_tensor_exits_1(prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", prefix, "--tensor", "nope"]) == 1
    assert "'nope' not found" in capsys.readouterr().err


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "d") if request.param == "local" else request.getfixturevalue("s3_prefix")


ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    """The test's environment (AWS_* of the S3 fixture included), this tree's code first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed entry point's code (``python -m remoteckpt``), in a subprocess."""
    return subprocess.run([sys.executable, "-m", "remoteckpt", *args], capture_output=True, text=True, timeout=300,
                          env=_env(**env))


@pytest.mark.slow
def test_every_command_on_local_and_s3(base: str, tmp_path: Path) -> None:
    saver = remoteckpt.Saver(max_to_keep=5)
    for step in (100, 200):
        saver.save({"w": np.full((300, 300), step, np.float32), "words": np.array([b"a"], object)},
                   f"{base}/model.ckpt", global_step=step)

    listing = _cli("ls", base, "--json")
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)["checkpoints"]
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
    assert "1 of 3 tensors verified, 80 bytes: 2 problems" in result.stdout
    assert "'a'" in result.stdout and "'b'" in result.stdout


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
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["ok"] is True and doc["url"] == str(tmp_path) and doc["tensors"] == 3 and doc["bytes"] > 0
    assert doc["scratch"].startswith(f"{tmp_path}/remoteckpt-bench-")
    assert f"into {doc['scratch']} (deleted at the end)" in err  # says where it writes, on stderr
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


# --- failures: one line, the documented exit code, JSON too --------------------------------------


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("remoteckpt: error: "), result.stderr
    return lines[0]


def test_every_failure_is_one_line_with_its_exit_code(prefix: str, tmp_path: Path) -> None:
    import importlib.util

    cases: list[tuple[list[str], int, str]] = [
        (["inspect", "foo://x/y"], 2, "unknown URL scheme 'foo'"),
        (["inspect", "ftp://x.invalid/y"], 1, "ftp://x.invalid"),
        (["inspect", prefix, "--tensor", "w", "--all-tensors"], 2, "not allowed with argument --tensor"),
        (["ls", str(tmp_path / "nonexistent")], 1, "no such directory"),
        (["gc", str(tmp_path / "nonexistent")], 1, "no such directory"),
        (["verify", str(tmp_path / "nonexistent")], 1, "checkpoint not found"),
        (["bench", "--repeat", "0"], 2, "must be positive"),
        ([], 2, "required: COMMAND"),
        (["inspect"], 2, "required: CHECKPOINT"),
    ]
    if importlib.util.find_spec("gcsfs") is None:
        cases.append((["inspect", "gs://b/x"], 2, "Please install gcsfs"))
    for args, code, words in cases:
        result = _cli(*args)
        assert result.returncode == code, (args, result.returncode, result.stderr)
        assert words in _one_error_line(result), (args, result.stderr)
        assert result.stdout == "", (args, result.stdout)
        if args:
            as_json = _cli(*args, "--json")
            assert as_json.returncode == code and words in _one_error_line(as_json)
            doc = json.loads(as_json.stdout)
            assert doc["ok"] is False and doc["error"]["exit_code"] == code and words in doc["error"]["message"]


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """``remoteckpt inspect P | head``: no traceback, no message, exit 1."""
    many = remoteckpt.save({f"t{i:05d}": np.ones(3, np.float32) for i in range(3000)}, tmp_path / "many")
    proc = subprocess.Popen([sys.executable, "-m", "remoteckpt", "inspect", many, "--all-tensors"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"/")
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1
    assert err == b""


def test_json_is_one_object_with_ok_for_every_command(prefix: str, tmp_path: Path) -> None:
    for args in (["inspect", prefix], ["ls", str(tmp_path)], ["verify", prefix], ["gc", str(tmp_path), "--dry-run"],
                 ["cp", prefix, str(tmp_path / "copied") + "/"]):
        result = _cli(*args, "--json")
        assert result.returncode == 0, (args, result.stderr)
        doc = json.loads(result.stdout)
        assert isinstance(doc, dict) and doc["ok"] is True, (args, doc)


def test_every_option_has_help_and_bench_help_has_no_markup() -> None:
    import argparse

    from remoteckpt.cli import _parser

    def check(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            assert action.help, (parser.prog, action.option_strings or action.dest)
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    check(sub)

    check(_parser())
    shown = _cli("bench", "--help")
    assert shown.returncode == 0 and "`" not in shown.stdout and "remoteckpt.save" in shown.stdout


# --- wording and counts -------------------------------------------------------------------------


def test_counts_and_words_agree(prefix: str, tmp_path: Path) -> None:
    """The fixture holds 3 tensors, one of them partitioned in 2 slices: every command says 3."""
    assert "ck: 3 tensors, 1 data file" in _cli("inspect", prefix).stdout
    assert "ck: 3 tensors verified, 65 bytes: OK" in _cli("verify", prefix).stdout
    copied = _cli("cp", prefix, str(tmp_path / "copy" / "ck"))
    assert "3 tensors verified, 2 files" in copied.stdout, copied.stderr
    one = remoteckpt.save({"only": np.ones(1, np.int8)}, tmp_path / "one")
    assert "one: 1 tensor, 1 data file" in _cli("inspect", one).stdout
    assert "1 byte  shard 0" in _cli("inspect", one).stdout
    assert "one: 1 tensor verified, 1 byte: OK" in _cli("verify", one).stdout
    again = _cli("cp", prefix, str(tmp_path / "copy" / "ck"))
    assert again.returncode == 1 and "pass --overwrite to replace it" in _one_error_line(again)
    assert _cli("cp", prefix, str(tmp_path / "copy" / "ck"), "--overwrite").returncode == 0


def test_verify_of_a_truncated_file_counts_the_bytes_it_checked(tmp_path: Path) -> None:
    prefix = remoteckpt.save({"a": np.arange(1000, dtype=np.float32), "b": np.arange(30_000.0),
                              "c": np.arange(100_000.0)}, tmp_path / "ck")
    data = tmp_path / "ck.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:300_000])  # a and b whole (244,000 bytes), c cut
    result = _cli("verify", prefix, "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["tensors"] == 2 and doc["tensors_total"] == 3
    assert doc["bytes"] == 4000 + 240_000  # a's and b's: never more than the file holds
    assert doc["bytes_total"] == 4000 + 240_000 + 800_000 and len(doc["problems"]) == 1
    text = _cli("verify", prefix)
    assert "ck: 2 of 3 tensors verified, 244000 bytes: 1 problem" in text.stdout


# --- ls -------------------------------------------------------------------------------------------


def test_ls_lists_folders_and_every_kind_of_checkpoint(base: str) -> None:
    saver = remoteckpt.Saver()
    for step in (100, 200):
        saver.save({"w": np.ones(10, np.float32)}, f"{base}/model.ckpt", global_step=step)
    remoteckpt.save({"w": np.ones((700, 1000), np.float32)}, f"{base}/step-300/")  # 2.67 MiB, directory-style
    remoteckpt.save({"w": np.ones(1)}, f"{base}/runs/a/model.ckpt-1")
    shown = _cli("ls", base)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].endswith(": 3 checkpoints, 1 folder (* = latest)")
    assert any(line.split() == ["PRE", "runs/"] for line in lines)
    rows = {line.split()[-1]: line for line in lines[2:] if "PRE" not in line}
    assert set(rows) == {"model.ckpt-100", "model.ckpt-200", "step-300/"}
    assert rows["model.ckpt-200"].startswith("*")  # the state file's latest
    assert " 300 " in rows["step-300/"] and "2.7 MiB" in rows["step-300/"]
    assert " B " in rows["model.ckpt-100"] and "0.0" not in shown.stdout
    doc = json.loads(_cli("ls", base, "--json").stdout)
    assert doc["prefixes"] == ["runs/"]
    by_name = {c["name"]: c for c in doc["checkpoints"]}
    assert by_name["step-300/"]["prefix"] == f"{base}/step-300/ckpt" and by_name["step-300/"]["step"] == 300
    assert remoteckpt.list_variables(by_name["step-300/"]["prefix"]) == [("w", [700, 1000])]
    missing = _cli("ls", f"{base}/nothing-here")
    assert missing.returncode == 1 and "nothing-here" in _one_error_line(missing)


def test_human_sizes_never_show_zero_for_data() -> None:
    from remoteckpt.tools.inventory import human_size

    assert [human_size(n) for n in (0, 1, 1023, 1024, 1025, 52_000, 2**20 - 1, 5 * 2**30)] == \
        ["0 B", "1 B", "1023 B", "1.0 KiB", "1.0 KiB", "50.8 KiB", "1024.0 KiB", "5.0 GiB"]


def test_ls_of_a_bucket_and_a_missing_bucket(s3_server: Any, s3_prefix: str) -> None:
    client = s3_server.client()
    bucket = f"ls-{os.getpid()}-{abs(hash(s3_prefix)) % 10**8}"
    try:
        client.create_bucket(Bucket=bucket)
        remoteckpt.save({"w": np.ones(3)}, f"s3://{bucket}/top.ckpt-5")
        remoteckpt.save({"w": np.ones(3)}, f"s3://{bucket}/run1/model.ckpt-1")
        remoteckpt.save({"w": np.ones(3)}, f"s3://{bucket}")  # a bucket's root is a directory: s3://B/ckpt
        for url in (f"s3://{bucket}", f"s3://{bucket}/"):
            shown = _cli("ls", url)
            assert shown.returncode == 0, shown.stderr
            assert any(line.split() == ["PRE", "run1/"] for line in shown.stdout.splitlines())
            assert "top.ckpt-5" in shown.stdout and "ckpt\n" in shown.stdout
            looked = _cli("inspect", url)
            assert looked.returncode == 0 and looked.stdout.startswith(f"s3://{bucket}/ckpt: 1 tensor"), looked
    finally:
        client.close()
    missing = _cli("ls", "s3://no-such-bucket-here/run1")
    assert missing.returncode == 1 and "no such bucket (NoSuchBucket" in _one_error_line(missing)
    empty = _cli("inspect", f"s3://{s3_server.bucket}-nope")
    assert empty.returncode == 1 and f"s3://{s3_server.bucket}-nope/ckpt.index" in _one_error_line(empty)


# --- cp ---------------------------------------------------------------------------------------


def test_cp_into_a_folder_keeps_the_name(base: str, tmp_path: Path) -> None:
    """As aws s3 cp: a trailing slash, or an existing folder, means into it; the checkpoint
    keeps its name (a directory-style one its directory); never a silent rename."""
    source = remoteckpt.save({"w": np.arange(4.0)}, f"{base}/run/model.ckpt-7")
    step = remoteckpt.save({"w": np.arange(2.0)}, f"{base}/run/step-9/")
    (tmp_path / "existing").mkdir()
    for destination, written in (
            (f"{tmp_path}/new/", f"{tmp_path}/new/model.ckpt-7"),
            (f"{tmp_path}/existing", f"{tmp_path}/existing/model.ckpt-7"),
            (f"{tmp_path}/renamed.ckpt-1", f"{tmp_path}/renamed.ckpt-1"),
            (f"{base}/copies/", f"{base}/copies/model.ckpt-7"),
            (f"{base}/run", f"{base}/run/x"),  # an existing folder: refused below, the name is taken
    ):
        result = _cli("cp", source, destination, "--json")
        if destination == f"{base}/run":
            assert result.returncode == 1 and "model.ckpt-7.index already exists" in result.stderr
            continue
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["destination"] == written
        np.testing.assert_array_equal(remoteckpt.load(written)["w"], np.arange(4.0))
    copied = _cli("cp", f"{base}/run/step-9", f"{tmp_path}/steps/")
    assert copied.returncode == 0, copied.stderr
    assert f"-> {tmp_path}/steps/step-9/ckpt:" in copied.stdout
    assert step == f"{base}/run/step-9/ckpt"
    latest = _cli("cp", f"{base}/run/model.ckpt-7.index", f"{tmp_path}/by-index/")
    assert latest.returncode == 0 and (tmp_path / "by-index" / "model.ckpt-7.index").exists()
    assert [p.name for p in tmp_path.glob("*.index")] == ["renamed.ckpt-1.index"]  # none beside the folders


def test_cp_takes_an_endpoint_and_a_profile_per_side(s3_server: Any, s3_prefix: str, tmp_path: Path) -> None:
    source = remoteckpt.save({"w": np.arange(5.0)}, f"{s3_prefix}/ck")
    dead = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_MAX_ATTEMPTS": "1"}
    down = _cli("cp", source, str(tmp_path / "a"), **dead)
    assert down.returncode == 1 and "127.0.0.1:1" in _one_error_line(down)
    got = _cli("cp", source, str(tmp_path / "a"), "--src-endpoint-url", s3_server.endpoint_url, **dead)
    assert got.returncode == 0, got.stderr
    up = _cli("cp", str(tmp_path / "a"), f"{s3_prefix}/back", "--dst-endpoint-url", s3_server.endpoint_url, **dead)
    assert up.returncode == 0, up.stderr
    both = _cli("cp", f"{s3_prefix}/back", f"{s3_prefix}/again", "--endpoint-url", s3_server.endpoint_url, **dead)
    assert both.returncode == 0, both.stderr
    np.testing.assert_array_equal(remoteckpt.load(f"{s3_prefix}/again")["w"], np.arange(5.0))
    # An explicit profile sets botocore's credential chain aside from the environment's keys:
    # these come from the profile's credentials file only.
    (tmp_path / "credentials").write_text(f"[ckpt]\naws_access_key_id = {s3_server.access_key}\n"
                                          f"aws_secret_access_key = {s3_server.secret_key}\n")
    (tmp_path / "config").write_text("[profile ckpt]\nregion = us-east-1\n")
    files = {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"), "AWS_CONFIG_FILE": str(tmp_path / "config")}
    by_profile = _cli("cp", f"{s3_prefix}/again", str(tmp_path / "b"), "--src-profile", "ckpt", **files)
    assert by_profile.returncode == 0, by_profile.stderr
    wrong = _cli("cp", f"{s3_prefix}/again", str(tmp_path / "c"), "--src-profile", "nope", **files)
    assert wrong.returncode == 1 and "nope" in _one_error_line(wrong)


# --- -v and an endpoint that does not answer -----------------------------------------------------


def test_verbose_logs_requests_and_timings_never_credentials(s3_server: Any, s3_prefix: str) -> None:
    prefix = remoteckpt.save({"w": np.arange(5.0)}, f"{s3_prefix}/ck")
    quiet = _cli("verify", prefix)
    assert quiet.returncode == 0 and quiet.stderr == ""
    info = _cli("-v", "cp", prefix, f"{s3_prefix}/copy")
    assert info.returncode == 0 and "cp: " in info.stderr and " s" in info.stderr
    for args in (["-vv", "verify", prefix], ["verify", prefix, "-vv"], ["-v", "verify", "-v", prefix]):
        result = _cli(*args)
        assert result.returncode == 0, result.stderr
        # the index is a whole-object GET on the direct path (a range from byte 0)
        assert re.search(r"remoteckpt DEBUG S3 GET \S+/ck\.index bytes=0-\d+: 206, ", result.stderr), result.stderr
        assert "remoteckpt DEBUG S3 list_objects_v2" in result.stderr
    wire = _cli("verify", prefix, "-vvv", AWS_SESSION_TOKEN="session-token-that-must-not-show")
    assert wire.returncode == 0 and "botocore" in wire.stderr and "Authorization" in wire.stderr
    for secret in (s3_server.secret_key, s3_server.access_key, "session-token-that-must-not-show"):
        assert secret not in wire.stderr
        assert secret not in info.stderr


def test_an_endpoint_that_does_not_answer_says_it_retries(tmp_path: Path) -> None:
    result = _cli("ls", "s3://bucket/run", AWS_ENDPOINT_URL="http://127.0.0.1:1", AWS_MAX_ATTEMPTS="3",
                  AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", AWS_DEFAULT_REGION="us-east-1")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[:2] == [f"remoteckpt: S3 ListObjectsV2: no connection to http://127.0.0.1:1 "
                         f"(EndpointConnectionError); retrying ({n}/2)" for n in (1, 2)], result.stderr
    assert lines[2].startswith("remoteckpt: error: s3://bucket/run") and len(lines) == 3


# --- gc --------------------------------------------------------------------------------------------


def test_gc_dry_run_says_what_it_leaves_and_why(tmp_path: Path) -> None:
    remoteckpt.save({"w": np.ones(3)}, tmp_path / "kept")
    (tmp_path / "crashed.data-00000-of-00002").write_bytes(b"x" * 10)
    result = _cli("gc", str(tmp_path), "--dry-run")
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == "would remove 0 objects, 0 bytes; left 1 in place"
    assert "left crashed.data-00000-of-00002: younger than 3600 s" in result.stdout
    assert "multipart" not in result.stdout  # local disk has none
    swept = _cli("gc", str(tmp_path), "--older-than", "0", "--json")
    assert json.loads(swept.stdout)["removed"] == ["crashed.data-00000-of-00002"]


def test_the_log_filter_blanks_every_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from remoteckpt.tools.verbose import Redact

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-secret-key-value")
    redact = Redact()
    lines = [
        "headers={'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261206/us-east-1/s3/aws4_request, "
        "SignedHeaders=host, Signature=0123abcd', 'X-Amz-Security-Token': b'FwoGZXIvYXdzEXAMPLETOKEN'}",
        "{'x-amz-server-side-encryption-customer-key': 'c2VjcmV0LWtleS1iYXNlNjQ=', 'Bucket': 'b'}",
        "CALL: get_object - () - {'Bucket': 'b', 'Key': 'k', 'SSECustomerKey': b'\\x01\\x02raw-key-bytes'}",
        "GET https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F2026"
        "&X-Amz-Signature=deadbeef&X-Amz-Security-Token=TOKENVALUE",
        "credentials from the-secret-key-value",
    ]
    for line in lines:
        record = logging.LogRecord("botocore.endpoint", logging.DEBUG, __file__, 1, line, (), None)
        assert redact.filter(record)
        shown = record.getMessage()
        for secret in ("AKIDEXAMPLE", "0123abcd", "FwoGZXIvYXdzEXAMPLETOKEN", "c2VjcmV0LWtleS1iYXNlNjQ=",
                       "raw-key-bytes", "deadbeef", "TOKENVALUE", "the-secret-key-value"):
            assert secret not in shown, (line, shown)
    kept = logging.LogRecord("remoteckpt", logging.DEBUG, __file__, 1, "S3 get_object b/k.index: 200, %.3f s",
                             (0.012,), None)
    assert redact.filter(kept) and kept.getMessage() == "S3 get_object b/k.index: 200, 0.012 s"


def test_cp_incremental_has_the_destination_copy_unchanged_tensors(tmp_path: Path) -> None:
    """`cp --incremental`: tensors unchanged since the destination directory's latest
    checkpoint are copied there by the store; the copy restores exactly on its own."""
    unchanged = {f"w{i}": np.full(2**18, i, np.float32) for i in range(3)}
    second = {**unchanged, "step": np.int64(2)}
    remoteckpt.save({**unchanged, "step": np.int64(1)}, tmp_path / "dst" / "m-1", incremental=True)
    remoteckpt.save(second, tmp_path / "src" / "m-2", incremental=True)
    result = _cli("cp", "--incremental", str(tmp_path / "src" / "m-2"), str(tmp_path / "dst") + "/")
    assert result.returncode == 0, result.stderr
    assert f"({3 * 2**20} bytes copied by the destination store)" in result.stdout, result.stdout
    for name in ("m-1.index", "m-1.data-00000-of-00001"):
        os.remove(tmp_path / "dst" / name)
    got = remoteckpt.load(tmp_path / "dst" / "m-2")
    assert all(np.array_equal(got[k], v) for k, v in second.items())
