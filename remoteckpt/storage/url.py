"""From a checkpoint prefix (path or URL) to the store holding it.

    /data/run/model.ckpt-100        LocalStore("/data/run"),   "model.ckpt-100"
    file:///data/run/model.ckpt     LocalStore("/data/run"),   "model.ckpt"
    s3://bucket/run/model.ckpt      S3Store(S3Client, "bucket/run"), "model.ckpt"
    memory://run/model.ckpt         FsspecStore(memory fs, "/run"), "model.ckpt"

For S3, endpoint and credentials come from `storage_options` (s3fs's arguments) or else from
the standard environment (botocore's chain; see `storage.s3.client`).  Options of
remoteckpt's own: ``part_size`` (bytes per multipart part, default 16 MiB, at least 5 MiB),
``retries`` (s3fs's retry loop, default off: botocore retries) and ``conditional_writes``
(``"trust"`` skips the probe of `S3Store.prepare_conditional_writes`).  The client is created
fresh (never from fsspec's instance cache) and asynchronous, on the calling loop.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import fsspec

from ..options import DEFAULT_OPTIONS, IOOptions
from .base import Store
from .errors import translate
from .fsspec_store import FsspecStore
from .local import LocalStore
from .s3 import PART_SIZE, S3Client, S3Store
from .s3.client import S3FS_RETRIES

T = TypeVar("T")

_S3_SCHEMES = ("s3", "s3a")

_PATH_SCHEMES = ("file", "local", "memory")
"""URL schemes whose first component is a directory like any other, not a bucket or a host."""

_CREDENTIAL_FIELDS = frozenset({"key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key",
                                "aws_session_token", "access_key", "secret_key", "session_token"})


def holds_credentials(storage_options: Any) -> bool:
    """Whether `storage_options` (nested dicts included) carry a credential: objects holding
    such options refuse to be pickled rather than carry a secret into a pickle."""
    if isinstance(storage_options, dict):
        return any((k in _CREDENTIAL_FIELDS and v) or holds_credentials(v) for k, v in storage_options.items())
    return False


def is_url_root(text: str) -> bool:
    """Whether `text` is a URL naming a bucket (or host) and nothing inside it:
    ``s3://bucket``, ``s3://bucket/``.  Such a URL can only be a directory."""
    if "://" not in text:
        return False
    scheme, rest = text.split("://", 1)
    return scheme not in _PATH_SCHEMES and "/" not in rest.rstrip("/")


def split_prefix(prefix: str | os.PathLike[str]) -> tuple[str, str]:
    """(directory, name) of a checkpoint prefix; the directory keeps its scheme.  A bucket
    alone (``s3://bucket``) is not a prefix: `ValueError` (it names a directory; see
    `remoteckpt.locate`)."""
    text = os.fspath(prefix)
    if "://" in text:
        if is_url_root(text):
            raise ValueError(f"{text} names a bucket, not a checkpoint in it "
                             f"(say {text.rstrip('/')}/NAME, or {text.rstrip('/')}/ for a directory)")
        scheme, rest = text.split("://", 1)
        head, name = posixpath.split(rest)
        return f"{scheme}://{head}", name
    head, name = os.path.split(os.path.abspath(text))
    return head, name


def open_store(directory: str, storage_options: dict[str, Any] | None = None,
               options: IOOptions = DEFAULT_OPTIONS) -> Store:
    """The store rooted at `directory` (a local path or any fsspec URL), sized by `options`.

    Call from the event loop that will use the store (async filesystems bind to it).
    """
    storage = dict(storage_options or {})
    if "://" not in directory:
        return LocalStore(directory)
    scheme, rest = directory.split("://", 1)
    if scheme == "file":
        return LocalStore(rest)
    if scheme in _S3_SCHEMES:
        part_size = int(storage.pop("part_size", PART_SIZE))
        retries = int(storage.pop("retries", S3FS_RETRIES))
        trust = storage.pop("conditional_writes", "probe") == "trust"
        in_flight = min(options.max_concurrency, max(1, options.memory_budget // part_size))
        endpoint = str(storage.get("endpoint_url") or (storage.get("client_kwargs") or {}).get("endpoint_url")
                       or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "")
        return S3Store(S3Client(storage, retries=retries), rest, directory, part_size=part_size,
                       parts_in_flight=in_flight, endpoint=endpoint, trust_conditional_writes=trust)
    try:
        fs, root = fsspec.url_to_fs(directory, skip_instance_cache=True, **storage)
    except ImportError as exc:  # fsspec knows the scheme; its package is missing
        raise ImportError(f"{directory}: {scheme}:// URLs need a package that is not installed ({exc})") from exc
    except ValueError as exc:
        if scheme not in fsspec.available_protocols():
            raise ValueError(f"{directory}: unknown URL scheme {scheme!r} (local paths, file://, s3:// and "
                             "fsspec's schemes work)") from exc
        raise
    except OSError as exc:  # a filesystem that connects when created (ftp, sftp, ...)
        raise translate(exc, directory) from exc
    return FsspecStore(fs, root, directory)


def on_store(directory: str, work: Callable[[Store], Awaitable[T]], storage_options: dict[str, Any] | None = None,
             options: IOOptions = DEFAULT_OPTIONS) -> T:
    """Open the store at `directory` on remoteckpt's loop, run ``work(store)``, close it, and
    return the result: the synchronous shell of every one-shot store operation."""
    from ..engine import loop

    async def go() -> T:
        store = open_store(directory, storage_options, options)
        try:
            return await work(store)
        finally:
            await store.close()

    return loop.run(go())
