"""`gc`: remove what crashed saves leave behind, never a committed checkpoint.

Garbage in a directory, when older than `older_than` seconds (younger ones may belong to a
save in progress):
  - data files ``NAME.data-*`` with no ``NAME.index`` (the save never committed)
  - staging files under ``NAME.tmp*/`` (per-worker tables, failure notes, outcomes)
  - claims ``NAME.claim`` of saves that died holding them
  - local temp files ``*.tempstate<digits>`` of interrupted writes
  - incomplete multipart uploads (S3), which otherwise cost money forever
Everything else is left alone: committed checkpoints (an ``.index`` and its data files), the
state file, files remoteckpt does not recognise.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ..storage import ObjectInfo, Store, on_store

_DATA = re.compile(r"^(?P<name>.+)\.data-\d{5,}-of-\d{5,}$")
_STAGING = re.compile(r"^(?P<name>[^/]+)\.tmp(-[A-Za-z0-9._-]+)?/")
_TEMP = re.compile(r"\.tempstate\d+$")
_CLAIM = re.compile(r"^[^/]+\.claim$")


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)
    aborted_uploads: list[str] = field(default_factory=list)
    bytes_freed: int = 0


def _garbage(info: ObjectInfo, committed: set[str]) -> bool:
    key = info.key
    if _TEMP.search(key) or _STAGING.match(key) or _CLAIM.match(key):
        return True
    match = _DATA.match(key)
    return bool(match and "/" not in key and match.group("name") not in committed)


def gc(directory: str | os.PathLike[str], *, older_than: float = 3600.0,
       storage_options: dict[str, Any] | None = None, dry_run: bool = False) -> GcReport:
    """Remove uncommitted leftovers older than `older_than` seconds from `directory`
    (see the module docstring); with `dry_run`, only report them."""
    text = os.fspath(directory)
    root = text.rstrip("/") if "://" in text else os.path.abspath(text)
    cutoff = time.time() - older_than

    async def go(store: Store) -> GcReport:
        report = GcReport()
        infos = await store.list_info()
        committed = {i.key[: -len(".index")] for i in infos if i.key.endswith(".index") and "/" not in i.key}
        for info in infos:
            if info.mtime <= cutoff and _garbage(info, committed):
                report.removed.append(info.key)
                report.bytes_freed += info.size
                if not dry_run:
                    await store.delete(info.key)
        for upload in await store.pending_uploads():
            if upload.initiated <= cutoff:
                report.aborted_uploads.append(upload.key)
                if not dry_run:
                    await store.abort_upload(upload)
        return report

    return on_store(root, go, storage_options)
