"""SavedModels on local disk and S3: `remoteckpt.tensorflow.export_saved_model` and
`load_saved_model`, with TensorFlow 2.21 as the referee (skipped without TensorFlow).

* TensorFlow-written SavedModels (tests/fixtures/tf-2.21: a Keras model with its serving
  signature, a tf.Module with a vocabulary asset; and a TF1 Builder's) load from any store
  with every signature's outputs identical to TensorFlow loading the local files, and to what
  TensorFlow computed when it wrote them.
* An export writes the variables TensorFlow writes, byte for byte, and TensorFlow loads it.
* Versions: numbering (partial versions' numbers skipped), `keep`, a base directory loads its
  newest complete version; two exports that chose the same number end with two versions.
* Crash consistency: an export killed at every point (a real process, SIGKILL) leaves no
  complete version; `gc` removes the partial one.
"""

from __future__ import annotations

import base64
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import filecmp
import gc as python_gc
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tf.get_logger().setLevel("ERROR")

import remoteckpt  # noqa: E402
import remoteckpt.tensorflow as rtf  # noqa: E402
from remoteckpt.errors import CheckpointExistsError, CheckpointNotFoundError  # noqa: E402
from remoteckpt.management import versions  # noqa: E402
from remoteckpt.storage import Store, on_store  # noqa: E402

pytestmark = pytest.mark.tensorflow

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "tf-2.21"
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "manifest.json").read_text())["checkpoints"]
SAVED_MODELS = sorted(n for n, spec in MANIFEST.items() if spec["kind"] == "saved_model")
WORKER = HERE / "saved_model_workers.py"
sys.path.insert(0, str(HERE))

from saved_model_files import upload  # noqa: E402
from saved_model_workers import WORDS, make_scorer  # noqa: E402


@pytest.fixture(params=["local", "s3"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "models") if request.param == "local" else request.getfixturevalue("s3_prefix")


def keys(url: str) -> list[str]:
    async def go(store: Store) -> list[str]:
        return await store.list()

    return on_store(url, go)


def decode(record: dict[str, Any]) -> np.ndarray:
    if "values_b64" in record:
        return np.array([base64.b64decode(v) for v in record["values_b64"]], dtype=object).reshape(record["shape"])
    raw = base64.b64decode(record["raw_b64"])
    return np.frombuffer(raw, dtype=tf.as_dtype(record["dtype"]).as_numpy_dtype).reshape(record["shape"])


def outputs_of(loaded: Any, key: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in loaded.signatures[key](**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def variables_of(loaded: Any) -> list[Any]:
    return [v for v in tf.train.TrackableView(loaded).descendants() if isinstance(v, tf.Variable)]


def assert_same_outputs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes() if a[k].dtype != object else list(a[k]) == list(b[k]), k


# --- TensorFlow-written SavedModels ---------------------------------------------------------

@pytest.mark.parametrize("name", SAVED_MODELS)
def test_tensorflow_written_saved_model_loads_from_the_store(name: str, base: str) -> None:
    spec = MANIFEST[name]["saved_model"]
    local = FIXTURES / spec["directory"]
    url = f"{base}/{spec['directory']}"
    upload(local, url)
    loaded = rtf.load_saved_model(url)
    reference = tf.saved_model.load(str(local))
    assert sorted(loaded.signatures) == sorted(spec["signatures"])
    for key, signature in spec["signatures"].items():
        inputs = {k: decode(v) for k, v in signature["example_inputs"].items()}
        got = outputs_of(loaded, key, inputs)
        assert_same_outputs(got, outputs_of(reference, key, inputs))
        assert_same_outputs(got, {k: decode(v) for k, v in signature["example_outputs"].items()})
    # Every variable, read back through TensorFlow's objects, is the stored one.
    reader = remoteckpt.CheckpointReader(f"{url}/variables/variables")
    assert sorted(reader.get_variable_to_shape_map()) == sorted(
        n for n, _ in tf.train.list_variables(str(local / "variables" / "variables")))
    ours, theirs = variables_of(loaded), variables_of(reference)
    assert len(ours) == len(theirs) == len(MANIFEST[name]["tensors"])
    for variable, twin in zip(ours, theirs):
        assert variable.shape == twin.shape and np.array_equal(variable.numpy(), twin.numpy())


def test_tf1_saved_model_loads_from_the_store(base: str, tmp_path: Path) -> None:
    """A TF1 SavedModel (tf.compat.v1.saved_model.Builder, no object graph): its variables are
    copied next to the graph, verified, and TensorFlow loads it from there."""
    local = tmp_path / "tf1"
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        w = tf.compat.v1.get_variable("w", initializer=tf.constant([[1.5], [-2.0], [3.25]]))
        y = tf.matmul(x, w, name="y")
        session.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(str(local))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
            "serving_default": tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})})
        builder.save()
    upload(local, f"{base}/tf1")
    inputs = {"x": np.random.default_rng(4).random((2, 3), np.float32)}
    loaded = rtf.load_saved_model(f"{base}/tf1", tags=["serve"])
    assert_same_outputs(outputs_of(loaded, "serving_default", inputs),
                        outputs_of(tf.saved_model.load(str(local), tags=["serve"]), "serving_default", inputs))


