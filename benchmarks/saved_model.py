"""``python -m benchmarks.saved_model [URL] [--mib M] [--repeat R]``: SavedModel export and
load through remoteckpt against TensorFlow on local disk.

The model is a tf.Module holding `--mib` MiB of float32 variables (16 of them) and a serving
signature.  Measured, best of `--repeat`:

  tf.saved_model.save   TensorFlow writing the whole SavedModel to a local temporary directory
  tf.saved_model.load   TensorFlow loading it from there (page cache warm)
  export_saved_model    remoteckpt: graph built by TensorFlow, variables through the engine,
                        saved_model.pb committed last, to URL
  load_saved_model      remoteckpt: graph through a temporary directory, variables read from URL

Without URL an embedded SeaweedFS S3 server (127.0.0.1) is started and used; a local
directory works too.  Results are printed as one table; MiB/s counts the variables' bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import remoteckpt.tensorflow as rtf  # noqa: E402

VARIABLES = 16
"""Variables of the model: enough that the engine writes and reads several at once."""


class Model(tf.Module):
    def __init__(self, mib: float) -> None:
        super().__init__()
        rows = max(1, int(mib * 2**20 / 4 / VARIABLES / 1024))
        rng = np.random.default_rng(0)
        self.weights = [tf.Variable(rng.random((rows, 1024), np.float32)) for _ in range(VARIABLES)]

    @tf.function(input_signature=[tf.TensorSpec([None, 1024], tf.float32, name="x")])
    def serve(self, x: Any) -> dict[str, Any]:
        return {"y": tf.add_n([tf.reduce_sum(x * w[0]) for w in self.weights])}


def best(repeat: int, work: Callable[[int], Any]) -> float:
    times = []
    for i in range(repeat):
        start = time.perf_counter()
        work(i)
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", help="s3://bucket/prefix or a local directory (default: embedded SeaweedFS)")
    parser.add_argument("--mib", type=float, default=256, help="MiB of variables (default 256)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts (default 3)")
    args = parser.parse_args(argv)
    server = None
    url = args.url
    if url is None:
        from remoteckpt.testing import SeaweedServer

        server = SeaweedServer().__enter__()
        os.environ.update(server.env())
        url = f"s3://{server.bucket}/bench-{uuid.uuid4().hex[:8]}"
    model = Model(args.mib)
    size = sum(int(np.prod(w.shape)) * 4 for w in model.weights)
    signatures = {"serving_default": model.serve}
    local = tempfile.mkdtemp(prefix="bench-savedmodel-")
    rows: list[tuple[str, str, float]] = []
    try:
        def tf_save(i: int) -> None:
            tf.saved_model.save(model, os.path.join(local, str(i)), signatures=signatures)

        rows.append(("tf.saved_model.save", "local disk", best(args.repeat, tf_save)))
        rows.append(("tf.saved_model.load", "local disk",
                     best(args.repeat, lambda i: tf.saved_model.load(os.path.join(local, str(i))))))
        rows.append(("export_saved_model", url,
                     best(args.repeat, lambda i: rtf.export_saved_model(model, url, signatures=signatures))))
        rows.append(("load_saved_model", url, best(args.repeat, lambda i: rtf.load_saved_model(url))))
    finally:
        shutil.rmtree(local, ignore_errors=True)
        if server is not None:
            server.__exit__(None, None, None)
    print(f"variables: {size / 2**20:.0f} MiB in {VARIABLES} tensors; best of {args.repeat}")
    print(f"{'operation':<22}{'where':<44}{'seconds':>9}{'MiB/s':>9}")
    for op, where, seconds in rows:
        print(f"{op:<22}{where[:43]:<44}{seconds:>9.2f}{size / 2**20 / seconds:>9.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
