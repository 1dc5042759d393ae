"""Fencing: only the data files this attempt's workers wrote go under its index.

Every worker writes its data file create-only and reports which version it wrote (size and
etag, `records.DataIdentity`).  Immediately before the commit the coordinator lists the data
files once (one request per thousand files) and compares: a file replaced meanwhile (by a
worker of an older attempt that was paused and woke up, a "zombie") fails the save instead of
going under the index.  After the commit every data file exists, so a zombie's create-only
write can no longer land.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import SaveFailedError
from ..storage.base import Store
from .records import DataIdentity


async def check_data_files(store: Store, data_prefix: str, expected: Sequence[DataIdentity]) -> None:
    """Raise `SaveFailedError` unless every file of `expected` is there, in that version."""
    found = {info.key: info for info in await store.list_info(data_prefix)}
    wrong = []
    for identity in expected:
        info = found.get(identity.key)
        if info is None:
            wrong.append(f"{store.describe(identity.key)} is gone")
        elif info.size != identity.size or info.etag != identity.etag:
            wrong.append(f"{store.describe(identity.key)} is not the version its worker wrote "
                         f"({info.size} bytes, etag {info.etag!r}; written: {identity.size} bytes, "
                         f"etag {identity.etag!r})")
    if wrong:
        raise SaveFailedError("not committed: a data file changed after its worker wrote it (a writer of an "
                              "older attempt of this save woke up?): " + "; ".join(wrong[:5])
                              + (f" (and {len(wrong) - 5} more)" if len(wrong) > 5 else ""))