def test_tags_must_match(tmp_path: Path) -> None:
    local = FIXTURES / "saved_model_keras"
    assert rtf.load_saved_model(str(local), tags=["serve"]).signatures
    with pytest.raises(ValueError, match="tags"):
        rtf.load_saved_model(str(local), tags=["train"])


def test_missing_saved_model_is_not_found(base: str) -> None:
    with pytest.raises(CheckpointNotFoundError):
        rtf.load_saved_model(f"{base}/nothing")


def test_damaged_variables_are_refused(tmp_path: Path) -> None:
    copy = tmp_path / "m"
    shutil.copytree(FIXTURES / "saved_model_keras", copy)
    data = copy / "variables" / "variables.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[10] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(remoteckpt.CorruptCheckpointError):
        rtf.load_saved_model(str(copy))


# --- export ---------------------------------------------------------------------------------

def keras_model() -> Any:
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2)(hidden))


def test_export_writes_tensorflows_variables_and_tensorflow_loads_it(tmp_path: Path) -> None:
    model = keras_model()
    scorer = make_scorer(seed=1)
    for name, obj, signatures in (("keras", model, None),
                                  ("module", scorer, {"serving_default": scorer.__call__})):
        reference = tmp_path / f"{name}-tf"
        tf.saved_model.save(obj, str(reference), signatures=signatures)
        # Without per-chunk CRCs (remoteckpt's extension to entries over 1 MiB, which TF
        # ignores), the variables are TensorFlow's bytes; with them the data file still is.
        plain = rtf.export_saved_model(obj, str(tmp_path / f"{name}-plain"), signatures=signatures,
                                       options=remoteckpt.IOOptions(crc_chunk=0))
        for file in ("variables/variables.index", "variables/variables.data-00000-of-00001"):
            assert filecmp.cmp(reference / file, Path(plain) / file, shallow=False), (name, file)
        exported = rtf.export_saved_model(obj, str(tmp_path / name), signatures=signatures)
        assert exported == str(tmp_path / name / "1")
        file = "variables/variables.data-00000-of-00001"
        assert filecmp.cmp(reference / file, Path(exported) / file, shallow=False), name
        assert sorted(p.relative_to(exported).as_posix() for p in Path(exported).rglob("*") if p.is_file()) == \
            sorted(p.relative_to(reference).as_posix() for p in reference.rglob("*") if p.is_file())
        ours, theirs = tf.saved_model.load(exported), tf.saved_model.load(str(reference))
        fingerprint = tf.saved_model.experimental.read_fingerprint(exported)
        assert fingerprint.checkpoint_hash == tf.saved_model.experimental.read_fingerprint(
            str(reference)).checkpoint_hash != 0 or name == "module"  # the index differs (chunk CRCs)
        assert tf.saved_model.experimental.read_fingerprint(plain).checkpoint_hash == \
            tf.saved_model.experimental.read_fingerprint(str(reference)).checkpoint_hash != 0
        inputs = ({"inputs": np.random.default_rng(0).random((3, 4), np.float32)} if name == "keras"
                  else {"words": np.array([b"beta", b"nope", b"alpha"], dtype=object)})
        assert_same_outputs(outputs_of(ours, "serving_default", inputs),
                            outputs_of(theirs, "serving_default", inputs))


