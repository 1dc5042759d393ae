"""Store failures are classified by HTTP status and S3 error code, never by message text."""

from __future__ import annotations

import botocore.exceptions
import pytest

from remoteckpt.errors import CheckpointExistsError, CheckpointNotFoundError, StorageError
from remoteckpt.storage import errors


def client_error(status: int, code: str, message: str = "") -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def as_s3fs(exc: BaseException) -> OSError:
    """How s3fs raises a ClientError: an OSError whose cause is the original."""
    wrapped = OSError(5, str(exc))
    wrapped.__cause__ = exc
    return wrapped


def test_numbers_in_keys_and_messages_are_not_answers() -> None:
    timeout = TimeoutError("Read timeout on endpoint URL: http://s3/b/model.ckpt-4120.index")
    assert not errors.is_precondition_failed(timeout)
    assert type(errors.translate(timeout, "s3://b/model.ckpt-4120.index")) is StorageError
    cut = ConnectionError("Connection reset while reading s3://b/step-416/x.data-00000-of-00001")
    assert not errors.is_invalid_range(cut)
    assert not errors.is_no_such_upload(OSError("NoSuchUpload in the key name"))


@pytest.mark.parametrize("wrap", [lambda e: e, as_s3fs], ids=["botocore", "s3fs"])
def test_answers_are_found_along_the_cause_chain(wrap: object) -> None:
    assert errors.is_precondition_failed(wrap(client_error(412, "PreconditionFailed")))  # type: ignore[operator]
    assert errors.is_conflict(wrap(client_error(409, "ConditionalRequestConflict")))  # type: ignore[operator]
    assert not errors.is_conflict(wrap(client_error(409, "BucketAlreadyExists")))  # type: ignore[operator]
    assert errors.is_no_such_upload(wrap(client_error(404, "NoSuchUpload")))  # type: ignore[operator]
    assert errors.is_invalid_range(wrap(client_error(416, "InvalidRange")))  # type: ignore[operator]
    assert errors.is_slow_down(wrap(client_error(503, "SlowDown")))  # type: ignore[operator]


def test_translated_messages_keep_the_servers_code_and_message() -> None:
    denied = errors.translate(as_s3fs(client_error(403, "SignatureDoesNotMatch", "The signature we calculated...")),
                              "s3://b/run/x.index")
    assert isinstance(denied, StorageError)
    assert "s3://b/run/x.index: permission denied (SignatureDoesNotMatch, HTTP 403: The signature" in str(denied)
    assert isinstance(errors.translate(client_error(404, "NoSuchKey"), "k"), CheckpointNotFoundError)
    assert "no such bucket" in str(errors.translate(client_error(404, "NoSuchBucket"), "s3://nope/x"))
    assert isinstance(errors.translate(client_error(412, "PreconditionFailed"), "k"), CheckpointExistsError)
    teapot = errors.translate(client_error(418, "Teapot", "short and stout"), "k")
    assert str(teapot) == "k: (Teapot, HTTP 418: short and stout)"
