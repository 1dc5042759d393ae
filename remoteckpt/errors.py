"""Every error remoteckpt raises, rooted at one class.

    CheckpointError                      (Exception)   catch-all for this library
    ├── CheckpointNotFoundError          (+ FileNotFoundError)  no .index / data file / tensor
    │   └── TensorNotFoundError          (+ KeyError)   a name that is not in the checkpoint
    ├── CorruptCheckpointError           (+ ValueError) checksum mismatch, bad magic, truncation,
    │                                                   entries pointing outside their files
    ├── UnsupportedDTypeError            (+ TypeError)  a dtype TF stores that numpy cannot hold,
    │                                                   or a numpy dtype TF cannot store
    ├── ShapeMismatchError               (+ ValueError) a box or an output array that does not fit
    ├── InvalidTensorsError              (+ ValueError) tensors that cannot form one checkpoint:
    │                                                   duplicate or empty names, overlapping boxes
    ├── CheckpointExistsError            (+ FileExistsError) a committed checkpoint is in the way
    │   └── CheckpointBusyError                         another save holds the prefix right now
    └── StorageError                     (+ OSError)    the backend failed; the cause is chained
        ├── SaveFailedError                             another worker of a multi-worker save
        │                                               failed or never arrived
        └── CheckpointChangedError                      an object is not (or no longer) the
                                                        version expected: replaced or deleted
                                                        while being read, or a conditional
                                                        write lost to another writer
        └── LocalTierFullError                          a local tier's size cap reached, and
                                                        nothing durable left to evict

Messages name the tensor and the file they are about.  Backend exceptions are translated
into these in one place (`remoteckpt.storage.errors`), with the original as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "CheckpointBusyError",
    "CheckpointChangedError",
    "CheckpointError",
    "CheckpointExistsError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "InvalidTensorsError",
    "SaveFailedError",
    "ShapeMismatchError",
    "StorageError",
    "TensorNotFoundError",
    "UnsupportedDTypeError",
    "LocalTierFullError",
]


class CheckpointError(Exception):
    """Root of every error raised by remoteckpt."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint, one of its files, or a tensor in it does not exist."""

    def __str__(self) -> str:  # FileNotFoundError would otherwise print the errno tuple
        return str(self.args[0]) if self.args else ""


class TensorNotFoundError(CheckpointNotFoundError, KeyError):
    """The checkpoint has no tensor of the requested name."""


class CorruptCheckpointError(CheckpointError, ValueError):
    """The bytes on storage are not a valid checkpoint: checksum mismatch, bad magic,
    truncated file, or metadata pointing outside the files."""


class UnsupportedDTypeError(CheckpointError, TypeError):
    """A dtype that cannot be stored in, or restored from, a TF tensor bundle."""


class ShapeMismatchError(CheckpointError, ValueError):
    """A shape, box or output array that does not agree with the checkpoint."""


class InvalidTensorsError(CheckpointError, ValueError):
    """Tensors given to a save that cannot form one checkpoint (duplicate or empty names,
    overlapping boxes of one tensor, boxes that disagree on dtype or full shape)."""


class CheckpointExistsError(CheckpointError, FileExistsError):
    """A committed checkpoint already exists where a new one was to be written."""

    index_committed: bool = False
    """True when the thing in the way is a committed index (not a data file of a dead save)."""

    @classmethod
    def committed(cls, index: str) -> CheckpointExistsError:
        """The error for a committed checkpoint (its `.index`, as described) in the way."""
        error = cls(f"{index} already exists: a committed checkpoint is there (pass overwrite=True to replace it)")
        error.index_committed = True
        return error

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StorageError(CheckpointError, OSError):
    """The storage backend failed; the backend's own exception is the ``__cause__``."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SaveFailedError(StorageError):
    """A multi-worker save did not commit because another worker, or the coordinator, failed
    or never arrived; the message names which."""


class CheckpointChangedError(StorageError):
    """An object is not the version expected: a checkpoint replaced or deleted while it was
    being read (reads are pinned to the versions first seen, so this is raised instead of
    mixing two), or a conditional write (``If-Match``) that found another version."""


class LocalTierFullError(StorageError):
    """A save to a local tier would exceed its size cap, and no checkpoint could be evicted in
    time: every one left is not yet durable remotely (their drains are slow, or failing)."""


class CheckpointBusyError(CheckpointExistsError):
    """Another save of the same prefix (a different save id) holds it; this one gave up
    before writing anything."""

