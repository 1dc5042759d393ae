"""remoteckpt's benchmarks and reliability soak (``make bench``, ``make soak``): not part of the
installed package, run from the repository root (``python -m benchmarks``).

    micro       the format layer alone: CRC32C, index encode/decode, string payloads
    throughput  save/restore of a tensor set against the raw I/O of the same bytes, TensorFlow's
                tf.train.Checkpoint and PyTorch DCP, on local disk and S3; save_async stall,
                multi-worker save, peak RSS (helpers: harness, baselines, report)

    soak        the reliability tests at scale, bounded in time (``python -m benchmarks.soak``)

Each prints a table and writes JSON under ``bench-results/``; `docs/benchmarks.md` reports a
run and how to reproduce it, `docs/reliability.md` a soak.  ``remoteckpt bench URL`` (the
installed command) measures remoteckpt alone on a given store.
"""
