"""How a checkpoint's `.index` becomes visible: the commit, as a swappable protocol object.

The one rule: the index is written whole, in one step that either happens or does not, and
only after every byte it points to is durable.

`CreateOnlyCommit` (the default) never replaces a committed checkpoint unless told to:
    local disk   write a temp file, fsync, ``link()`` to the final name (fails if it exists),
                 fsync the directory; with overwrite: ``rename()`` over it
    S3           one PUT with ``If-None-Match: *``; with overwrite: a plain PUT
An error or timeout whose outcome is unknown (a lost acknowledgement) is settled by reading
the index back: if it holds exactly our bytes, the commit happened.
"""

from __future__ import annotations

import abc

from .. import faults
from ..errors import CheckpointError, CheckpointExistsError, CheckpointNotFoundError
from ..storage.base import Store


class CommitProtocol(abc.ABC):
    """Makes `data` visible at `key`, atomically.  Called once per save, by the coordinator,
    after all data files are durable.  Raises `CheckpointExistsError` if a committed
    checkpoint is in the way (and `overwrite` is false)."""

    @abc.abstractmethod
    async def commit(self, store: Store, key: str, data: bytes, *, overwrite: bool) -> None: ...


class CreateOnlyCommit(CommitProtocol):
    async def commit(self, store: Store, key: str, data: bytes, *, overwrite: bool) -> None:
        try:
            with faults.within("committing"):
                await store.put(key, data, exclusive=not overwrite)
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
        except CheckpointNotFoundError:
            return False
        except CheckpointError:
            return False


DEFAULT_COMMIT = CreateOnlyCommit()
