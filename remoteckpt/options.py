"""Tuning knobs, in one frozen value passed as ``options=`` to saves, loads and readers."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 2**20


@dataclass(frozen=True, kw_only=True)
class IOOptions:
    """How remoteckpt moves bytes.  Every field has a default that suits S3 and local disk."""

    memory_budget: int = 256 * MiB
    """Bytes of temporary buffers held at once, per process: every save, read and copy of a
    process with the same value draws on one budget (`engine.budget`).  It bounds blocks of
    tensors converted while they are written (non-contiguous, big-endian), a partial read's
    blocks, string payloads, a copy's or a drain's pieces, until the S3 upload parts sending
    them are done (``memory_budget // part_size`` parts in flight per writer, and besides the
    budget at most one part being filled per writer).  The tensors being saved and the arrays a
    read returns are the caller's, not counted; an operation that needs one buffer larger than
    the budget gets it alone."""

    max_concurrency: int = 16
    """Requests in flight at once per save or load."""

    read_chunk: int = 16 * MiB
    """Largest single ranged read; bigger tensors are fetched in parallel pieces."""

    coalesce_gap: int = 256 * 1024
    """Neighbouring reads in one file are merged into one request when the bytes between
    them are at most this many (cheaper than a second request on an object store)."""

    crc_chunk: int = 1 * MiB
    """Chunk size of the per-chunk CRC32C extension written for larger payloads, which lets
    partial reads be verified.  0 disables it (indexes then match TF's byte for byte)."""

    commit_timeout: float = 600.0
    """Seconds the coordinator waits for every worker's table, and workers for the commit."""

    lease_timeout: float = 30.0
    """Seconds a save's claim on its prefix lives without renewal.  The save renews it every
    quarter of that, however long it runs; another save (or `gc`) takes it over only after
    watching it stay unchanged this long, by its own monotonic clock (never by comparing
    wall clocks).  A retried job whose last attempt was killed waits at most this long."""

    poll_interval: float = 0.05
    """First wait between polls of storage while waiting (grows to 1 s)."""

    host_cache: str | None = None
    """A directory through which the processes of one host share what they read
    (`engine.hostcache`): a piece one process fetched and verified is read from there by the
    others.  None: ``$REMOTECKPT_HOST_CACHE`` if set, else no cache."""

    host_cache_bytes: int = 64 * 1024 * MiB
    """Size the host cache is trimmed back to after a read that added to it (least recently
    used files first): room for a few checkpoints of a large model on a local NVMe disk."""

    def __post_init__(self) -> None:
        if self.memory_budget < MiB:
            raise ValueError("memory_budget must be at least 1 MiB")
        if self.max_concurrency < 1 or self.read_chunk < 64 * 1024:
            raise ValueError("max_concurrency must be >= 1 and read_chunk >= 64 KiB")
        if self.crc_chunk and self.crc_chunk < 4096:
            raise ValueError("crc_chunk must be 0 or at least 4096")
        if self.lease_timeout <= 0 or self.commit_timeout < 0:
            raise ValueError("lease_timeout must be positive and commit_timeout not negative")


DEFAULT_OPTIONS = IOOptions()
