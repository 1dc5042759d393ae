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
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

import fsspec

from ..options import DEFAULT_OPTIONS, IOOptions
from .base import Store
from .fsspec_store import PART_SIZE, FsspecStore, S3Store
from .local import LocalStore

_S3_SCHEMES = ("s3", "s3a")


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
        in_flight = min(options.max_concurrency, max(1, options.memory_budget // part_size))
        fs = s3fs.S3FileSystem(asynchronous=True, skip_instance_cache=True, **_s3_options(storage))
        return S3Store(fs, rest, directory, part_size=part_size, parts_in_flight=in_flight)
    fs, root = fsspec.url_to_fs(directory, skip_instance_cache=True, **storage)
    return FsspecStore(fs, root, directory)
