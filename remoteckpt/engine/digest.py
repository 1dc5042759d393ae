"""The content digest incremental saves keep per entry, beside its CRC32C.

    BundleEntryProto field 1003  content_blake3   16 bytes: BLAKE3 of the payload's bytes

A tensor of a new checkpoint is taken as unchanged since the base (and its bytes copied by
the store instead of written) only when dtype, shape, size, CRC32C *and* this digest all
agree (`engine.incremental`).  CRC32C alone would not do: a false "unchanged" is silent data
loss, and 32 bits collide among a few tens of thousands of changed tensors.

Entries written by earlier versions carry a SHA-256 digest (field 1002, `content_sha256`)
instead; they count as having no digest, so a base of such entries is written whole once.
"""

from __future__ import annotations

from blake3 import blake3

from ..format.bundle import BundleEntry

DIGEST_SIZE = 16
"""Bytes of the digest: 128 bits, so that two different payloads passing for one another is a
2**-64 event even among 2**32 tensors.  BLAKE3 rather than SHA-256: one core hashes it at
7.0 GB/s on the machine of docs/benchmarks.md against SHA-256's 1.8 GB/s (in hardware, x86
SHA extensions), which is most of what an incremental save adds to a full one's CPU time."""

Digest = blake3
"""A running digest: ``update(bytes)``, then `finish`."""


def new_digest() -> Digest:
    return blake3()


def finish(digest: Digest) -> bytes:
    return digest.digest(length=DIGEST_SIZE)


def digest_of(entry: BundleEntry) -> bytes | None:
    """The entry's digest, None if it has none (saved without digests, or by an earlier
    version: see the module docstring)."""
    return entry.content_blake3 if len(entry.content_blake3) == DIGEST_SIZE else None


def set_digest(entry: BundleEntry, digest: bytes) -> None:
    entry.content_blake3 = digest
