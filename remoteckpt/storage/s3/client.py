"""The S3 client layer: configuration, sessions and calls, for the S3 store's reads and writes.

This is the only module that touches the internals of s3fs and aiobotocore (s3fs's
``_call_s3``, ``set_session``, its client holder; a client's credentials, for `presign`,
through `frozen_credentials`): the version ranges it was tested with are
declared in ``pyproject.toml``.  Everything else calls `S3Client.call` with botocore's
operation names and parameters, and classifies failures with `storage.errors` (by HTTP status
and S3 error code).

Configuration: endpoint and credentials come from `storage_options` (s3fs's arguments) or
else from the standard environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, profiles, instance roles: botocore's chain).  Requests have bounded
timeouts and are retried with backoff by botocore (`S3_CONFIG_DEFAULTS`, overridable with
``storage_options={"config_kwargs": {...}}``; ``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE`` in the
environment win).  A conditional write answered ``409 ConditionalRequestConflict`` (another
conditional write of the key in flight) is asked again here, as AWS documents.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import hashlib
import logging
import os
import random
import time
import weakref
from typing import Any

from ..errors import answer_of, is_conflict
from .pacing import Pacer

log = logging.getLogger("remoteckpt")

S3_CONFIG_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 10,
    "read_timeout": 30,
    "retries": {"max_attempts": 8, "mode": "standard"},  # 8 retries: 9 requests at most
    # Connections per client (botocore's default is 10): a save keeps up to 16 parts in flight
    # (the default budget over the part size) and a coordinator 64 small requests (reports,
    # notices, deletes); at 10, a 4,096-rank coordinator fetched its reports 10 at a time.
    "max_pool_connections": 64,
    # SigV4 for presigned URLs too (ranged GETs, `direct`); botocore would presign with the
    # legacy SigV2 for some endpoints, which newer AWS regions refuse.
    "signature_version": "s3v4",
}
"""botocore `Config` defaults for S3: bounded timeouts, retries with backoff (copied into each
client's configuration: botocore rewrites the ``retries`` dict it is given)."""

MAX_RETRIES = 8

S3FS_RETRIES = 1
"""s3fs's own retry loop around each call (``S3FileSystem.retries``), on top of botocore's:
off (one call), because botocore already retries, and s3fs's loop would re-send a streamed
part from wherever the failed attempt left its file position."""

CONFLICT_ATTEMPTS = 6
"""Times a conditional write answered 409 ConditionalRequestConflict is sent in all: the
conflicting write settles within milliseconds, after which ours gets a real answer."""

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
        session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_timestamp)
    return session


async def frozen_credentials(client: Any) -> Any:
    """The credentials `client` signs with now (botocore's ``ReadOnlyCredentials``: access
    key, secret key, token; refreshed first if they are about to expire), or None if the
    client has none (unsigned access) or keeps them where this version does not look."""
    credentials = getattr(getattr(client, "_request_signer", None), "_credentials", None)
    if credentials is None:
        return None
    frozen = credentials.get_frozen_credentials()
    return await frozen if hasattr(frozen, "__await__") else frozen


def parse_timestamp(value: Any) -> datetime.datetime:
    """A timestamp of an S3 answer: ISO 8601 (a listing's ``LastModified``, one per key) by the
    standard library, anything else (HTTP dates of headers, epoch numbers) by botocore.
    botocore's own parser goes through dateutil for every one, about 0.1 ms each: at a
    thousand keys a page, the larger part of the CPU a coordinator spends on its listings."""
    if isinstance(value, str) and len(value) >= 20 and value[10] == "T":
        try:
            parsed = datetime.datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=datetime.timezone.utc)
    from botocore.utils import parse_timestamp as botocore_parse

    return botocore_parse(value)


