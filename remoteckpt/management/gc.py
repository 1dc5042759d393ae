"""`gc`: remove what crashed saves leave behind, never a committed checkpoint or a live save.

Garbage in a directory, when older than `older_than` seconds:
  - data files ``NAME.data-*`` (of any world size) with no ``NAME.index``
  - staging objects under ``NAME.tmp*/`` (notices, workers' reports)
  - claims ``NAME.claim`` of saves that died holding them
  - local temp files ``*.tempstate<digits>`` of interrupted writes
  - incomplete multipart uploads (S3), which otherwise cost money forever
  - scratch objects ``.remoteckpt-probe-*`` of a store's probe whose process died
  - the same leftovers in the directory's ``.tiers/`` folder, where the workers of per-host
    local tiers commit locally (`tiers.hosts`: claims and staging of a local commit whose
    coordinator died), and a local commit's ``.tiers/NAME.index`` once ``NAME.index`` is
    committed with the same bytes (the checkpoint drained; its coordinator died before it
    removed the local commit's index).  Any other ``.tiers/NAME.index`` is left alone: a
    restarted job's drain may need it
  - partial SavedModel versions of a base directory (``N/`` holding SavedModel files but no
    ``N/saved_model.pb``: an export that died; `management.versions`), every file of one,
    once its newest file is older than `older_than` and no save of its variables is alive
A prefix whose claim is alive is left alone whatever its age: every claim found is watched for
the lease its holder stated (renewed meanwhile: alive), all at once, so `gc` takes up to one
lease timeout when it finds any.  Just before a data file is deleted, its index is looked for
again, and the delete is conditional on the version listed.  Everything else is left alone:
committed checkpoints (an ``.index`` and its data files), the state file, files remoteckpt
does not recognise.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointNotFoundError
from ..format.bundle import index_filename
from ..options import DEFAULT_OPTIONS, IOOptions
from ..protocol.layout import DATA_FILE, MEETING
from ..protocol.lease import Verdict, watch
from ..protocol.records import MAX_RECORD_BYTES, ClaimRecord
from ..storage import ObjectInfo, Store, on_store
from ..storage.base import PROBE_PREFIX
from .versions import deletion_order, group_versions

_STAGING = re.compile(r"^(?P<name>[^/]+)\.tmp(-[A-Za-z0-9._-]+)?/")
_TEMP = re.compile(r"^(?P<name>[^/]+?)(\.index|\.data-\d{5,}-of-\d{5,}|\.claim)?\.tempstate\d+$")
_CLAIM = re.compile(r"^(?P<name>[^/]+)\.claim$")
_PROBE = re.compile(r"^(?P<name>" + re.escape(PROBE_PREFIX) + r"[0-9a-f]+)$")


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)
    aborted_uploads: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(key, why) of garbage left in place: a live save's, or younger than `older_than`."""


def _owner(key: str) -> tuple[str, str] | None:
    """(checkpoint name, kind) of a key gc may collect, None for anything else; in the
    ``.tiers/`` folder, a name of the folder (``.tiers/NAME``)."""
    folder = f"{MEETING}/" if key.startswith(f"{MEETING}/") else ""
    key = key[len(folder):]
    if "/" not in key and (m := DATA_FILE.match(key)):
        return folder + m.group("name"), "data"
    for kind, pattern in (("staging", _STAGING), ("claim", _CLAIM), ("temp", _TEMP), ("probe", _PROBE)):
        if m := pattern.match(key):
            return folder + m.group("name"), kind
    return None


def _index_name(key: str) -> str | None:
    """The checkpoint name of a committed index at the top of the directory or in ``.tiers/``."""
    name = key.removeprefix(f"{MEETING}/")
    return key[: -len(".index")] if name.endswith(".index") and "/" not in name else None


async def _live_claims(store: Store, claims: list[ObjectInfo], options: IOOptions) -> set[str]:
    """Names of the checkpoints whose claim is renewed while we watch it."""
    async def judge(info: ObjectInfo) -> str | None:
        try:
            held = await store.get_object(info.key, max_size=MAX_RECORD_BYTES)
        except CheckpointNotFoundError:
            return None
        record = ClaimRecord.decode(held.data)
        lease = record.lease if record is not None else options.lease_timeout
        if await watch(store, info.key, held.etag, lease) is Verdict.ALIVE:
            return info.key[: -len(".claim")]
        return None

    return {name for name in await asyncio.gather(*(judge(c) for c in claims)) if name}


