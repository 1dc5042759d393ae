"""Logging for the command line: ``-v`` levels, one handler on stderr, credentials filtered.

    (none)  warnings of remoteckpt's logger (e.g. "retrying (2/8)" when an endpoint does not answer)
    -v      + what each step did and how long it took (remoteckpt's INFO)
    -vv     + every S3 request with its answer and time (remoteckpt's DEBUG), botocore's INFO
            (where credentials were found)
    -vvv    + botocore's, aiobotocore's and s3fs's DEBUG (the wire: headers, parameters)

botocore's DEBUG output prints request headers and parameters: `Redact` blanks every
credential in them (Authorization, session tokens, SSE-C keys, presigned URL signatures, the
secret values of the AWS environment), whatever the level.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from typing import TextIO

_HEADER_NAMES = ("authorization", "x-amz-security-token", "x-amz-server-side-encryption-customer-key",
                 "x-amz-copy-source-server-side-encryption-customer-key", "ssecustomerkey", "copysourcessecustomerkey",
                 "aws_secret_access_key", "aws_session_token", "secretaccesskey", "sessiontoken", "secret", "token")
_FIELD = re.compile(
    r"(?i)(['\"]?(?:" + "|".join(re.escape(n) for n in _HEADER_NAMES) + r")['\"]?\s*[:=]\s*)"
    r"(b?'[^']*'|b?\"[^\"]*\"|[^\s,;}&)]+)")
_QUERY = re.compile(r"(?i)((?:X-Amz-(?:Signature|Credential|Security-Token)|Signature|AWSAccessKeyId)=)[^&\s'\"]+")
_SIGNATURE = re.compile(r"(?i)(Credential=|Signature=)[^,\s'\"]+")
_ENV_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_LIBRARIES = ("botocore", "aiobotocore", "s3fs")


class Redact(logging.Filter):
    """Blanks credentials in a record's message (never drops a record)."""

    def __init__(self) -> None:
        super().__init__()
        self._literals = sorted({v for n in _ENV_SECRETS if len(v := os.environ.get(n, "")) >= 8}, key=len,
                                reverse=True)

    def redact(self, text: str) -> str:
        text = _FIELD.sub(r"\1<redacted>", text)
        text = _QUERY.sub(r"\1<redacted>", text)
        text = _SIGNATURE.sub(r"\1<redacted>", text)
        for secret in self._literals:
            text = text.replace(secret, "<redacted>")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.name.startswith("botocore.auth") and "\n" in message:
            # the canonical request (session token included), the string to sign, the signature
            message = message.split("\n", 1)[0] + " <redacted>"
            record.msg, record.args = message, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def configure(verbosity: int, stream: TextIO | None = None) -> Callable[[], None]:
    """Send remoteckpt's log (and at -vv/-vvv botocore's) to `stream` (stderr) at the level
    `verbosity` (the number of ``-v``) asks for; returns what undoes it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(Redact())
    if verbosity <= 0:
        handler.setFormatter(logging.Formatter("remoteckpt: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    levels = {"remoteckpt": logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG}
    if verbosity >= 2:
        levels.update({name: logging.INFO if verbosity == 2 else logging.DEBUG for name in _LIBRARIES})
    before = {}
    for name, level in levels.items():
        logger = logging.getLogger(name)
        before[name] = (logger.level, logger.propagate)
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(level)

    def restore() -> None:
        for name, (level, propagate) in before.items():
            logger = logging.getLogger(name)
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate

    return restore
