"""A process that exports a SavedModel and nothing else, for the crash tests: run as
``python tests/saved_model_workers.py BASE [VERSION]`` with ``REMOTECKPT_CRASH_AT`` set, it
dies at that point of the export (`remoteckpt.faults`); unset, it exports version VERSION (or
the next) and prints the version's directory."""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import remoteckpt.tensorflow as rtf  # noqa: E402
from remoteckpt import IOOptions  # noqa: E402

WORDS = ["alpha", "beta", "gamma"]
OPTIONS = IOOptions(lease_timeout=2.0)
"""A short lease: `gc` watches a dead exporter's claim for that long before removing its files."""


class Scorer(tf.Module):
    """A variable large enough for a multipart upload on S3 (9 MiB), a vocabulary asset and a
    serving signature."""

    def __init__(self, vocabulary: str, seed: int) -> None:
        super().__init__()
        self.vocabulary = tf.saved_model.Asset(vocabulary)
        initializer = tf.lookup.TextFileInitializer(
            self.vocabulary, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
            tf.lookup.TextFileIndex.LINE_NUMBER)
        self.table = tf.lookup.StaticHashTable(initializer, default_value=-1)
        self.weights = tf.Variable(np.random.default_rng(seed).random((3 * 2**20,), np.float32))
        self.bias = tf.Variable(np.float32(seed))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="words")])
    def __call__(self, words: Any) -> dict[str, Any]:
        ids = self.table.lookup(words)
        return {"ids": ids, "score": tf.gather(self.weights, tf.maximum(ids, 0)) + self.bias}


def make_scorer(seed: int) -> Scorer:
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "vocab.txt")
    with open(path, "w") as f:
        f.write("\n".join(WORDS) + "\n")
    return Scorer(path, seed)


def main() -> None:
    base = sys.argv[1]
    version = int(sys.argv[2]) if len(sys.argv) > 2 else None
    scorer = make_scorer(seed=7)
    print(rtf.export_saved_model(scorer, base, signatures={"serving_default": scorer.__call__}, version=version,
                                 options=OPTIONS))


if __name__ == "__main__":
    main()