def test_export_and_load_through_the_store(base: str) -> None:
    scorer = make_scorer(seed=2)
    signatures = {"serving_default": scorer.__call__}
    first = rtf.export_saved_model(scorer, base, signatures=signatures)
    assert first == f"{base}/1"
    assert sorted(keys(first)) == ["assets/vocab.txt", "fingerprint.pb", "saved_model.pb",
                                   "variables/variables.data-00000-of-00001", "variables/variables.index"]
    scorer.bias.assign(5.0)
    assert rtf.export_saved_model(scorer, base, signatures=signatures) == f"{base}/2"
    words = {"words": np.array([w.encode() for w in WORDS] + [b"?"], dtype=object)}
    newest = rtf.load_saved_model(base)  # the base directory: its newest complete version
    assert_same_outputs(outputs_of(newest, "serving_default", words),
                        {k: v.numpy() for k, v in scorer(tf.constant(words["words"])).items()})
    older = rtf.load_saved_model(first)
    assert float(older.bias.numpy()) == 2.0 and float(newest.bias.numpy()) == 5.0
    # The asset stays readable while the loaded object lives (its path is a local copy).
    path = newest.vocabulary.asset_path.numpy().decode()
    assert Path(path).read_text().split() == WORDS
    del newest
    python_gc.collect()
    assert not Path(path).exists()


def test_version_numbers(base: str) -> None:
    scorer = make_scorer(seed=3)
    signatures = {"serving_default": scorer.__call__}
    assert rtf.export_saved_model(scorer, base, signatures=signatures, version=5) == f"{base}/5"
    with pytest.raises(CheckpointExistsError, match="version 5 exists, complete"):
        rtf.export_saved_model(scorer, base, signatures=signatures, version=5)
    # A partial version (an export that died) keeps its number: the next export skips it.
    on_store(base, lambda store: store.put("6/variables/variables.data-00000-of-00001", b"partial"))
    with pytest.raises(CheckpointExistsError, match="version 6 exists, partial"):
        rtf.export_saved_model(scorer, base, signatures=signatures, version=6)
    assert rtf.export_saved_model(scorer, base, signatures=signatures) == f"{base}/7"
    assert rtf.export_saved_model(scorer, base, signatures=signatures, keep=2) == f"{base}/8"
    found = on_store(base, versions.scan_versions)
    assert [v.number for v in versions.complete_versions(found)] == [7, 8]
    assert sorted(found) == [6, 7, 8]  # retention takes complete versions only
    # Versions retired are never numbered again: the next is after the highest seen.
    assert rtf.export_saved_model(scorer, base, signatures=signatures, keep=1) == f"{base}/9"
    assert [v.number for v in versions.complete_versions(on_store(base, versions.scan_versions))] == [9]


# --- crash consistency ----------------------------------------------------------------------

