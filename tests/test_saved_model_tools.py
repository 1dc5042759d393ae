"""The command line on SavedModels, without TensorFlow (its own tool, ``saved_model_cli``, is
the referee for `inspect` where installed): `inspect` (tags, signatures, ops, concrete
functions with their input signatures, variables; --json),
`verify` and `cp` of a SavedModel directory and of a versioned base directory (local and S3),
`ls` of a base directory (its complete versions), `gc` of partial versions; and checkpoint
tools carrying a TF1 Saver's ``PREFIX.meta``, which retention deletes with its checkpoint.
"""

from __future__ import annotations

import ast
import collections
import json
import os
import re
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


FUNCTIONS: dict[str, Any] = {
    "saved_model_keras": ("_default_save_signature", "inputs", [-1, 4], "DT_FLOAT", {"MatMul", "BiasAdd"}),
    "saved_model_module": ("__call__", "words", [-1], "DT_STRING", {"HashTableV2", "LookupTableFindV2"}),
}
"""Per SavedModel fixture: its one function, that function's one argument (name, shape, dtype),
and ops its graph uses only within the functions it calls."""


@pytest.mark.parametrize("name", ["saved_model_keras", "saved_model_module"])
def test_inspect_lists_ops_and_concrete_functions(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    function, argument, shape, dtype, inner_ops = FUNCTIONS[name]
    graph = run_json(["inspect", str(FIXTURES / name)], capsys)["meta_graphs"][0]
    ops = graph["ops"]
    assert ops == sorted(set(ops)) and inner_ops | {"StatefulPartitionedCall", "SaveV2", "RestoreV2"} <= set(ops)
    assert not [op for op in ops if op.startswith("__inference")]  # the functions called are not ops
    [exported] = graph["concrete_functions"]
    [option] = exported.pop("options")
    assert exported == {"name": function, "kind": "function"}
    assert option["concrete_function"].startswith("__inference_")
    spec = {"tensor_spec": {"name": argument, "shape": shape, "dtype": dtype}}
    assert (option["args"], option["kwargs"], option["argument_keywords"]) == ([spec], {}, [argument])
    assert main(["inspect", str(FIXTURES / name)]) == 0
    text = capsys.readouterr().out
    assert f"The MetaGraph with tag set ['serve'] contains the following ops: {{{', '.join(map(repr, ops))}}}" in text
    assert f"Concrete Functions:\n  Function Name: '{function}'\n    Option #1\n" in text


def saved_model_cli(directory: Path | str) -> str:
    """What ``saved_model_cli show --all`` prints of the SavedModel (the test is skipped where
    TensorFlow is not installed)."""
    tool = Path(sys.executable).parent / "saved_model_cli"
    if not tool.exists():
        pytest.skip("saved_model_cli (TensorFlow) is not installed")
    return subprocess.run([str(tool), "show", "--dir", str(directory), "--all"], capture_output=True, text=True,
                          check=True, timeout=300).stdout


def comparable(text: str) -> list[Any]:
    """The lines `inspect` and saved_model_cli both print (from the first meta graph's tag-set
    to the end of the concrete functions), with the backspaces applied as a terminal does
    (saved_model_cli erases the ", " after a sequence's last element with two) and each ops
    line's set parsed (saved_model_cli prints a Python set, in hash order)."""
    lines = re.sub(r"(, )?\x08\x08", "", text).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("MetaGraphDef with tag-set"))
    end = next((i for i, line in enumerate(lines) if line.startswith("variables (")), len(lines))
    rows: list[Any] = []
    for line in lines[start:end]:
        head, found, ops = line.partition(" contains the following ops: ")
        rows.append((head, set() if ops == "set()" else ast.literal_eval(ops)) if found else line)
    while rows and rows[-1] == "":
        rows.pop()
    return rows


