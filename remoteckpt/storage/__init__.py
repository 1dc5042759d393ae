"""Where bytes live: one async `Store` interface, a local-disk and an fsspec backend.

`open_store(prefix, storage_options)` turns a checkpoint prefix (a path or URL) into the store
of its directory and the prefix's name inside it.
"""

from .base import ByteRange, ObjectInfo, ObjectWriter, PendingUpload, Store, StoreCapabilities
from .url import on_store, open_store, split_prefix

__all__ = ["ByteRange", "ObjectInfo", "ObjectWriter", "PendingUpload", "Store", "StoreCapabilities", "on_store",
           "open_store", "split_prefix"]
