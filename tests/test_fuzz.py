"""Hostile input, fuzzed: the index reader, the full CheckpointReader, the state-file reader
and the PyTorch DCP metadata reader raise only remoteckpt errors (`CheckpointError`), within a
deadline, without allocating what hostile sizes and counts claim; state-file paths never
escape their directory; credentials never reach logs, exception messages or pickles.

tests/test_hostile.py covers single byte changes, truncations and a few hand-made hostile
entries; here hypothesis generates the damage (several mutations at once, splices of two valid
indexes, structurally valid indexes whose entries claim anything).  Run this file directly
with atheris installed for coverage-guided fuzzing of the same targets:

    .venv/bin/python tests/test_fuzz.py -atheris_runs=100000 [-max_len=4096]
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # the atheris harness: remoteckpt's code instrumented as it is imported
    import atheris

    with atheris.instrument_imports(include=["remoteckpt"]):
        import remoteckpt  # noqa: F401
        import remoteckpt.format.table  # noqa: F401
        import remoteckpt.management.state  # noqa: F401

import io
import logging
import os
import pickle
import socket
import tempfile
import traceback
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import remoteckpt
from remoteckpt.engine.plan import plan_bundle
from remoteckpt.errors import CheckpointError, CorruptCheckpointError
from remoteckpt.format.bundle import BundleEntry, decode_index, encode_index, make_header
from remoteckpt.management.state import format_state, parse_state

MEMORY_BOUND = 64 * 2**20
"""Peak bytes a hostile file of at most a few KiB may make the reader allocate."""

FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


def _index_of(tensors: dict[str, Any]) -> bytes:
    plan = plan_bundle(tensors, checksum=True)
    out = io.BytesIO()
    encode_index(make_header(1), plan.entries, out)
    return out.getvalue()


SEEDS = [
    _index_of({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.array([b"x", b"yz"], object),
               "n": np.int64(3)}),
    _index_of({f"layer{i}/w": np.zeros((i + 1, 2), np.float16) for i in range(40)}),  # restarts, longer keys
    _index_of({"p": [remoteckpt.Slice(np.ones((2, 2), np.float32), (4, 2), (0, 0)),
                     remoteckpt.Slice(np.ones((2, 2), np.float32), (4, 2), (2, 0))]}),
]


def _decode(data: bytes) -> None:
    decode_index(lambda o, n: data[o:o + n], len(data))


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid file damaged by 1-8 mutations: byte changes, insertions, deletions,
    duplicated ranges, and splices with another valid file."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["xor", "set", "insert", "delete", "duplicate", "splice", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "xor" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "duplicate":
            n = draw(st.integers(1, 32))
            data[pos:pos] = data[pos:pos + n]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            cut = draw(st.integers(0, len(other)))
            data = data[:pos] + bytearray(other[cut:])
        elif op == "truncate":
            data = data[:pos]
    return bytes(data)


@FUZZ
@given(mutated(SEEDS))
def test_decode_index_on_mutated_indexes(data: bytes) -> None:
    try:
        _decode(data)
    except CorruptCheckpointError:
        pass


@FUZZ
@given(st.binary(min_size=48, max_size=2048).map(lambda b: b[:-8] + bytes.fromhex("57fb808b247547db")))
def test_decode_index_on_random_tables(data: bytes) -> None:
    """Random bytes with the table magic, so that the parser gets past the first check."""
    try:
        _decode(data)
    except CorruptCheckpointError:
        pass


# --- structurally valid indexes whose entries claim anything ------------------------------------

INT64 = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 7, 255, 4096, 2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1,
                                   -1, -2**31, -2**63]),
                  st.integers(-2**63, 2**63 - 1))
SMALL_OR_HUGE = st.one_of(st.integers(0, 64), INT64)


@st.composite
def hostile_entry(draw: st.DrawFn) -> BundleEntry:
    entry = BundleEntry(dtype=draw(st.one_of(st.integers(0, 30), st.sampled_from([101, 119, 2**31 - 1]))))
    entry.shard_id = draw(st.one_of(st.integers(0, 2), st.sampled_from([-1, 2**31 - 1])))
    entry.offset = draw(SMALL_OR_HUGE)
    entry.size = draw(SMALL_OR_HUGE)
    entry.crc32c = draw(st.integers(0, 2**32 - 1))
    entry.shape.SetInParent()
    for d in draw(st.lists(SMALL_OR_HUGE, max_size=5)):
        entry.shape.dim.add(size=d)
    entry.shape.unknown_rank = draw(st.booleans()) and draw(st.booleans())
    for _ in range(draw(st.integers(0, 2)) if draw(st.booleans()) else 0):
        s = entry.slices.add()
        for _ in range(draw(st.integers(0, 4))):
            extent = s.extent.add()
            extent.start = draw(SMALL_OR_HUGE)
            if draw(st.booleans()):
                extent.length = draw(SMALL_OR_HUGE)
    if draw(st.booleans()):
        entry.chunk_size = draw(SMALL_OR_HUGE)
        entry.chunk_crc32c.extend(draw(st.lists(st.integers(0, 2**32 - 1), max_size=6)))
    return entry


@st.composite
def hostile_bundle(draw: st.DrawFn) -> tuple[bytes, list[bytes], bytes]:
    header = make_header(draw(st.sampled_from([0, 1, 2, 3, 2**24])))
    header.endianness = draw(st.sampled_from([0, 0, 1, 2]))
    names = draw(st.lists(st.sampled_from([b"a", b"b", b"s", b"a\x00", b"\xff\xfe", "ü".encode()]), min_size=1,
                          max_size=4, unique=True))
    entries = {name: draw(hostile_entry()) for name in names}
    # Slice entries under the keys a full-tensor entry's slices point at, sometimes.
    for name, entry in list(entries.items()):
        if entry.slices and draw(st.booleans()):
            from remoteckpt.format.slices import box_from_proto, slice_key
            try:
                shape = tuple(d.size for d in entry.shape.dim)
                key = slice_key(name, box_from_proto(entry.slices[0], shape))
            except CheckpointError:
                continue
            entries[key] = draw(hostile_entry())
    out = io.BytesIO()
    encode_index(header, entries, out)
    data = draw(st.binary(max_size=300))
    return out.getvalue(), names, data


@pytest.fixture(scope="module")
def memory_trace() -> Iterator[None]:
    tracemalloc.start()
    yield
    tracemalloc.stop()


def _bounded_memory(fn: Callable[[], None]) -> None:
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    assert peak - base < MEMORY_BOUND, f"{(peak - base) / 2**20:.0f} MiB allocated"


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_bundle())
def test_reader_on_hostile_entries(memory_trace: None, bundle: tuple[bytes, list[bytes], bytes]) -> None:
    """Open the bundle, list it, read every tensor whole and in a box: only remoteckpt
    errors, and never an allocation of what the entries claim."""
    index, names, data = bundle
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "ck.index").write_bytes(index)
        for shard in range(3):
            for total in (1, 2, 3):
                if shard < total:
                    Path(tmp, f"ck.data-{shard:05d}-of-{total:05d}").write_bytes(data)

        def go() -> None:
            try:
                reader = remoteckpt.CheckpointReader(Path(tmp, "ck"))
            except CheckpointError:
                return
            with reader:
                for call in (reader.get_variable_to_shape_map, reader.get_variable_to_dtype_map,
                             lambda: remoteckpt.list_variables(Path(tmp, "ck"))):
                    try:
                        call()
                    except CheckpointError:
                        pass
                for name in [n.decode("utf-8", "surrogateescape") for n in names]:
                    for read in (lambda: reader.get_tensor(name), lambda: reader.get_slice(name, (slice(0, 1),)),
                                 lambda: reader.get_slice(name, ())):
                        try:
                            read()
                        except CheckpointError:
                            pass

        _bounded_memory(go)


@FUZZ
@given(mutated([SEEDS[0]]))
def test_reader_on_mutated_files(memory_trace: None, index: bytes) -> None:
    """A real checkpoint whose index is damaged several times over, read through the reader."""
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp, "ck")
        remoteckpt.save({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.array([b"x", b"yz"], object),
                         "n": np.int64(3)}, prefix)
        Path(tmp, "ck.index").write_bytes(index)

        def go() -> None:
            try:
                got = remoteckpt.load(prefix)
            except CheckpointError:
                return
            # Whatever reads without error must be what was saved (the CRCs guard the data).
            for name, value in got.items():
                if name == "a" and value.shape == (2, 3) and value.dtype == np.float32:
                    np.testing.assert_array_equal(value, np.arange(6, dtype=np.float32).reshape(2, 3))

        _bounded_memory(go)


# --- the state file -------------------------------------------------------------------------

STATE = format_state("ck-30", ["ck-10", "ck-20", "ck-30"], [1.0, 2.0, 3.0], 0.5)
HOSTILE_PATHS = ["../x", "/etc/passwd", "a/../../b", "a/..", "..", "s3://other/x", "s3://bucket/run2/x",
                 "s3://bucket/run/../x", "C:\\x", "a\\..\\..\\b", "", "\x00", "//x", "./x", "x/./y", "%2e%2e/x",
                 "x/" * 200 + "y", "ü/ck", "ck\n", "file:///etc/passwd", "\\\\server\\share\\x"]


@st.composite
def hostile_state(draw: st.DrawFn) -> bytes:
    paths = draw(st.lists(st.one_of(st.sampled_from(HOSTILE_PATHS), st.text(max_size=30)), min_size=1, max_size=4))
    latest = draw(st.one_of(st.sampled_from(paths), st.sampled_from(HOSTILE_PATHS)))
    try:
        text = format_state(latest, paths, None, None)
    except Exception:  # noqa: BLE001 - strings protobuf cannot hold
        text = STATE
    return draw(st.one_of(st.just(text), mutated([text, STATE])))


def _inside(directory: str, state: Any) -> None:
    for name in (state.model_checkpoint_path, *state.all_model_checkpoint_paths):
        assert name and "\x00" not in name and not name.startswith("/"), name
        assert ".." not in name.replace("\\", "/").split("/"), name
        joined = state.prefix(name)
        if "://" in directory:
            assert joined.startswith(directory.rstrip("/") + "/"), joined
        else:
            assert os.path.normpath(joined).startswith(os.path.normpath(directory).rstrip(os.sep) + os.sep), joined


@pytest.mark.slow
@FUZZ
@given(st.one_of(hostile_state(), st.binary(max_size=400), mutated([STATE])),
       st.sampled_from(["/data/run", "s3://bucket/run", "/"]))
def test_parse_state_on_hostile_input(text: bytes, directory: str) -> None:
    try:
        state = parse_state(text, directory, f"{directory}/checkpoint")
    except CorruptCheckpointError as exc:
        assert "checkpoint" in str(exc)
        return
    _inside(directory, state)


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_each_hostile_state_path(path: str) -> None:
    for directory in ("/data/run", "s3://bucket/run"):
        try:
            state = parse_state(format_state(path, [path]), directory, "checkpoint")
        except CorruptCheckpointError:
            continue
        except ValueError:  # protobuf refuses to hold it: nothing to parse
            continue
        _inside(directory, state)


def test_huge_state_file_is_refused_unread(tmp_path: Path) -> None:
    with open(tmp_path / "checkpoint", "wb") as f:
        f.truncate(17 * 2**20)  # sparse: nothing read
    with pytest.raises(CorruptCheckpointError, match="bytes"):
        remoteckpt.latest_checkpoint(tmp_path)


# --- the PyTorch DCP metadata -----------------------------------------------------------------

def _dcp_metadata_seed() -> bytes:
    torch_metadata = pytest.importorskip("remoteckpt.plugins.torch_metadata")
    import torch
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        TensorProperties,
        TensorStorageMetadata,
    )

    md = Metadata(state_dict_metadata={
        "w": TensorStorageMetadata(TensorProperties(dtype=torch.float32), torch.Size([4, 2]),
                                   [ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([2, 2])),
                                    ChunkStorageMetadata(torch.Size([2, 0]), torch.Size([2, 2]))]),
        "step": BytesStorageMetadata()},
        planner_data={"w": ("w",), "step": ("step",)}, storage_data={"k": b"\x00\x01"})
    return torch_metadata.encode_metadata(md)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False), st.text(max_size=10),
              st.sampled_from(["tensor", "bytes", "float32", "__tuple__", "__dict__", "__bytes__", "__size__",
                               "__dtype__", "__dcp__", "MetadataIndex", "TensorStorageMetadata", "remoteckpt.torch-dcp",
                               "not base64!", "layout", "strided"])),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(["format", "format_version", "state_dict_metadata",
                                                                "type", "dtype", "size", "chunks", "offsets",
                                                                "sizes", "planner_data", "storage_data",
                                                                "storage_meta", "extra", "__dcp__", "__tuple__",
                                                                "__dict__", "__bytes__", "__size__", "fqn"]),
                                               children, max_size=5)),
    max_leaves=20)


@pytest.mark.torch
def test_dcp_metadata_reader_on_hostile_json() -> None:
    seed = _dcp_metadata_seed()
    torch_metadata = pytest.importorskip("remoteckpt.plugins.torch_metadata")
    import json

    escaped: list[str] = []

    @settings(max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(mutated([seed]), JSON_VALUES.map(lambda v: json.dumps(v).encode()),
                     JSON_VALUES.map(lambda v: json.dumps({"format": "remoteckpt.torch-dcp",
                                                           "state_dict_metadata": v}).encode()),
                     st.just(b"[" * 100000)))
    def run(data: bytes) -> None:
        try:
            torch_metadata.decode_metadata(data)
        except CheckpointError:
            pass
        except Exception as exc:  # noqa: BLE001 - collected: the bug this test documents
            escaped.append(f"{type(exc).__name__}: {str(exc)[:80]}")

    run()
    assert escaped == [], sorted(set(escaped))[:10]


# --- credentials ------------------------------------------------------------------------------------

CANARY_KEY, CANARY_SECRET = "CANARYKEY7Q4Z", "CANARYSECRET9XW2"
THIRD_PARTY = ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3", "aiohttp")


def _no_canary(text: str | bytes, where: str, *, key_allowed: bool = False) -> None:
    raw = text.encode() if isinstance(text, str) else text
    assert CANARY_SECRET.encode() not in raw, f"the secret leaked into {where}"
    if not key_allowed:
        assert CANARY_KEY.encode() not in raw, f"the access key id leaked into {where}"


def _chain(exc: BaseException) -> str:
    parts = ["".join(traceback.format_exception(exc))]
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts += [str(exc), repr(exc), repr(getattr(exc, "args", ()))]
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return "\n".join(parts)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self, prefix: str) -> str:
        out = []
        for r in self.records:
            if r.name == prefix or r.name.startswith(prefix + "."):
                out.append(r.getMessage())
                if r.exc_info:
                    out.append("".join(traceback.format_exception(*r.exc_info)))
        return "\n".join(out)


@pytest.fixture
def debug_logs() -> Iterator[_Capture]:
    """Every logger at DEBUG (remoteckpt's and, to see what they would print, botocore's and
    s3fs's), captured."""
    capture = _Capture()
    root = logging.getLogger()
    old = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    levels = {name: logging.getLogger(name).level for name in ("remoteckpt",) + THIRD_PARTY}
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(old)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _every_call(base: str, options: dict[str, Any]) -> Iterator[tuple[str, Callable[[], Any]]]:
    yield "save", lambda: remoteckpt.save({"x": np.arange(3)}, f"{base}/ck", storage_options=options)
    yield "load", lambda: remoteckpt.load(f"{base}/ck", storage_options=options)
    yield "reader", lambda: remoteckpt.CheckpointReader(f"{base}/ck", storage_options=options)
    yield "saver", lambda: remoteckpt.Saver(storage_options=options).save({"x": np.arange(3)}, f"{base}/m", 1)
    yield "latest", lambda: remoteckpt.latest_checkpoint(base, storage_options=options)
    yield "gc", lambda: remoteckpt.gc(base, older_than=0, storage_options=options)


def _every_call_fails_without_canary(prefix: str, options: dict[str, Any], debug_logs: _Capture) -> None:
    """Every call on `prefix` fails with a CheckpointError, and no canary credential is in
    its exception chain, its pickle, remoteckpt's log, or (the secret) third-party logs."""
    for what, call in _every_call(prefix, options):
        with pytest.raises(CheckpointError) as info:
            call()
        _no_canary(_chain(info.value), f"the exception chain of {what}")
        _no_canary(pickle.dumps(info.value), f"the pickled exception of {what}")
    _no_canary(debug_logs.text("remoteckpt"), "remoteckpt's log")
    for name in THIRD_PARTY:  # they may print the key id (an Authorization header), never the secret
        _no_canary(debug_logs.text(name), f"{name}'s DEBUG log", key_allowed=True)


def test_credentials_never_leak_against_a_dead_endpoint(debug_logs: _Capture, s3_server: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = {"key": CANARY_KEY, "secret": CANARY_SECRET, "endpoint_url": f"http://127.0.0.1:{port}",
               "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}
    _every_call_fails_without_canary(f"s3://{s3_server.bucket}/canary", options, debug_logs)


@pytest.mark.s3
def test_credentials_never_leak_when_refused(debug_logs: _Capture) -> None:
    """A server that checks signatures refuses the canary credentials."""
    from remoteckpt.testing import SeaweedServer

    with SeaweedServer(verify_signatures=True) as server:
        options = {"key": CANARY_KEY, "secret": CANARY_SECRET, "endpoint_url": server.endpoint_url}
        _every_call_fails_without_canary(f"s3://{server.bucket}/canary", options, debug_logs)


def test_credentials_never_leak_on_success(debug_logs: _Capture, s3_server: Any) -> None:
    """SeaweedFS without identities accepts any credentials: the canaries are used for real."""
    options = {"key": CANARY_KEY, "secret": CANARY_SECRET, "endpoint_url": s3_server.endpoint_url}
    base = f"s3://{s3_server.bucket}/canary-ok-{os.getpid()}"
    for what, call in _every_call(base, options):
        result = call()
        if what == "reader":
            _no_canary(repr(result), "repr(CheckpointReader)")
            for obj, name in ((result, "CheckpointReader"), (result.store, "its store")):
                try:
                    data = pickle.dumps(obj)
                except (TypeError, pickle.PicklingError, AttributeError) as exc:
                    _no_canary(_chain(exc), f"the error pickling {name}")
                else:
                    _no_canary(data, f"pickled {name}")
            result.close()
    _no_canary(debug_logs.text("remoteckpt"), "remoteckpt's log")
    botocore_log = debug_logs.text("botocore")
    for name in THIRD_PARTY:
        _no_canary(debug_logs.text(name), f"{name}'s DEBUG log", key_allowed=True)
    # What third parties print at DEBUG (documented in docs/reliability.md): botocore logs
    # request headers, the Authorization header names the access key id.
    assert CANARY_KEY in botocore_log


@pytest.mark.torch
def test_plugin_objects_never_pickle_credentials() -> None:
    """DCP pickles its storage objects (e.g. for a process-based async_save): with credentials
    in their storage_options they refuse, without a canary in the error; without, they travel."""
    pytest.importorskip("torch")
    import remoteckpt.torch as rt

    options = {"key": CANARY_KEY, "client_kwargs": {"aws_secret_access_key": CANARY_SECRET}}
    for cls in (rt.StorageWriter, rt.StorageReader):
        with pytest.raises(TypeError, match="credentials") as info:
            pickle.dumps(cls("s3://bucket/run/step-1", storage_options=options))
        _no_canary(_chain(info.value), f"the error pickling {cls.__name__}")
        plain = pickle.loads(pickle.dumps(cls("s3://bucket/run/step-1", storage_options={"anon": False})))
        assert plain.prefix == "s3://bucket/run/step-1"


def test_remoteckpt_does_not_enable_third_party_loggers() -> None:
    """The library never configures logging: botocore's and s3fs's loggers stay as the
    application set them (so their DEBUG output, which names the access key id, stays off)."""
    import subprocess

    code = ("import logging, numpy as np, remoteckpt, tempfile, os\n"
            "d = tempfile.mkdtemp(); remoteckpt.save({'x': np.arange(3)}, os.path.join(d, 'ck'))\n"
            "remoteckpt.load(os.path.join(d, 'ck'))\n"
            f"names = {THIRD_PARTY + ('remoteckpt',)!r}\n"
            "def handlers(n): return [h for h in logging.getLogger(n).handlers if not isinstance(h, logging.NullHandler)]\n"
            "bad = [(n, logging.getLogger(n).level, handlers(n)) for n in names\n"
            "       if logging.getLogger(n).level != logging.NOTSET or handlers(n)]\n"
            "assert not bad and not logging.getLogger().handlers, bad\n")
    env = {k: v for k, v in os.environ.items() if k != "S3FS_LOGGING_LEVEL"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


# --- atheris (optional) -------------------------------------------------------------------------

def _atheris_target(data: bytes) -> None:
    """One input, two readers: the index decoder and the state-file parser."""
    try:
        _decode(data)
    except CorruptCheckpointError:
        pass
    try:
        parse_state(data, "/data/run", "checkpoint")
    except CorruptCheckpointError:
        pass


def test_atheris_harness_runs() -> None:
    pytest.importorskip("atheris")
    import subprocess

    subprocess.run([sys.executable, __file__, "-atheris_runs=3000", "-max_len=2048"], check=True, timeout=120,
                   cwd=os.path.dirname(__file__))


def _atheris_main() -> None:
    import atheris

    for seed in SEEDS:  # a corpus to start from
        _atheris_target(seed)
    atheris.Setup(sys.argv, _atheris_target)
    atheris.Fuzz()


if __name__ == "__main__":
    _atheris_main()
