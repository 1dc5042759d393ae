"""remoteckpt.jax: pytrees of sharded jax.Arrays saved and restored into other shardings, on
local disk and S3 (skipped where JAX is not installed).

JAX reads ``XLA_FLAGS`` once, when its CPU backend starts, and the tests need 4 CPU devices
(``--xla_force_host_platform_device_count=4``).  So the JAX code runs in a child process, this
very file run as a script: one child per store runs every scenario and reports each one's
outcome; the pytest process only checks those outcomes (and, with remoteckpt alone, the
layout of what the child wrote).  No JAX backend ever starts in the pytest process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # the child: 4 CPU devices, set before jax is imported
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FULL = np.arange(8 * 6, dtype=np.float32).reshape(8, 6) / 4


# --- scenarios (run in the child) ----------------------------------------------------------

SCENARIOS: dict[str, Callable[[str], None]] = {}


def scenario(fn: Callable[[str], None]) -> Callable[[str], None]:
    SCENARIOS[fn.__name__] = fn
    return fn


class Spy:
    """Records the boxes `CheckpointReader.read_boxes` is asked for."""

    def __init__(self) -> None:
        from remoteckpt.reader import CheckpointReader

        self.calls: list[list[tuple[str, Any]]] = []
        original = CheckpointReader.read_boxes
        spy = self

        async def read_boxes(reader: Any, requests: Any, outs: Any = None) -> Any:
            spy.calls.append([(n, b) for n, b in requests])
            return await original(reader, requests, outs)

        self.original = original
        CheckpointReader.read_boxes = read_boxes  # type: ignore[method-assign]

    def boxes(self, name: str) -> list[Any]:
        return sorted((tuple(map(tuple, b)) if b else None) for call in self.calls for n, b in call if n == name)

    def __enter__(self) -> "Spy":
        return self

    def __exit__(self, *exc: object) -> None:
        from remoteckpt.reader import CheckpointReader

        CheckpointReader.read_boxes = self.original  # type: ignore[method-assign]


def meshes() -> tuple[Any, Any, Any]:
    import jax
    from jax.sharding import Mesh

    devices = np.array(jax.devices())
    assert len(devices) == 4, devices
    return Mesh(devices.reshape(4, 1), ("x", "y")), Mesh(devices.reshape(2, 2), ("x", "y")), \
        Mesh(devices[:2].reshape(2), ("a",))


@scenario
def sharded_4x1_restored_on_2_devices(base: str) -> None:
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import remoteckpt.jax as rjax

    m41, _, m2 = meshes()
    kernel = jax.device_put(FULL, NamedSharding(m41, P("x", None)))
    prefix = rjax.save({"params": {"dense": {"kernel": kernel}}}, f"{base}/a")
    target = {"params": {"dense": {"kernel": jax.ShapeDtypeStruct(
        (8, 6), jnp.float32, sharding=NamedSharding(m2, P(None, "a")))}}}
    with Spy() as spy:
        got = rjax.restore(prefix, target)["params"]["dense"]["kernel"]
    assert got.sharding == target["params"]["dense"]["kernel"].sharding
    np.testing.assert_array_equal(np.asarray(got), FULL)
    for shard in got.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), FULL[shard.index])
    # one ranged read per device: its columns, nothing else
    assert spy.boxes("params/dense/kernel") == [((0, 0), (8, 3)), ((0, 3), (8, 3))]
    # rows split over the 4x1 mesh, restored whole onto one device
    one = rjax.restore(prefix, {"params": {"dense": {"kernel": jax.ShapeDtypeStruct((8, 6), jnp.float32)}}})
    np.testing.assert_array_equal(np.asarray(one["params"]["dense"]["kernel"]), FULL)


@scenario
def mesh_2x2_restored_replicated(base: str) -> None:
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import remoteckpt.jax as rjax

    m41, m22, _ = meshes()
    tree = {"w": jax.device_put(FULL, NamedSharding(m22, P("x", "y"))),
            "rows": jax.device_put(FULL * 2, NamedSharding(m22, P("x", None)))}  # 2 replicas per box
    prefix = rjax.save(tree, f"{base}/b")
    # the target: arrays whose sharding is reused (replicated on all 4 devices, 2x2 by rows)
    target = {"w": jax.device_put(np.zeros_like(FULL), NamedSharding(m41, P())),
              "rows": jax.device_put(np.zeros_like(FULL), NamedSharding(m41, P("x")))}
    with Spy() as spy:
        got = rjax.restore(prefix, target)
    assert got["w"].sharding == target["w"].sharding and got["w"].sharding.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(got["w"]), FULL)
    np.testing.assert_array_equal(np.asarray(got["rows"]), FULL * 2)
    for shard in got["w"].addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), FULL)
    assert spy.boxes("w") == [((0, 0), (8, 6))]  # replicas share one read
    assert spy.boxes("rows") == [((r, 0), (2, 6)) for r in (0, 2, 4, 6)]


@scenario
def scalars_numpy_and_strings(base: str) -> None:
    import jax.numpy as jnp

    import remoteckpt.jax as rjax

    tree = {"step": 1000, "lr": 0.25, "done": True, "f32": np.float32(1.5), "i8": np.int8(-3),
            "table": np.arange(6, dtype=np.int64).reshape(2, 3), "name": "run-ü", "tag": b"\x00raw",
            "opt": [jnp.ones(3), (jnp.zeros(2, jnp.int32), 7)]}
    prefix = rjax.save(tree, f"{base}/c")
    target = {"step": 0, "lr": 0.0, "done": False, "f32": np.float32(0), "i8": np.int8(0),
              "table": np.zeros((2, 3), np.int64), "name": "", "tag": b"",
              "opt": [jnp.zeros(3), (jnp.ones(2, jnp.int32), 0)]}
    got = rjax.restore(prefix, target)
    assert got["step"] == 1000 and type(got["step"]) is int
    assert got["lr"] == 0.25 and type(got["lr"]) is float
    assert got["done"] is True
    assert got["f32"] == np.float32(1.5) and got["f32"].dtype == np.float32
    assert got["i8"] == -3 and got["i8"].dtype == np.int8
    np.testing.assert_array_equal(got["table"], tree["table"])
    assert got["name"] == "run-ü" and got["tag"] == b"\x00raw"
    np.testing.assert_array_equal(np.asarray(got["opt"][0]), np.ones(3))
    assert isinstance(got["opt"][1], tuple) and got["opt"][1][1] == 7
    assert got["opt"][1][0].dtype == jnp.int32
    # without a target: nested dicts of numpy arrays, names split at "/"
    plain = rjax.restore(prefix)
    assert plain["step"] == 1000 and plain["opt"]["1"]["1"] == 7
    np.testing.assert_array_equal(plain["opt"]["0"], np.ones(3, np.float32))


@scenario
def bfloat16_leaves(base: str) -> None:
    import jax
    import jax.numpy as jnp
    import ml_dtypes
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import remoteckpt.jax as rjax

    _, m22, m2 = meshes()
    value = FULL.astype(ml_dtypes.bfloat16)
    tree = {"emb": jax.device_put(value, NamedSharding(m22, P(None, "y"))), "scale": jnp.bfloat16(0.5)}
    prefix = rjax.save(tree, f"{base}/d")
    got = rjax.restore(prefix, {"emb": jax.ShapeDtypeStruct((8, 6), jnp.bfloat16, sharding=NamedSharding(m2, P("a"))),
                                "scale": jax.ShapeDtypeStruct((), jnp.bfloat16)})
    assert got["emb"].dtype == jnp.bfloat16 and got["scale"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got["emb"]), value)
    assert float(got["scale"]) == 0.5
    # a different target dtype is a cast
    wide = rjax.restore(prefix, {"emb": jax.ShapeDtypeStruct((8, 6), jnp.float32), "scale": np.float32(0)})
    np.testing.assert_array_equal(np.asarray(wide["emb"]), value.astype(np.float32))


@scenario
def save_async_outlives_the_arrays(base: str) -> None:
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import remoteckpt.jax as rjax

    m41, _, _ = meshes()
    big = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)  # 4 MiB
    arr = jax.device_put(big, NamedSharding(m41, P("x")))
    future = rjax.save_async({"big": arr, "step": 3}, f"{base}/e")
    arr.delete()  # as if donated to the next step
    assert future.result(timeout=60) == f"{base}/e"
    got = rjax.restore(f"{base}/e", {"big": jax.ShapeDtypeStruct(big.shape, big.dtype), "step": 0})
    np.testing.assert_array_equal(np.asarray(got["big"]), big)
    assert got["step"] == 3


@scenario
def errors(base: str) -> None:
    import jax
    import jax.numpy as jnp

    import remoteckpt
    import remoteckpt.jax as rjax

    prefix = rjax.save({"w": jnp.ones((4, 2))}, f"{base}/f")
    for target, error in [({"w": jax.ShapeDtypeStruct((2, 4), jnp.float32)}, remoteckpt.ShapeMismatchError),
                          ({"v": jnp.ones((4, 2))}, remoteckpt.TensorNotFoundError),
                          ({"w": object()}, remoteckpt.InvalidTensorsError)]:
        try:
            rjax.restore(prefix, target)
        except error:
            pass
        else:
            raise AssertionError(f"no {error.__name__} for {target}")
    for tree, error in [({"a/b": 1, "a": {"b": 2}}, remoteckpt.InvalidTensorsError),
                        (jnp.ones(2), remoteckpt.InvalidTensorsError),
                        ({"k": jax.random.key(0)}, remoteckpt.UnsupportedDTypeError)]:
        try:
            rjax.save(tree, f"{base}/g")
        except error:
            pass
        else:
            raise AssertionError(f"no {error.__name__} for {tree}")
    try:
        rjax.save({"w": jnp.zeros(1)}, prefix)
    except remoteckpt.CheckpointExistsError:
        pass
    else:
        raise AssertionError("overwrote a committed checkpoint")


def child_main(base: str) -> None:
    outcomes = {}
    for name, fn in SCENARIOS.items():
        try:
            fn(f"{base}/{name}")
            outcomes[name] = "ok"
        except BaseException:  # noqa: BLE001 - reported to the parent
            outcomes[name] = traceback.format_exc()
    print("OUTCOMES " + json.dumps(outcomes), flush=True)


if __name__ == "__main__":
    child_main(sys.argv[1])
    sys.exit(0)


# --- the pytest side -----------------------------------------------------------------------

import pytest  # noqa: E402

pytest.importorskip("jax")  # importing jax starts no backend; the child does the work

import remoteckpt  # noqa: E402

pytestmark = pytest.mark.jax

_outcomes: dict[str, dict[str, str]] = {}


def run_child(base: str) -> dict[str, str]:
    if base not in _outcomes:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, __file__, base], capture_output=True, text=True, timeout=180,
                              cwd=ROOT, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("OUTCOMES ")]
        if proc.returncode != 0 or not lines:
            pytest.fail(f"JAX child process failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        _outcomes[base] = json.loads(lines[-1].removeprefix("OUTCOMES "))
    return _outcomes[base]


@pytest.fixture(scope="module")
def local_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("jax"))


@pytest.fixture(scope="module")
def s3_base(s3_server: Any) -> str:
    return f"s3://{s3_server.bucket}/jax-{uuid.uuid4().hex}"


@pytest.fixture(params=["local", "s3"])
def base(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_base")


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(base: str, name: str) -> None:
    outcome = run_child(base)[name]
    assert outcome == "ok", outcome


def test_layout_of_a_sharded_save(local_base: str) -> None:
    """What the child wrote, read back with remoteckpt alone: every box exactly once."""
    run_child(local_base)
    reader = remoteckpt.CheckpointReader(f"{local_base}/mesh_2x2_restored_replicated/b")
    w = reader.index.entries[b"w"]
    rows = reader.index.entries[b"rows"]
    assert len(w.slices) == 4  # 2x2 boxes
    assert len(rows.slices) == 2  # 2 boxes of rows, each on 2 devices: written once
    np.testing.assert_array_equal(reader.get_tensor("w"), FULL)
    np.testing.assert_array_equal(reader.get_slice("rows", (slice(1, 5),)), FULL[1:5] * 2)
    a = remoteckpt.CheckpointReader(f"{local_base}/sharded_4x1_restored_on_2_devices/a")
    assert len(a.index.entries[b"params/dense/kernel"].slices) == 4
    assert remoteckpt.list_variables(f"{local_base}/scalars_numpy_and_strings/c")[0] == ("done", [])


@pytest.mark.tensorflow
def test_tensorflow_reads_a_sharded_jax_save(local_base: str) -> None:
    tf = pytest.importorskip("tensorflow")
    run_child(local_base)
    reader = tf.train.load_checkpoint(f"{local_base}/sharded_4x1_restored_on_2_devices/a")
    np.testing.assert_array_equal(reader.get_tensor("params/dense/kernel"), FULL)


def test_doc_example_runs_on_s3(s3_base: str) -> None:
    import re

    doc = (ROOT / "docs" / "plugins" / "jax.md").read_text()
    code = re.search(r"## Example\n\n```python\n(.*?)```", doc, re.S)
    assert code, "docs/plugins/jax.md has no example"
    literal = 'base = "s3://my-bucket/run1"'
    assert literal in code.group(1)
    source = code.group(1).replace(literal, f"base = {s3_base + '/doc'!r}")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "('params/dense/kernel', [8, 4])" in proc.stdout
    assert remoteckpt.list_variables(f"{s3_base}/doc/ckpt-101")[-1] == ("step", [])
