"""What a per-host tier's drains sent, kept in the durable marker: the base of the next
incremental drain, found on the host's own disk.

    TIER/NAME.durable   {"remote": PREFIX, "time": T,
                         "sent": {"NAME.data-RRRRR-of-NNNNN": ETAG, ...}}

Each worker of the host adds the data files its drain wrote to the remote directory, with the
version the store gave them (under the host's lock: `hostlock`).  An
incremental drain's base is then the host's newest durable checkpoint of the same remote
directory: its entries read from the tier's copy of its index (byte for byte the remote one),
its data files pinned to the versions this host sent.  No request reads a key every worker
reads (the remote state file, the base's index): each worker's copy names the source version
it expects (S3 ``x-amz-copy-source-if-match``), so a base replaced or deleted since makes
the copy fail, and the data file is sent whole instead, never other bytes copied.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence

from ..engine.digest import digest_of
from ..engine.incremental import BaseCheckpoint
from ..errors import CheckpointError
from ..format.bundle import decode_index_bytes, index_filename
from ..protocol.records import DataIdentity
from ..storage import split_prefix
from ..storage.base import Store
from ..storage.local import LocalStore
from .hostlock import host_locked
from .layout import DURABLE, RECORD, LocalTier, checkpoints, read_record, record_bytes

log = logging.getLogger("remoteckpt")


async def mark_durable_with(local: str, remote: str, sent: Iterable[DataIdentity]) -> None:
    """The durable marker of checkpoint `local` (a per-host tier's), with the data files of
    `sent` added to those of the host's other workers."""
    if not os.path.exists(local + RECORD):  # evicted once durable, by another worker's trim
        log.info("%s left the tier before this worker marked it durable", local)
        return
    async with host_locked(local) as lock:
        if not os.path.exists(local + RECORD):  # evicted meanwhile: its lock's file goes with it
            if lock is not None:
                lock.unlink()
            return
        try:
            marker = read_record(local + DURABLE)
        except CheckpointError:
            marker = None  # damaged: written anew
        known = dict(marker.get("sent", {})) if marker is not None and isinstance(marker.get("sent"), dict) else {}
        known.update({os.path.basename(i.key): i.etag for i in sent})
        record = json.loads(record_bytes(remote))
        record["sent"] = known
        directory, name = split_prefix(local)
        here = LocalStore(directory)
        try:
            await here.put(name + DURABLE, json.dumps(record).encode())
        finally:
            await here.close()


def sent_base(tier: LocalTier, store: Store, name: str, remote_dir: str,
              shards: Sequence[int]) -> BaseCheckpoint | None:
    """The base of an incremental drain of data files `shards` of checkpoint `name` of `tier`
    to `store` (the remote directory `remote_dir`): the tier's newest other checkpoint durable
    there of which this host sent one of those data files, with its entries in the data files
    the host sent only; None if there is none (the drain then looks in the remote directory)."""
    for c in reversed(checkpoints(tier)):
        directory, remote_name = split_prefix(c.remote)
        if c.name == name or not (c.durable and c.committed) or directory.rstrip("/") != remote_dir.rstrip("/"):
            continue
        try:
            marker = read_record(c.local + DURABLE)
            with open(index_filename(c.local), "rb") as f:
                index = decode_index_bytes(f.read())
        except (CheckpointError, OSError):
            continue
        sent = marker.get("sent") if marker is not None else None
        if not isinstance(sent, dict) or not sent:
            continue
        base = BaseCheckpoint(store, remote_name, {}, index.header.num_shards)
        for shard in range(base.num_shards):
            etag = sent.get(os.path.basename(base.data_key(shard)))
            if isinstance(etag, str) and etag:
                base.pin(shard, etag)
        base.entries = {k: e for k, e in index.entries.items()
                        if base.pinned(e.shard_id) and not e.slices and digest_of(e) is not None}
        if base.entries and any(base.pinned(s) for s in shards):
            return base
    return None
