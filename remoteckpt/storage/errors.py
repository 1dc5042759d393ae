"""Backend exceptions -> remoteckpt errors, in one place.

Messages carry the object's path or URL (never credentials or request parameters); the
backend's exception is chained as ``__cause__``.
"""

from __future__ import annotations

from ..errors import CheckpointError, CheckpointExistsError, CheckpointNotFoundError, StorageError


def translate(exc: BaseException, what: str) -> CheckpointError:
    """The remoteckpt error for `exc`, raised while operating on `what` (a path or URL)."""
    if isinstance(exc, CheckpointError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return CheckpointNotFoundError(f"{what}: no such file or object")
    if isinstance(exc, FileExistsError):
        return CheckpointExistsError(f"{what} already exists")
    if isinstance(exc, PermissionError):
        return StorageError(f"{what}: permission denied")
    return StorageError(f"{what}: {type(exc).__name__}: {_safe_message(exc)}")


def _safe_message(exc: BaseException) -> str:
    text = str(exc)
    # botocore messages can quote request parameters; keep the first line, bounded.
    return text.splitlines()[0][:300] if text else ""