def run_export(base: str, crash_at: str | None = None, version: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    env.pop("REMOTECKPT_CRASH_AT", None)
    if crash_at:
        env["REMOTECKPT_CRASH_AT"] = crash_at
    args = [sys.executable, str(WORKER), base] + ([str(version)] if version is not None else [])
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


KILL_POINTS = ["mid-upload", "committing", "committed", "export-variables", "export-assets",
               "export-fingerprint", "export-committing"]
KILL_CASES = [(point, "local") for point in KILL_POINTS] + [(point, "s3") for point in
                                                             ("mid-upload", "committing", "export-committing")]
"""Every point of an export on local disk: in its variables' save (half the data uploaded, the
index durable and not yet named, the index committed) and after; on S3 a multipart upload cut
off, and each commit point."""


def export_in_process(base: str) -> str:
    scorer = make_scorer(seed=7)  # what the worker exports
    return rtf.export_saved_model(scorer, base, signatures={"serving_default": scorer.__call__},
                                  options=remoteckpt.IOOptions(lease_timeout=2.0))


@pytest.mark.parametrize(("point", "backend"), KILL_CASES, ids=[f"{p}-{b}" for p, b in KILL_CASES])
def test_export_killed_leaves_no_complete_version(point: str, backend: str, tmp_path: Path,
                                                  request: pytest.FixtureRequest) -> None:
    base = str(tmp_path / "models") if backend == "local" else request.getfixturevalue("s3_prefix")
    assert export_in_process(base) == f"{base}/1"
    killed = run_export(base, crash_at=point)
    assert killed.returncode == -9, killed.stderr[-2000:]
    found = on_store(base, versions.scan_versions)
    assert [v.number for v in versions.complete_versions(found)] == [1]
    assert 2 in found and not found[2].complete
    assert rtf.load_saved_model(base).bias.numpy() == 7.0  # the base still loads version 1
    with pytest.raises(CheckpointNotFoundError):
        rtf.load_saved_model(f"{base}/2")
    assert main_ls(base)["partial"] == [2]
    # gc removes the partial version (and only it); its number, which no reader ever saw
    # complete, is free again.
    report = remoteckpt.gc(base, older_than=0)
    assert report.removed and all(k.startswith("2/") for k in report.removed + report.aborted_uploads)
    assert sorted(on_store(base, versions.scan_versions)) == [1]
    assert export_in_process(base) == f"{base}/2"


def main_ls(base: str) -> dict[str, Any]:
    import contextlib
    import io

    from remoteckpt.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["ls", base, "--json"]) == 0
    return json.loads(out.getvalue())


def test_racing_exports_take_different_numbers(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Two exports that chose the same number: the one paused after choosing it (SIGSTOP at
    export-numbered) finds it taken when it goes on, and takes the next."""
    base = request.getfixturevalue("s3_prefix")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
           "REMOTECKPT_STOP_AT": "export-numbered"}
    paused = subprocess.Popen([sys.executable, str(WORKER), base], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while process_state(paused.pid) != "T":
            assert paused.poll() is None and time.monotonic() < deadline, paused.stderr.read()[-2000:] if \
                paused.stderr else ""
            time.sleep(0.2)
        assert export_in_process(base) == f"{base}/1"  # it chose 1 too: nothing was written yet
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    out, err = paused.communicate(timeout=300)
    assert paused.returncode == 0 and out.strip() == f"{base}/2", err[-2000:]
    assert [v.number for v in versions.complete_versions(on_store(base, versions.scan_versions))] == [1, 2]
    assert rtf.load_saved_model(base).bias.numpy() == 7.0


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_export_killed_after_commit_is_complete(tmp_path: Path) -> None:
    base = str(tmp_path / "models")
    killed = run_export(base, crash_at="export-committed")
    assert killed.returncode == -9
    assert [v.number for v in versions.complete_versions(on_store(base, versions.scan_versions))] == [1]
    assert rtf.load_saved_model(base).bias.numpy() == 7.0


def test_the_documented_example_runs(s3_prefix: str, tmp_path: Path) -> None:
    import re

    doc = (HERE.parent / "docs" / "plugins" / "tensorflow.md").read_text()
    source = re.search(r"### SavedModel example\n.*?```python\n(.*?)```", doc, re.S).group(1)
    line = 'base = "s3://my-bucket/models/scorer"  # or a local directory'
    assert line in source
    script = tmp_path / "example.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    for run, base in enumerate((f"{s3_prefix}/scorer", f"{s3_prefix}/scorer", str(tmp_path / "scorer")), 1):
        script.write_text(source.replace(line, f"base = {base!r}"))
        result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        number = 1 if base.startswith("/") else run
        assert result.stdout.splitlines() == [f"{base}/{number} [6. 6.]", "[0. 1. 2. 3.]"]
