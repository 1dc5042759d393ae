"""``make demo``: save a model checkpoint to an embedded S3 server and restore it, verified.

    python -m remoteckpt.demo                 # starts SeaweedFS on 127.0.0.1, uses s3://
    python -m remoteckpt.demo --store DIR     # the same on a local directory
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator

import numpy as np

from . import CheckpointReader, load, save
from .devserver import SeaweedServer


def model_tensors(mib: int) -> dict[str, np.ndarray]:
    """A transformer-shaped set of float32 weights adding up to about `mib` MiB."""
    rng = np.random.default_rng(1000)
    width = 512
    layers = max(1, mib * 2**20 // (4 * (4 * width * width + 2 * width * 4 * width)))
    tensors: dict[str, np.ndarray] = {"embedding": rng.standard_normal((1000, width), np.float32)}
    for i in range(layers):
        for name, shape in [("attn/qkv", (width, 3 * width)), ("attn/out", (width, width)),
                            ("mlp/in", (width, 4 * width)), ("mlp/out", (4 * width, width)),
                            ("norm/scale", (width,))]:
            tensors[f"layer_{i:02d}/{name}"] = rng.standard_normal(shape, np.float32)
    tensors["global_step"] = np.int64(1000)
    tensors["vocab"] = np.array([f"token{i}".encode() for i in range(1000)], dtype=object)
    return tensors


@contextlib.contextmanager
def _s3() -> Iterator[str]:
    print("starting an embedded S3 server (SeaweedFS) on 127.0.0.1 ...", flush=True)
    with SeaweedServer() as server:
        os.environ.update(server.env())
        print(f"  S3 endpoint {server.endpoint_url}, bucket {server.bucket!r} "
              f"(ready in {server.startup_seconds:.1f} s)")
        yield f"s3://{server.bucket}/demo"
    print("S3 server stopped.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="remoteckpt.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="a local directory (or any URL) instead of the embedded S3 server")
    parser.add_argument("--mib", type=int, default=256, help="checkpoint size in MiB (default 256)")
    args = parser.parse_args(argv)
    tensors = model_tensors(args.mib)
    nbytes = sum(np.asarray(t).nbytes for t in tensors.values() if np.asarray(t).dtype != object)
    with contextlib.ExitStack() as stack:
        if args.store:
            base = args.store.rstrip("/")
        else:
            base = stack.enter_context(_s3())
        prefix = f"{base}/model.ckpt-1000"
        start = time.perf_counter()
        save(tensors, prefix)
        saved = time.perf_counter() - start
        start = time.perf_counter()
        restored = load(prefix)
        loaded = time.perf_counter() - start
        verified = set(restored) == set(tensors) and all(
            list(restored[k].reshape(-1)) == list(np.asarray(v).reshape(-1)) if np.asarray(v).dtype == object
            else restored[k].tobytes() == np.asarray(v).tobytes() for k, v in tensors.items())
        with CheckpointReader(prefix) as reader:
            shards = reader.index.num_shards
        print(f"checkpoint   {prefix}")
        print(f"tensors      {len(tensors)} in {shards} data shard(s)")
        print(f"bytes        {nbytes / 2**20:.1f} MiB")
        print(f"save         {saved:.2f} s  ({nbytes / saved / 1e6:.0f} MB/s)")
        print(f"restore      {loaded:.2f} s  ({nbytes / loaded / 1e6:.0f} MB/s), every CRC32C checked")
        print(f"verified     {'yes: every tensor equals what was saved' if verified else 'NO'}")
    return 0 if verified else 1


if __name__ == "__main__":
    raise SystemExit(main())
