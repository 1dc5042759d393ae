"""What the DCP writer (`torch_dcp`) and reader (`torch_dcp_reader`) share: the tensor names
remoteckpt's DCP storage reserves in a bundle, DCP's metadata version, the checkpoint id
(the prefix) of both storage classes, and their refusal to pickle credentials."""

from __future__ import annotations

import os
from typing import Any

from ..storage.url import holds_credentials

METADATA_TENSOR = "_DCP_METADATA"
"""The string scalar holding DCP's `Metadata` as JSON (see `torch_metadata`)."""

BYTES_PREFIX = "_DCP_BYTES/"
"""Byte items (objects DCP serializes itself) are string scalars named BYTES_PREFIX + FQN."""

try:
    from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION as DCP_VERSION
except ImportError:  # pragma: no cover - older torch
    DCP_VERSION = "1.0.0"


class AtPrefix:
    """DCP's checkpoint id, for both storage classes: the prefix (any non-empty path or URL)."""

    prefix: str | None

    @property
    def checkpoint_id(self) -> str | None:
        return self.prefix

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return isinstance(checkpoint_id, (str, os.PathLike)) and bool(os.fspath(checkpoint_id))


def refuse_credentials(obj: Any) -> None:
    if holds_credentials(obj.storage_options):
        raise TypeError(f"{type(obj).__qualname__} with credentials in storage_options cannot be pickled (they "
                        "would travel in the pickle): give them through the environment or an AWS profile")