def s3fs_options(options: dict[str, Any]) -> dict[str, Any]:
    """s3fs's constructor arguments for `options`, with remoteckpt's defaults filled in."""
    opts = dict(options)
    client_kwargs = dict(opts.pop("client_kwargs", None) or {})
    endpoint = (opts.pop("endpoint_url", None) or client_kwargs.get("endpoint_url")
                or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
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
        config.setdefault(name, copy.deepcopy(value))
    opts["config_kwargs"] = config
    # Workers meet through listings: a cached listing would hide a key another process just wrote.
    opts.setdefault("use_listings_cache", False)
    return opts


_RETRIED_CODES = frozenset({"SlowDown", "RequestLimitExceeded", "Throttling", "ThrottlingException",
                            "RequestThrottled", "RequestTimeout", "RequestTimeoutException", "InternalError",
                            "PriorRequestNotComplete", "TooManyRequestsException"})
"""S3 error codes botocore's standard retry mode retries (besides 5xx and 429)."""


def total_attempts(client: Any) -> int:
    """Requests botocore sends in all for one call of `client` (the first one and its retries)."""
    retries = getattr(client.meta.config, "retries", None) or {}
    # botocore's meaning: total_max_attempts counts the first request, max_attempts does not
    return max(1, int(retries.get("total_max_attempts") or 1 + int(retries.get("max_attempts", 4))))


def _retried_exception(exc: BaseException) -> bool:
    """Whether botocore's standard mode retries a request that failed with `exc` (no answer)."""
    from botocore.exceptions import ConnectionError, HTTPClientError

    return isinstance(exc, (ConnectionError, HTTPClientError))


def _no_answer(exc: BaseException) -> str:
    """What went wrong with a request that got no answer, in one short line (the endpoint,
    never a query string)."""
    import urllib.parse

    url = str(getattr(exc, "kwargs", {}).get("endpoint_url") or "")
    if url:
        parts = urllib.parse.urlsplit(url)
        return f"no connection to {parts.scheme}://{parts.netloc} ({type(exc).__name__})"
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _target(params: dict[str, Any]) -> str:
    """``bucket/key`` of a request, for logs: never any other parameter (SSE-C keys, ...)."""
    return "/".join(str(params[k]) for k in ("Bucket", "Key", "Prefix") if params.get(k))


def quoted(etag: str) -> str:
    """An etag as an ``If-Match`` header carries it."""
    return etag if etag.startswith('"') else f'"{etag}"'


class S3Client:
    """One S3 client (an s3fs filesystem underneath), bound to the event loop it is made on."""

    def __init__(self, storage_options: dict[str, Any], *, retries: int = S3FS_RETRIES) -> None:
        import s3fs

        self._fs = s3fs.S3FileSystem(asynchronous=True, skip_instance_cache=True, **s3fs_options(storage_options))
        self._fs.retries = max(1, retries)
        if self._fs.session is None:
            self._fs.session = _shared_session(self._fs.kwargs)  # what s3fs would create, shared
        self.pacer = Pacer()
        self._watched: set[int] = set()
        self._attempts = 1 + MAX_RETRIES

    @property
    def request_parameters(self) -> dict[str, Any]:
        """Parameters added to every request (``s3_additional_kwargs``, requester pays): SSE-C
        keys, RequestPayer, ExpectedBucketOwner, ..."""
        return {**dict(self._fs.s3_additional_kwargs or {}), **dict(getattr(self._fs, "req_kw", None) or {})}

    @property
    def verify(self) -> bool | str | None:
        """The TLS verification setting (False, a CA bundle path, or None for the default)."""
        value = self._fs.client_kwargs.get("verify")
        return value if isinstance(value, (bool, str)) else None

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """Run botocore operation `operation` (``"put_object"``, ...).  Failures are raised as
        the backend raises them (classify them with `storage.errors`); a 409
        ConditionalRequestConflict is asked again with jittered backoff."""
        await self.botocore_client()
        for attempt in range(CONFLICT_ATTEMPTS):
            start = time.monotonic()
            try:
                async with self.pacer:
                    result: dict[str, Any] = await self._fs._call_s3(operation, **params)
                self.pacer.succeeded()
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("S3 %s %s: %s, %.3f s", operation, _target(params),
                              (result.get("ResponseMetadata") or {}).get("HTTPStatusCode", "ok"),
                              time.monotonic() - start)
                return result
            except Exception as exc:
                if log.isEnabledFor(logging.DEBUG):
                    answer = answer_of(exc)
                    log.debug("S3 %s %s: %s, %.3f s", operation, _target(params),
                              " ".join(dict.fromkeys(str(p) for p in (answer.status, answer.code) if p))
                              or type(exc).__name__,
                              time.monotonic() - start)
                if not is_conflict(exc) or attempt + 1 == CONFLICT_ATTEMPTS:
                    raise
                if hasattr(params.get("Body"), "seek"):
                    params["Body"].seek(0)
                await asyncio.sleep(min(1.0, 0.02 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    async def botocore_client(self) -> Any:
        """The underlying aiobotocore client (to presign URLs, and read its configuration),
        its retries watched by the pacer."""
        client = await self._fs.set_session()
        if id(client) not in self._watched:
            self._watched.add(id(client))
            self._attempts = total_attempts(client)
            client.meta.events.register("needs-retry.s3", self._saw_answer)
        return client

    def _saw_answer(self, response: Any = None, attempts: int = 1, caught_exception: Any = None,
                    operation: Any = None, **_: Any) -> None:
        """botocore's retry hook: every answer (or connection failure) it may retry passes here
        first (returns None: botocore decides).  SlowDowns brake the pacer; what botocore
        will retry is logged: a failed connection as a warning (an endpoint that does not answer
        otherwise costs a minute of silence), an answer worth retrying at info level."""
        name = getattr(operation, "name", "request")
        if caught_exception is not None:
            if attempts < self._attempts and _retried_exception(caught_exception):
                log.warning("S3 %s: %s; retrying (%d/%d)", name, _no_answer(caught_exception), attempts,
                            self._attempts - 1)
            return None
        if response is None:
            return None
        http, parsed = response
        code = (parsed or {}).get("Error", {}).get("Code") if isinstance(parsed, dict) else None
        status = getattr(http, "status_code", 0)
        if code in ("SlowDown", "RequestLimitExceeded") or status == 503:
            self.pacer.slow_down()
        if attempts < self._attempts and (status >= 500 or status == 429 or code in _RETRIED_CODES):
            log.info("S3 %s: HTTP %s%s; retrying (%d/%d)", name, status, f" {code}" if code else "", attempts,
                     self._attempts - 1)
        return None

    async def close(self) -> None:
        creator = getattr(self._fs, "_s3creator", None)  # s3fs's client holder
        if creator is not None:
            self._fs._s3creator = None
            await creator.__aexit__(None, None, None)

    def __reduce__(self) -> Any:
        # s3fs filesystems pickle their constructor arguments, credentials included.
        raise TypeError("an S3 client cannot be pickled: it holds connections and credentials")
