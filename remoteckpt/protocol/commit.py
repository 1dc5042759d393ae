"""How a checkpoint's `.index` becomes visible: the commit, as a swappable protocol object.

The one rule: the index is written whole, create-only, in one step that either happens or
does not, and only after every byte it points to is durable and fenced (`fence`).  Replacing
a checkpoint (``overwrite=True``) first retires the old one, its index first, so the commit is
create-only there too.

`CreateOnlyCommit` (the default):
    local disk   write a temp file, fsync, ``link()`` to the final name (fails if it exists),
                 fsync the directory
    S3           one PUT with ``If-None-Match: *``
An error or timeout whose outcome is unknown (a lost acknowledgement) is settled by reading
the index back: only if it holds exactly our bytes did the commit happen.
"""

from __future__ import annotations

import abc

from .. import faults
from ..errors import CheckpointError, CheckpointExistsError
from ..storage.base import Store


class CommitProtocol(abc.ABC):
    """Makes `data` visible at `key`, atomically and create-only.  Called once per save, by
    the coordinator, after all data files are durable and fenced.  Raises
    `CheckpointExistsError` if anything is at `key`."""

    @abc.abstractmethod
    async def commit(self, store: Store, key: str, data: bytes) -> None: ...


class CreateOnlyCommit(CommitProtocol):
    async def commit(self, store: Store, key: str, data: bytes) -> None:
        try:
            with faults.within("committing"):
                await store.put(key, data, exclusive=True)
        except CheckpointError as exc:
            if await self._landed(store, key, data):
                return  # our own write, whose acknowledgement was lost
            if isinstance(exc, CheckpointExistsError):
                raise CheckpointExistsError.committed(store.describe(key)) from None
            raise

    @staticmethod
    async def _landed(store: Store, key: str, data: bytes) -> bool:
        try:
            return await store.get(key) == data
        except CheckpointError:
            return False


DEFAULT_COMMIT = CreateOnlyCommit()
