"""S3 and S3-compatible object stores.

    client.py    S3Client: configuration, sessions, calls (the only module touching s3fs's and
                 aiobotocore's internals)
    store.py     S3Store: heads, listings, deletes, the conditional-write probe
    reads.py     ranged GETs into the caller's buffers, resumed and pinned to one version
    direct.py    the HTTP path those GETs take where they can: the socket writes the body
                 straight into the targets
    uploads.py   S3Writer: single PUT or multipart upload, create-only or If-Match
    body.py      PartBody: a request body made of views of the caller's buffers
"""

from .client import S3Client
from .store import S3Store
from .uploads import MIN_PART_SIZE, PART_SIZE

__all__ = ["MIN_PART_SIZE", "PART_SIZE", "S3Client", "S3Store"]
