"""Deleting one committed checkpoint: its index first, so it stops existing at once, then its
data files and TensorFlow's ``.meta`` (a crash between leaves data without an index, which
`gc` removes, never an index over missing data).  Used by `Saver`'s retention and the local
tier's eviction."""

from __future__ import annotations

import re

from ..faults import crash_point
from ..format.bundle import index_filename
from ..storage import Store

_DATA_FILE = re.compile(r"\.data-\d{5,}-of-\d{5,}$")


async def delete_checkpoint(store: Store, name: str) -> list[str]:
    """Remove checkpoint `name`: its index first, then data files and TF's `.meta`."""
    removed = []
    if await store.exists(index_filename(name)):
        await store.delete(index_filename(name))
        removed.append(index_filename(name))
        crash_point("deleting")
    for key in await store.list(name + "."):
        rest = key[len(name):]
        if _DATA_FILE.fullmatch(rest) or rest == ".meta":
            await store.delete(key)
            removed.append(key)
    return removed
