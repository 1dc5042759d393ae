"""SavedModel directories and the numbered versions of a base directory (TensorFlow Serving's
layout), without TensorFlow.

    BASE/
      1/saved_model.pb            complete: its saved_model.pb exists
      1/fingerprint.pb
      1/assets/vocab.txt
      1/variables/variables.index          a tensor bundle (a checkpoint like any other)
      1/variables/variables.data-00000-of-00001
      2/...                       complete
      3/variables/...             partial: files, no saved_model.pb (an export that died,
                                  or one still running); its number is never used again

One version is written in this order, by `export_saved_model` and by `cp` alike: the variables
bundle (committed by its index, create-only), the assets, ``fingerprint.pb``, and
``saved_model.pb`` last, create-only.  So a version is complete exactly when its
``saved_model.pb`` exists, and every file it names is there by then.  Retiring a version
deletes its ``saved_model.pb`` first: from that moment it is partial, never half-complete.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from ..format.bundle import index_filename
from ..storage import ObjectInfo, Store

SAVED_MODEL_PB = "saved_model.pb"
FINGERPRINT_PB = "fingerprint.pb"
VARIABLES_PREFIX = "variables/variables"
"""The variables bundle's prefix inside a SavedModel directory (TensorFlow's name)."""
ASSETS_DIR = "assets"
_LAYOUT = re.compile(r"^(saved_model\.pb|fingerprint\.pb|variables/.+|assets/.+|assets\.extra/.+)$")
"""Keys a SavedModel directory holds (``saved_model.pbtxt`` and TF1's chunked ``.cpb`` are not
written by remoteckpt; a directory holding only those is not taken for a version)."""
_NUMBER = re.compile(r"^\d+$")


def version_key(number: int, key: str) -> str:
    return f"{number}/{key}"


@dataclass(frozen=True)
class VersionInfo:
    """One numbered directory of a base directory that holds SavedModel files: complete or
    partial, its bytes and newest modification time, and its keys (relative to the base)."""

    number: int
    complete: bool
    bytes: int
    mtime: float
    keys: tuple[str, ...]

    @property
    def name(self) -> str:
        return str(self.number)


def group_versions(infos: list[ObjectInfo]) -> dict[int, VersionInfo]:
    """The versions among `infos` (a base directory's objects, keys relative to it): numbered
    sub-directories holding SavedModel files (`_LAYOUT`), by number.  A numbered directory
    holding anything else only (a directory-style checkpoint ``100/ckpt.index``) is not one."""
    found: dict[int, list[ObjectInfo]] = {}
    for info in infos:
        top, _, rest = info.key.partition("/")
        if rest and _NUMBER.match(top) and _LAYOUT.match(rest):
            found.setdefault(int(top), []).append(info)
    return {n: VersionInfo(n, any(i.key == version_key(n, SAVED_MODEL_PB) for i in items),
                           sum(i.size for i in items), max(i.mtime for i in items),
                           tuple(sorted(i.key for i in items)))
            for n, items in sorted(found.items())}


async def scan_versions(store: Store) -> dict[int, VersionInfo]:
    """The versions of the base directory at the store's root (one listing of its tree)."""
    return group_versions(await store.list_info())


def complete_versions(versions: dict[int, VersionInfo]) -> list[VersionInfo]:
    """The complete versions, oldest (lowest number) first."""
    return [v for _, v in sorted(versions.items()) if v.complete]


def next_version(versions: dict[int, VersionInfo]) -> int:
    """The number a new export takes: one more than every number seen, complete or partial
    (a partial version may be an export still running, or the leftovers of one that died:
    its number is not taken while its files exist; once `gc` has removed them it is free
    again, never having been complete), starting at 1.  Retired versions are older than a
    complete one that stays, so a number once complete is never taken again."""
    return max(versions, default=0) + 1


async def is_saved_model(store: Store) -> bool:
    """Whether the store's root is a complete SavedModel directory."""
    return await store.exists(SAVED_MODEL_PB)


async def retire(store: Store, version: VersionInfo) -> list[str]:
    """Delete a version: its ``saved_model.pb`` first (from then on it is partial and nothing
    loads it), then the variables' index (the checkpoint stops existing at once, as a Saver
    retires one), then every other file (an asset named ``*.index`` among them)."""
    order = deletion_order(version.keys)
    first = [k for k in order if _is_saved_model_pb(k) or _is_variables_index(k)]
    for key in first:
        await store.delete(key)
    await asyncio.gather(*(store.delete(k) for k in order if k not in first))
    return order


def _is_saved_model_pb(key: str) -> bool:
    return key == SAVED_MODEL_PB or key.endswith("/" + SAVED_MODEL_PB)


def _is_variables_index(key: str) -> bool:
    name = index_filename(VARIABLES_PREFIX)
    return key == name or key.endswith("/" + name)


def deletion_order(keys: tuple[str, ...] | list[str]) -> list[str]:
    """A version's keys in the order they are deleted: ``saved_model.pb``, the variables'
    index, then the rest."""
    return sorted(keys, key=lambda k: (not _is_saved_model_pb(k), not _is_variables_index(k), k))
