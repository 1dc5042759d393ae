"""The small objects workers of one save exchange through storage, and their bytes.

    claim     JSON  {"save_id", "world_size", "attempt", "host", "pid", "lease", "beat"}
                    "lease": the holder's lease timeout in seconds (how long an observer
                    watches before judging it dead); "beat" counts renewals (each renewal
                    is a new version)
    notice    JSON  {"save_id", "world_size", "attempt", "state", "error"?}
                    state "writing", then "committed" or "failed" (with the error every
                    rank raises)
    report    one JSON line, then the worker's table (a TensorFlow index of its entries):
                    {"attempt", "rank", "state": "ready", "data": {"key", "size", "etag"}}
                    {"attempt", "rank", "state": "failed", "error": {"type", "message"}}

Decoders return None for bytes that are not such a record (a half-written or foreign object):
a reader treats that as "not there yet", never as a crash.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .. import errors as _errors

MAX_RECORD_BYTES = 64 * 1024
"""Claims and notices are a few hundred bytes: anything larger is not one (bounded reads)."""

MIN_LEASE, MAX_LEASE = 0.05, 3600.0
"""Bounds on the lease timeout a claim states: an observer never watches a claim (junk
included) for longer than an hour, nor for less than a few milliseconds."""


@dataclass(frozen=True, kw_only=True)
class Failure:
    """An error as every rank of a save raises it: its class name and message."""

    type: str
    message: str

    @classmethod
    def of(cls, exc: BaseException, *, rank: int | None = None) -> Failure:
        """`exc` as raised on worker `rank` (named in the message, unless it is already about
        the whole save: a `SaveFailedError`)."""
        where = f"worker {rank}: " if rank is not None and not isinstance(exc, _errors.SaveFailedError) else ""
        text = str(exc) if isinstance(exc, _errors.CheckpointError) else f"{type(exc).__name__}: {exc}"
        return cls(type=type(exc).__name__, message=where + text)

    def error(self) -> _errors.CheckpointError:
        """The error to raise: the same remoteckpt class, else `SaveFailedError`."""
        cls = getattr(_errors, self.type, None)
        if isinstance(cls, type) and issubclass(cls, _errors.CheckpointError):
            return cls(self.message)
        return _errors.SaveFailedError(self.message)


def _failure(raw: Any) -> Failure | None:
    if not isinstance(raw, dict):
        return None
    return Failure(type=str(raw.get("type", "SaveFailedError")), message=str(raw.get("message", "")))


@dataclass(frozen=True, kw_only=True)
class ClaimRecord:
    save_id: str
    world_size: int
    attempt: str
    host: str = ""
    pid: int = 0
    lease: float = 30.0
    beat: int = 0

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> ClaimRecord | None:
        try:
            raw = json.loads(data)
            return cls(save_id=str(raw["save_id"]), world_size=int(raw["world_size"]), attempt=str(raw["attempt"]),
                       host=str(raw.get("host", "")), pid=int(raw.get("pid", 0)),
                       lease=min(MAX_LEASE, max(MIN_LEASE, float(raw.get("lease", MAX_LEASE)))),
                       beat=int(raw.get("beat", 0)))
        except (ValueError, TypeError, KeyError):
            return None

    def renewed(self) -> ClaimRecord:
        return replace(self, beat=self.beat + 1)

    def same_job(self, save_id: str, world_size: int) -> bool:
        return self.save_id == save_id and self.world_size == world_size

    def describe(self) -> str:
        who = f"save id {self.save_id!r}" if self.save_id else "a save without a save id"
        where = f" from {self.host} (pid {self.pid})" if self.host else ""
        return f"{who} ({self.world_size} data files){where}"


@dataclass(frozen=True, kw_only=True)
class Notice:
    save_id: str
    world_size: int
    attempt: str
    state: str
    error: Failure | None = None

    def encode(self) -> bytes:
        raw = asdict(self)
        if self.error is None:
            raw.pop("error")
        return json.dumps(raw, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> Notice | None:
        try:
            raw = json.loads(data)
            return cls(save_id=str(raw["save_id"]), world_size=int(raw["world_size"]), attempt=str(raw["attempt"]),
                       state=str(raw["state"]), error=_failure(raw.get("error")))
        except (ValueError, TypeError, KeyError):
            return None


@dataclass(frozen=True, kw_only=True)
class DataIdentity:
    """Which version of a data file a worker wrote: checked again just before the commit."""

    key: str
    size: int
    etag: str


@dataclass(frozen=True, kw_only=True)
class Report:
    attempt: str
    rank: int
    state: str
    data: DataIdentity | None = None
    error: Failure | None = None
    table: bytes = field(default=b"", repr=False)

    def encode(self) -> bytes:
        head: dict[str, Any] = {"attempt": self.attempt, "rank": self.rank, "state": self.state}
        if self.data is not None:
            head["data"] = asdict(self.data)
        if self.error is not None:
            head["error"] = asdict(self.error)
        return json.dumps(head, sort_keys=True).encode() + b"\n" + self.table

    @classmethod
    def decode(cls, data: bytes) -> Report | None:
        line, newline, table = data.partition(b"\n")
        if not newline:
            return None
        try:
            raw = json.loads(line)
            identity = raw.get("data")
            return cls(attempt=str(raw["attempt"]), rank=int(raw["rank"]), state=str(raw["state"]),
                       data=DataIdentity(key=str(identity["key"]), size=int(identity["size"]),
                                         etag=str(identity["etag"])) if identity else None,
                       error=_failure(raw.get("error")), table=table)
        except (ValueError, TypeError, KeyError):
            return None
