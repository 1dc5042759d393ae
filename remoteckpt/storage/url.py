"""From a checkpoint prefix (path or URL) to the store holding it.

    /data/run/model.ckpt-100        LocalStore("/data/run"),   "model.ckpt-100"
    file:///data/run/model.ckpt     LocalStore("/data/run"),   "model.ckpt"
    s3://bucket/run/model.ckpt      S3Store(s3fs, "bucket/run"), "model.ckpt"
    memory://run/model.ckpt         FsspecStore(memory fs, "/run"), "model.ckpt"

For S3, endpoint and credentials come from `storage_options` (s3fs's arguments) or else from
the standard environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, profiles, instance roles: botocore's chain).  One option is
remoteckpt's own: ``part_size`` (bytes per multipart part, default 16 MiB, at least 5 MiB).  The filesystem is
created fresh (never from fsspec's instance cache) and asynchronous, on the calling loop.

Requests have bounded timeouts and are retried with backoff (`S3_CONFIG_DEFAULTS`, overridable
with ``storage_options={"config_kwargs": {...}}``; ``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE`` in
the environment are respected).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import fsspec

from ..options import DEFAULT_OPTIONS, IOOptions
from .base import Store
from .fsspec_store import FsspecStore
from .local import LocalStore
from .s3_store import S3Store
from .s3_upload import PART_SIZE

T = TypeVar("T")

_S3_SCHEMES = ("s3", "s3a")

S3_CONFIG_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 10,
    "read_timeout": 30,
    "retries": {"max_attempts": 8, "mode": "standard"},
    # SigV4 for presigned URLs too (ranged GETs, `s3_get`); botocore would presign with the
    # legacy SigV2 for some endpoints, which newer AWS regions refuse.
    "signature_version": "s3v4",
}
"""botocore `Config` defaults for S3 (each overridable through ``storage_options={"config_kwargs":
{...}}``): bounded timeouts, retries with backoff."""

S3FS_RETRIES = 1
"""s3fs's own retry loop around each call (``S3FileSystem.retries``), on top of botocore's:
off (one call), because botocore already retries, and s3fs's loop would re-send a streamed
part from wherever the failed attempt left its file position.  ``storage_options={"retries":
N}`` sets it."""


_SESSION_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_DEFAULT_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONFIG_FILE",
                "AWS_SHARED_CREDENTIALS_FILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")
_sessions: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Any]]" = \
    weakref.WeakKeyDictionary()


def _shared_session(session_kwargs: dict[str, Any]) -> Any:
    """One aiobotocore session per event loop (and AWS environment, and session arguments),
    shared by the stores opened on it: a session parses botocore's S3 model once (~0.1 s of
    CPU), and caches the credentials it resolved.  None when not called on a running loop."""
    try:
        running = asyncio.get_running_loop()
        key = (os.getpid(), hashlib.sha256(repr([os.environ.get(n) for n in _SESSION_ENV]).encode()).digest(),
               tuple(sorted(session_kwargs.items())))
        hash(key)
    except (RuntimeError, TypeError):
        return None
    import aiobotocore.session

    per_loop = _sessions.setdefault(running, {})
    session = per_loop.get(key)
    if session is None:
        session = per_loop[key] = aiobotocore.session.AioSession(**session_kwargs)
    return session


_CREDENTIAL_FIELDS = frozenset({"key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key",
                                "aws_session_token", "access_key", "secret_key", "session_token"})


def holds_credentials(storage_options: Any) -> bool:
    """Whether `storage_options` (nested dicts included) carry a credential: objects holding
    such options refuse to be pickled rather than carry a secret into a pickle."""
    if isinstance(storage_options, dict):
        return any((k in _CREDENTIAL_FIELDS and v) or holds_credentials(v) for k, v in storage_options.items())
    return False


def split_prefix(prefix: str | os.PathLike[str]) -> tuple[str, str]:
    """(directory, name) of a checkpoint prefix; the directory keeps its scheme."""
    text = os.fspath(prefix)
    if "://" in text:
        scheme, rest = text.split("://", 1)
        head, name = posixpath.split(rest)
        return f"{scheme}://{head}", name
    head, name = os.path.split(os.path.abspath(text))
    return head, name


def _s3_options(options: dict[str, Any]) -> dict[str, Any]:
    opts = dict(options)
    client_kwargs = dict(opts.pop("client_kwargs", None) or {})
    endpoint = opts.pop("endpoint_url", None) or client_kwargs.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if os.environ.get("AWS_DEFAULT_REGION") is None and "region_name" not in client_kwargs and endpoint:
        client_kwargs["region_name"] = "us-east-1"
    opts["client_kwargs"] = client_kwargs
    config = dict(opts.pop("config_kwargs", None) or {})
    # botocore >= 1.36 adds checksum headers by default that S3-compatible stores may reject;
    # remoteckpt checks its own CRC32C end to end.
    config.setdefault("request_checksum_calculation", "when_required")
    config.setdefault("response_checksum_validation", "when_required")
    # Bounded waits and retries with backoff: a dead or stalled endpoint fails a request in
    # connect_timeout / read_timeout (seconds without a byte), and transient failures
    # (connection cut or refused, timeouts, 5xx, SlowDown) are retried up to max_attempts
    # with exponential backoff and jitter (botocore's "standard" mode, which also keeps a
    # retry budget per client so that an outage is not hammered).
    for name, value in S3_CONFIG_DEFAULTS.items():
        if name == "retries" and (os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE")):
            continue  # the user's own AWS retry configuration wins
        config.setdefault(name, value)
    opts["config_kwargs"] = config
    # Workers meet through listings: a cached listing would hide a key another process just
    # wrote (and s3fs's `info` answers from that cache).
    opts.setdefault("use_listings_cache", False)
    return opts


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
        import s3fs

        part_size = storage.pop("part_size", PART_SIZE)
        retries = int(storage.pop("retries", S3FS_RETRIES))
        in_flight = min(options.max_concurrency, max(1, options.memory_budget // part_size))
        fs = s3fs.S3FileSystem(asynchronous=True, skip_instance_cache=True, **_s3_options(storage))
        fs.retries = max(1, retries)
        if fs.session is None:
            fs.session = _shared_session(fs.kwargs)  # what s3fs would create, shared
        return S3Store(fs, rest, directory, part_size=part_size, parts_in_flight=in_flight)
    fs, root = fsspec.url_to_fs(directory, skip_instance_cache=True, **storage)
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
