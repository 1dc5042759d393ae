"""PyTorch Distributed Checkpoint storage: TensorFlow tensor bundles on disk and S3.

    import torch.distributed.checkpoint as dcp
    import remoteckpt.torch

    dcp.save(state_dict, storage_writer=remoteckpt.torch.StorageWriter("s3://bucket/run/step-100"))
    dcp.load(state_dict, storage_reader=remoteckpt.torch.StorageReader("s3://bucket/run/step-100"))

The prefix is the checkpoint PREFIX (``step-100.index``, ``step-100.data-*``), readable by
`tf.train.load_checkpoint` and `remoteckpt.CheckpointReader` with the state_dict's FQNs as
tensor names.  ``import remoteckpt.torch`` does not import torch; the first use of
`StorageWriter` or `StorageReader` does (``pip install "remoteckpt[torch]"``).
See docs/plugins/torch.md and `remoteckpt.plugins.torch_dcp`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .plugins.torch_dcp import StorageReader, StorageWriter

__all__ = ["StorageReader", "StorageWriter"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from .plugins import torch_dcp

        value = getattr(torch_dcp, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
