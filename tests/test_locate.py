"""Checkpoint ids (`remoteckpt.locate`): TensorFlow's prefix form as it always was; a trailing
slash (or an existing directory) means a directory, the checkpoint ``ckpt`` inside it; readers
also take ``PREFIX.index`` / ``PREFIX.data-*`` and a directory with a state file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import remoteckpt
from remoteckpt.storage import on_store


@pytest.fixture(params=["local", "s3"])
def directory(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path) if request.param == "local" else request.getfixturevalue("s3_prefix")


def listing(directory: str) -> list[str]:
    return on_store(directory, lambda store: store.list())


def test_a_trailing_slash_saves_inside_the_directory(directory: str) -> None:
    written = remoteckpt.save({"w": np.arange(3.0)}, f"{directory}/step-100/")
    assert written == f"{directory}/step-100/ckpt"
    assert listing(directory) == ["step-100/ckpt.data-00000-of-00001", "step-100/ckpt.index"]
    for checkpoint_id in (f"{directory}/step-100/", f"{directory}/step-100", f"{directory}/step-100/ckpt",
                          f"{directory}/step-100/ckpt.index", f"{directory}/step-100/ckpt.data-00000-of-00001"):
        np.testing.assert_array_equal(remoteckpt.load(checkpoint_id)["w"], np.arange(3.0))
    assert remoteckpt.list_variables(f"{directory}/step-100/") == [("w", [3])]


def test_the_prefix_form_is_unchanged(directory: str) -> None:
    written = remoteckpt.save({"w": np.ones(2)}, f"{directory}/model.ckpt-7")
    assert written == f"{directory}/model.ckpt-7"
    assert listing(directory) == ["model.ckpt-7.data-00000-of-00001", "model.ckpt-7.index"]


def test_an_existing_local_directory_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    assert remoteckpt.save({"w": np.ones(2)}, tmp_path / "run") == f"{tmp_path}/run/ckpt"
    assert (tmp_path / "run" / "ckpt.index").exists()


def test_a_directory_with_a_state_file_reads_as_its_latest(directory: str) -> None:
    saver = remoteckpt.Saver()
    for step in (1, 2):
        saver.save({"w": np.full(2, float(step))}, f"{directory}/run/model.ckpt", global_step=step)
    np.testing.assert_array_equal(remoteckpt.load(f"{directory}/run")["w"], [2.0, 2.0])
    with remoteckpt.load_checkpoint(f"{directory}/run/") as reader:
        assert reader.prefix == f"{directory}/run/model.ckpt-2"


def test_nothing_there_names_both_readings(directory: str) -> None:
    with pytest.raises(remoteckpt.CheckpointNotFoundError, match=r"nowhere\.index does not exist; nor is .*nowhere/"):
        remoteckpt.load(f"{directory}/nowhere")
    with pytest.raises(remoteckpt.CheckpointNotFoundError, match=r"nowhere/ckpt\.index does not exist"):
        remoteckpt.load(f"{directory}/nowhere/")


@pytest.mark.tensorflow
def test_tensorflow_reads_a_directory_checkpoint(tmp_path: Path) -> None:
    tf: Any = pytest.importorskip("tensorflow")
    written = remoteckpt.save({"w": np.arange(4, dtype=np.float32)}, f"{tmp_path}/step-9/")
    np.testing.assert_array_equal(tf.train.load_checkpoint(written).get_tensor("w"), np.arange(4))


def test_a_bucket_root_is_a_directory() -> None:
    from remoteckpt.locate import for_writing, is_directory_id
    from remoteckpt.storage import split_prefix

    for url in ("s3://bucket", "s3://bucket/", "gs://bucket"):
        assert is_directory_id(url)
    assert for_writing("s3://bucket") == for_writing("s3://bucket/") == "s3://bucket/ckpt"
    assert split_prefix("s3://bucket/ckpt") == ("s3://bucket", "ckpt")
    with pytest.raises(ValueError, match=r"s3://bucket names a bucket, not a checkpoint in it"):
        split_prefix("s3://bucket")
    assert not is_directory_id("s3://bucket/model.ckpt-1") and not is_directory_id("memory://model.ckpt-1")


def test_urls_remoteckpt_cannot_open_say_why() -> None:
    import importlib.util

    with pytest.raises(ValueError, match="unknown URL scheme 'foo'"):
        remoteckpt.load("foo://x/y")
    if importlib.util.find_spec("gcsfs") is None:
        with pytest.raises(ImportError, match="gcsfs"):
            remoteckpt.load("gs://b/x")
    with pytest.raises(remoteckpt.StorageError, match=r"ftp://x\.invalid: gaierror"):
        remoteckpt.load("ftp://x.invalid/y")