async def _drained(store: Store, infos: list[ObjectInfo], committed: set[str]) -> list[tuple[ObjectInfo, str]]:
    """The local commits (``.tiers/NAME.index``) whose checkpoint ``NAME.index`` is committed
    with the same bytes, with their names (``.tiers/NAME``)."""
    found = []
    for info in infos:
        name = _index_name(info.key)
        top = name.removeprefix(f"{MEETING}/") if name is not None else None
        if name is None or top == name or top not in committed:
            continue
        try:
            local, remote = await asyncio.gather(store.get(info.key), store.get(index_filename(top)))
        except CheckpointNotFoundError:
            continue
        if local == remote:
            found.append((info, name))
    return found


def gc(directory: str | os.PathLike[str], *, older_than: float = 3600.0,
       storage_options: dict[str, Any] | None = None, dry_run: bool = False,
       options: IOOptions = DEFAULT_OPTIONS) -> GcReport:
    """Remove uncommitted leftovers older than `older_than` seconds from `directory`, except
    those of live saves (see the module docstring); with `dry_run`, only report them.
    (`remoteckpt.gc` adds the local tier: `directory`.)"""
    text = os.fspath(directory)
    root = text.rstrip("/") if "://" in text else os.path.abspath(text)
    cutoff = time.time() - older_than

    async def go(store: Store) -> GcReport:
        report = GcReport()
        infos = await store.list_info()
        committed = {name for i in infos if (name := _index_name(i.key)) is not None}
        owned = [(i, o) for i in infos if (o := _owner(i.key)) is not None]
        partial = [v for v in group_versions(infos).values() if not v.complete]
        version_claims = [i for i in infos if _CLAIM.match(i.key.rsplit("/", 1)[-1])
                          and any(i.key.startswith(f"{v.name}/") for v in partial)]
        live = await _live_claims(store, [i for i, (_, kind) in owned if kind == "claim"] + version_claims, options)
        owned += [(i, (name, "drained")) for i, name in await _drained(store, infos, committed)]
        for info, (name, kind) in owned:
            if kind == "data" and name in committed:
                continue
            why = ("a live save holds its prefix" if name in live
                   else f"younger than {older_than:g} s" if info.mtime > cutoff else "")
            if why:
                report.skipped.append((info.key, why))
                continue
            if kind == "data" and await store.exists(index_filename(name)):
                continue  # committed meanwhile
            report.removed.append(info.key)
            report.bytes_freed += info.size
            if not dry_run:
                await store.delete(info.key, if_match=info.etag or None)
        by_key = {i.key: i for i in infos}
        for version in partial:
            why = ("a live export holds it" if any(name.startswith(f"{version.name}/") for name in live)
                   else f"younger than {older_than:g} s" if version.mtime > cutoff else "")
            if why:
                report.skipped.append((f"{version.name}/", why))
                continue
            for key in deletion_order(version.keys):  # the variables' index first: no half checkpoint
                report.removed.append(key)
                report.bytes_freed += by_key[key].size
                if not dry_run:
                    await store.delete(key, if_match=by_key[key].etag or None)
        partial_names = {f"{v.name}/" for v in partial}
        for upload in await store.pending_uploads():
            # an upload into a partial SavedModel version has no save to hold it: age decides
            of_partial = "/" in upload.key and upload.key.split("/", 1)[0] + "/" in partial_names
            owner = None if of_partial else _owner(upload.key)
            if owner is not None and owner[0] in live:
                report.skipped.append((f"upload of {upload.key}", "a live save holds its prefix"))
            elif upload.initiated > cutoff:
                report.skipped.append((f"upload of {upload.key}", f"younger than {older_than:g} s"))
            else:
                report.aborted_uploads.append(upload.key)
                if not dry_run:
                    await store.abort_upload(upload)
        return report

    return on_store(root, go, storage_options, options)