def options_unordered(rows: list[Any]) -> list[Any]:
    """`comparable`'s rows with each function's options sorted and unnumbered, and keyword
    arguments sorted by name: saved_model_cli orders both by what changes from one process to
    the next (names it gives concrete functions as it loads them; a protobuf map's order)."""
    at = rows.index("Concrete Functions:")
    functions: list[tuple[str, list[list[str]]]] = []
    for line in rows[at + 1:]:
        if line.startswith("  Function Name: "):
            functions.append((line, []))
        elif line.startswith("    Option #"):
            functions[-1][1].append(["    Option #"])
        elif line:
            if not functions[-1][1]:
                functions[-1][1].append([])  # keyword arguments only: saved_model_cli prints no "Option #"
            functions[-1][1][-1].append(line)
    def keywords_sorted(option: list[str]) -> list[str]:
        kept, named = [], []
        lines = iter(option)
        for line in lines:
            if line.startswith("        Named Argument #"):
                named.append(next(lines))
            else:
                kept.append(line)
        return kept + [line for index, name in enumerate(sorted(named), 1)
                       for line in (f"        Named Argument #{index}", name)]

    out = rows[: at + 1]
    for header, options in functions:
        out += [header, *(line for option in sorted(map(keywords_sorted, options)) for line in option)]
    return out


@pytest.mark.parametrize("name", ["saved_model_keras", "saved_model_module"])
def test_inspect_prints_what_saved_model_cli_prints(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The signatures line for line, the ops as a set, the concrete functions line for line."""
    theirs = saved_model_cli(FIXTURES / name)
    assert main(["inspect", str(FIXTURES / name)]) == 0
    ours = capsys.readouterr().out
    assert comparable(ours) == comparable(theirs)
    assert "Concrete Functions:" in comparable(ours)


@pytest.mark.tensorflow
def test_inspect_of_an_export_with_nested_and_keyword_arguments(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A SavedModel of `remoteckpt.tensorflow.export_saved_model` whose functions take tuples,
    lists, named tuples, dicts, Python values, ragged tensors and keyword arguments, traced
    more than once: `inspect` prints what saved_model_cli prints."""
    tf = pytest.importorskip("tensorflow")
    import remoteckpt.tensorflow as rtf

    point = collections.namedtuple("point", ["x", "y"])

    class Exported(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="inputs")])
        def serve(self, x: Any) -> Any:
            return {"y": x * self.scale}

        @tf.function
        def nested(self, a: Any, pair: Any, opts: Any = None, *, scale: Any = 2, flag: bool = True, tag: str = "t",
                   mapping: Any = None) -> Any:
            return a * self.scale * scale

        @tf.function
        def keywords_only(self, *, k: Any) -> Any:
            return k * self.scale

        @tf.function
        def ragged(self, r: Any, dtype: Any) -> Any:
            return tf.cast(r.flat_values, dtype) * tf.cast(self.scale, dtype)

    model = Exported()
    model.nested.get_concrete_function(
        tf.TensorSpec([None, 4], tf.float32, name="a"),
        (tf.TensorSpec([2], tf.int32), [tf.TensorSpec([], tf.float64, name="inner"), 3]), None,
        scale=1.5, flag=False, tag="x'y", mapping={"b": tf.TensorSpec([3], tf.int64), "a": None})
    model.nested.get_concrete_function(
        tf.TensorSpec([3], tf.float32), point(tf.TensorSpec([1], tf.float32), 2), {"only": "it's"},
        scale=2, flag=True, tag="t", mapping={})
    model.nested.get_concrete_function(tf.TensorSpec(None, tf.float32), (), ["s", (1,), -0.5, True], mapping=None)
    model.keywords_only.get_concrete_function(k=tf.TensorSpec([], tf.float32))
    model.ragged.get_concrete_function(tf.RaggedTensorSpec([None, None], tf.int32), tf.float16)
    model.bare = model.serve.get_concrete_function()
    directory = rtf.export_saved_model(model, str(tmp_path / "models"), signatures={"serving_default": model.serve})

    theirs = saved_model_cli(directory)
    assert main(["inspect", directory]) == 0
    ours = capsys.readouterr().out
    assert options_unordered(comparable(ours)) == options_unordered(comparable(theirs))
    assert "          DType: tuple\n          Value: [TensorSpec(shape=(2,), dtype=tf.int32, name='pair_0'), " \
           "[TensorSpec(shape=(), dtype=tf.float64, name='inner'), 3]]\n" in ours
    assert "          DType: point\n          Value: [TensorSpec(shape=(1,), dtype=tf.float32, name='pair_x'), 2]\n" in ours
    assert "          DType: list\n          Value: ['s', (1,), -0.5, True]\n" in ours

    functions = {f["name"]: f for f in run_json(["inspect", directory], capsys)["meta_graphs"][0]["concrete_functions"]}
    assert sorted(functions) == ["bare", "keywords_only", "nested", "ragged", "serve"]
    assert functions["bare"]["kind"] == "bare_concrete_function"
    first, second, third = functions["nested"]["options"]  # in the order they were traced
    assert first["args"] == [
        {"tensor_spec": {"name": "a", "shape": [-1, 4], "dtype": "DT_FLOAT"}},
        {"tuple": [{"tensor_spec": {"name": "pair_0", "shape": [2], "dtype": "DT_INT32"}},
                   {"list": [{"tensor_spec": {"name": "inner", "shape": [], "dtype": "DT_DOUBLE"}}, 3]}]},
        None]
    assert first["kwargs"] == {  # keys sorted
        "flag": False, "scale": 1.5, "tag": "x'y",
        "mapping": {"dict": {"a": None, "b": {"tensor_spec": {"name": "mapping_b", "shape": [3], "dtype": "DT_INT64"}}}}}
    assert second["args"][1] == {"named_tuple": {"name": "point", "fields": [
        ["x", {"tensor_spec": {"name": "pair_x", "shape": [1], "dtype": "DT_FLOAT"}}], ["y", 2]]}}
    assert third["args"][0] == {"tensor_spec": {"name": "a", "shape": None, "dtype": "DT_FLOAT"}}
    [keywords_only] = functions["keywords_only"]["options"]
    assert keywords_only["args"] == [] and list(keywords_only["kwargs"]) == ["k"]
    [ragged] = functions["ragged"]["options"]
    assert ragged["args"][0]["type_spec"]["class"] == "RaggedTensorSpec"
    assert ragged["args"][1] == {"tensor_dtype": "DT_HALF"}


