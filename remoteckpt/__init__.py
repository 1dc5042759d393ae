"""remoteckpt: TensorFlow V2 checkpoints (tensor bundles) on local disk and object storage.

    import remoteckpt
    remoteckpt.save({"w": w, "b": b}, "s3://bucket/run/model.ckpt-1000")
    remoteckpt.save(my_part, prefix, rank=r, world_size=n)   # many workers, one checkpoint
    future = remoteckpt.save_async(tensors, prefix)          # returns once snapshotted
    reader = remoteckpt.CheckpointReader("s3://bucket/run/model.ckpt-1000")
    w = reader.get_tensor("w")

Files are byte-compatible with TensorFlow in both directions.
"""

__version__ = "0.1.0"

from .api import list_variables, load, load_checkpoint, save, save_async
from .engine.plan import Slice
from .errors import (
    CheckpointBusyError,
    CheckpointChangedError,
    CheckpointError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    InvalidTensorsError,
    LocalTierFullError,
    SaveFailedError,
    ShapeMismatchError,
    StorageError,
    TensorNotFoundError,
    UnsupportedDTypeError,
)
from .format.slices import Box
from .management.directory import gc, latest_checkpoint
from .management.gc import GcReport
from .management.policy import CheckpointManager, SavePolicy
from .management.saver import Saver, restore
from .management.state import CheckpointState, get_checkpoint_state
from .options import IOOptions
from .progress import ProgressBar, ProgressEvent
from .protocol.commit import CommitProtocol, CreateOnlyCommit
from .reader import CheckpointReader, Opening
from .tiers.drain import durability, wait_durable
from .tiers.layout import LocalTier
from .tiers.resume import resume_drains

__all__ = [
    "Box",
    "CheckpointManager",
    "CheckpointState",
    "GcReport",
    "SavePolicy",
    "Saver",
    "gc",
    "get_checkpoint_state",
    "latest_checkpoint",
    "restore",
    "CheckpointError",
    "CheckpointBusyError",
    "CheckpointChangedError",
    "CheckpointExistsError",
    "CheckpointNotFoundError",
    "CheckpointReader",
    "Opening",
    "CommitProtocol",
    "CreateOnlyCommit",
    "IOOptions",
    "ProgressBar",
    "ProgressEvent",
    "CorruptCheckpointError",
    "InvalidTensorsError",
    "ShapeMismatchError",
    "Slice",
    "SaveFailedError",
    "StorageError",
    "TensorNotFoundError",
    "UnsupportedDTypeError",
    "LocalTier",
    "LocalTierFullError",
    "durability",
    "resume_drains",
    "wait_durable",
    "list_variables",
    "load",
    "load_checkpoint",
    "save",
    "save_async",
]
