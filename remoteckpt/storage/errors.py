"""Backend exceptions -> remoteckpt errors, in one place, classified by what the server said.

A store's answer is judged by its HTTP status and its S3 error code only, found wherever the
backend put them: a botocore ``ClientError``'s response, an s3fs ``OSError`` that chains one,
or this package's own `ResponseError` (the direct GET path).  Never by a substring of a
message: a key such as ``model.ckpt-4120.index`` must not make a timeout look like "412".

    status  code                          meaning here
    404     NoSuchKey / NoSuchUpload      gone (`is_not_found`, `is_no_such_upload`)
    409     ConditionalRequestConflict    a conditional write raced another: ask again
    412     PreconditionFailed            If-None-Match / If-Match not met
    416     InvalidRange                  the range starts at or past the end
    503     SlowDown                      too many requests: back off

Messages carry the object's path or URL (never credentials or request parameters), the S3
error code and the server's message; the backend's exception is chained as ``__cause__``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CheckpointError, CheckpointExistsError, CheckpointNotFoundError, StorageError


class ResponseError(Exception):
    """A non-2xx answer read by this package's own HTTP code: its status and S3 error code
    (never the URL)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}".strip())
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Answer:
    """What a server answered, as far as an exception tells: HTTP status and error code
    (either may be unknown), and the server's message."""

    status: int | None = None
    code: str = ""
    message: str = ""


def answer_of(exc: BaseException) -> Answer:
    """The server's answer behind `exc`, searched along its cause chain (s3fs raises an
    ``OSError`` whose cause is botocore's ``ClientError``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ResponseError):
            return Answer(current.status, current.code, current.message)
        response = getattr(current, "response", None)
        if isinstance(response, dict) and ("Error" in response or "ResponseMetadata" in response):
            error = response.get("Error") or {}
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if status is None and str(error.get("Code", "")).isdigit():
                status = int(error["Code"])  # HEAD errors have no body: botocore puts the status there
            return Answer(int(status) if status is not None else None, str(error.get("Code") or ""),
                          str(error.get("Message") or ""))
        current = current.__cause__ or current.__context__
    return Answer()


def is_precondition_failed(exc: BaseException) -> bool:
    answer = answer_of(exc)
    return answer.status == 412 or answer.code == "PreconditionFailed"


def is_conflict(exc: BaseException) -> bool:
    """409 ConditionalRequestConflict: a conditional write met another one in flight; AWS
    documents it as worth retrying."""
    answer = answer_of(exc)
    return answer.code == "ConditionalRequestConflict" or (answer.status == 409 and not answer.code)


def is_no_such_upload(exc: BaseException) -> bool:
    return answer_of(exc).code == "NoSuchUpload"


def is_invalid_range(exc: BaseException) -> bool:
    answer = answer_of(exc)
    return answer.status == 416 or answer.code == "InvalidRange"


def is_not_found(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    answer = answer_of(exc)
    return answer.status == 404 or answer.code in ("NoSuchKey", "NotFound", "NoSuchBucket")


def is_slow_down(exc: BaseException) -> bool:
    answer = answer_of(exc)
    return answer.code in ("SlowDown", "RequestLimitExceeded") or answer.status == 503


def translate(exc: BaseException, what: str) -> CheckpointError:
    """The remoteckpt error for `exc`, raised while operating on `what` (a path or URL)."""
    if isinstance(exc, CheckpointError):
        return exc
    answer = answer_of(exc)
    said = _said(answer)
    if answer.code == "NoSuchBucket":
        return CheckpointNotFoundError(f"{what}: no such bucket{said}")
    if is_not_found(exc):
        return CheckpointNotFoundError(f"{what}: no such file or object")
    if answer.status == 412 or isinstance(exc, FileExistsError):
        return CheckpointExistsError(f"{what} already exists")
    if answer.status == 403 or isinstance(exc, PermissionError):
        return StorageError(f"{what}: permission denied{said}")
    if is_slow_down(exc):
        return StorageError(f"{what}: the store kept asking to slow down{said}, after the retries the retry budget "
                            "allows (botocore's max_attempts and retry quota; storage_options={'config_kwargs': "
                            "{'retries': ...}} sets them)")
    if answer.status is not None:
        return StorageError(f"{what}:{said or f' HTTP {answer.status}'}")
    return StorageError(f"{what}: {type(exc).__name__}: {_safe_message(exc)}")


def _said(answer: Answer) -> str:
    """`` (AccessDenied, HTTP 403: Access Denied)``, or "" when the server said nothing."""
    if not answer.code and answer.status is None:
        return ""
    head = ", ".join(p for p in (answer.code, f"HTTP {answer.status}" if answer.status else "") if p)
    message = answer.message.splitlines()[0][:200] if answer.message else ""
    return f" ({head}{': ' + message if message else ''})"


def _safe_message(exc: BaseException) -> str:
    text = str(exc)
    # botocore messages can quote request parameters; keep the first line, bounded.
    return text.splitlines()[0][:300] if text else ""