@pytest.mark.tensorflow
def test_inspect_of_a_tf1_saved_model_with_two_meta_graphs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A TF1 Builder's SavedModel (no object graph: no concrete functions), two meta graphs (two
    tags for one), a sparse input and a signature key with a quote: `inspect` prints what
    saved_model_cli prints, the meta graphs in the order of their tags."""
    tf = pytest.importorskip("tensorflow")
    directory = tmp_path / "tf1"
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        sparse = tf.compat.v1.sparse_placeholder(tf.float32, name="sparse")
        w = tf.compat.v1.get_variable("w", initializer=tf.ones([2, 1]))
        session.run(tf.compat.v1.global_variables_initializer())
        signature = tf.compat.v1.saved_model.predict_signature_def({"x": x, "sparse": sparse},
                                                                   {"y": tf.matmul(x, w, name="y")})
        builder = tf.compat.v1.saved_model.Builder(str(directory))
        builder.add_meta_graph_and_variables(session, ["train", "extra"], signature_def_map={"it's": signature})
        builder.add_meta_graph(["serve"], signature_def_map={"serving_default": signature})
        builder.save()
    theirs = saved_model_cli(directory)
    assert main(["inspect", str(directory)]) == 0
    ours = comparable(capsys.readouterr().out)
    assert ours == comparable(theirs)
    assert "Concrete Functions:" not in ours and "MetaGraphDef with tag-set: 'train, extra' contains the following " \
        "SignatureDefs:" in ours
    graphs = run_json(["inspect", str(directory)], capsys)["meta_graphs"]
    assert [g["concrete_functions"] for g in graphs] == [None, None] and "MatMul" in graphs[0]["ops"]


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
