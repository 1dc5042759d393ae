"""Presigned GET URLs for the direct reads (`direct`), signed cheaply.

    http(s)://HOST/BASE/KEY?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK/DATE/REGION/s3/aws4_request
                           &X-Amz-Date=...&X-Amz-Expires=...&X-Amz-SignedHeaders=host[&X-Amz-Security-Token=...]
                           &X-Amz-Signature=...

botocore's ``generate_presigned_url`` costs about 0.16 ms of CPU per URL on this kind of machine
(measured alone; several times that in a loaded coordinator): most of it resolves the endpoint
(its rules engine) and serialises the request, the same for every key of a bucket.
A coordinator fetching thousands of small reports, each its own key, spends more CPU there
than on the requests themselves.  So the first URL of a bucket is botocore's, and gives the
endpoint, the addressing style (``/bucket/KEY`` or a virtual host) and the credential scope;
later URLs of that bucket are the same base with another key, signed by botocore's own S3
SigV4 query signer (`botocore.auth.S3SigV4QueryAuth`) with the client's current credentials:
about 60 microseconds each.

The cheap path is taken only where the first URL has exactly the form above (SigV4, the host
header alone signed, no other parameter) and the client's credentials are the ones its scope
names; anything else (another signature version, unsigned access, extra parameters) keeps
botocore's path for every URL.  A read whose cheaply signed URL the store refuses with 403 is
asked again with botocore's URL; if that one is taken, the cheap path is off for good
(`refused`), else the refusal was the key's own (access denied) and is reported as such.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any

from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest

from .client import frozen_credentials

log = logging.getLogger("remoteckpt")

EXPECTED_PARAMETERS = frozenset({"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                                 "X-Amz-SignedHeaders", "X-Amz-Signature"})
"""The query of a plain SigV4 presigned GET (plus ``X-Amz-Security-Token`` with temporary
credentials): a first URL with anything else keeps botocore's path."""


def quote_key(key: str) -> str:
    """A key as botocore puts it in an S3 URL's path (UTF-8, everything but ``/~`` and the
    unreserved characters percent-encoded)."""
    return urllib.parse.quote(key, safe="/~")


class Presigner:
    """Presigned GET URLs of `client`'s objects (see the module docstring)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._bases: dict[str, tuple[str, str] | None] = {}  # bucket: (URL up to the key, region) or None
        self.cheap = True

    async def url(self, bucket: str, key: str, expires: int, *, botocore: bool = False) -> tuple[str, bool]:
        """A presigned GET URL of `key` valid for `expires` seconds (by botocore's client if
        `botocore`), and whether it was signed the cheap way."""
        base = self._bases.get(bucket) if self.cheap and not botocore else None
        if base is not None:
            signed = await self._sign(base, key, expires)
            if signed is not None:
                return signed, True
        text = await self._client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)
        if self.cheap and bucket not in self._bases:
            self._bases[bucket] = await self._base_of(text, key)
        return text, False

    def refused(self) -> None:
        """A cheaply signed URL was refused where botocore's URL of the same key was not:
        botocore signs every URL from now on."""
        if self.cheap:
            self.cheap = False
            log.warning("S3: a presigned URL signed without botocore's client was refused (403); "
                        "signing every read through botocore from now on")

    async def _credentials(self) -> Any:
        return await frozen_credentials(self._client)

    async def _base_of(self, text: str, key: str) -> tuple[str, str] | None:
        url = urllib.parse.urlsplit(text)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        names = set(query) - {"X-Amz-Security-Token"}
        quoted = quote_key(key)
        if (names != EXPECTED_PARAMETERS or query["X-Amz-Algorithm"] != ["AWS4-HMAC-SHA256"]
                or query["X-Amz-SignedHeaders"] != ["host"] or not url.path.endswith(quoted) or url.fragment):
            return None
        scope = query["X-Amz-Credential"][0].split("/")
        frozen = await self._credentials()
        if len(scope) != 5 or scope[3] != "s3" or frozen is None or frozen.access_key != scope[0]:
            return None
        if ("X-Amz-Security-Token" in query) != bool(frozen.token):
            return None
        return f"{url.scheme}://{url.netloc}{url.path[: len(url.path) - len(quoted)]}", scope[2]

    async def _sign(self, base: tuple[str, str], key: str, expires: int) -> str | None:
        frozen = await self._credentials()
        if frozen is None:
            return None
        request = AWSRequest(method="GET", url=base[0] + quote_key(key))
        S3SigV4QueryAuth(frozen, "s3", base[1], expires=expires).add_auth(request)
        return str(request.url)
