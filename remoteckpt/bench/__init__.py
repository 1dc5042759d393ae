"""Benchmarks (`make bench`, `remoteckpt bench [URL]`): never part of the test suite.

    micro       the format layer alone: CRC32C, index encode/decode, string payloads
    throughput  save/restore of a tensor set against the raw I/O of the same bytes, TensorFlow's
                tf.train.Checkpoint and PyTorch DCP, on local disk and S3; save_async stall,
                multi-worker save, peak RSS (helpers: harness, baselines, report)

Each prints a table and writes JSON under ``bench-results/``; `docs/benchmarks.md` records
runs with the command that produced them.
"""
