"""`TorchGroup`: a `torch.distributed` process group as the `Collective` of a group read
(`engine.group`), for `remoteckpt.load(..., process_group=...)` and the DCP reader.

Bytes travel as uint8 tensors: CPU tensors sharing the numpy buffers themselves on a gloo
(or any CPU-capable) group, so a receiver's bytes land in its destination array; on an NCCL
group, which moves CUDA tensors only, through a CUDA buffer of the current device (a sender
copies its bytes up, a receiver copies them down into its destination).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..engine.group import Collective


class TorchGroup(Collective):
    """The ranks of `group` (None: the default group), which must be initialised."""

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.device = (torch.device("cuda", torch.cuda.current_device())
                       if dist.get_backend(group) == "nccl" else None)

    def _global(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def all_gather_object(self, value: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value, group=self.group)
        return out

    def _tensor(self, buffer: np.ndarray, sending: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(the tensor the collective moves, the CPU tensor sharing `buffer`)."""
        host = torch.from_numpy(buffer)
        if self.device is None:
            return host, host
        if sending:
            return host.to(self.device), host
        return torch.empty(host.shape, dtype=torch.uint8, device=self.device), host

    def broadcast_object(self, value: Any, src: int) -> Any:
        payload = [value if self.rank == src else None]
        dist.broadcast_object_list(payload, src=self._global(src), group=self.group)
        return payload[0]

    def broadcast(self, buffer: np.ndarray, src: int) -> None:
        moved, host = self._tensor(buffer, self.rank == src)
        dist.broadcast(moved, src=self._global(src), group=self.group)
        if moved is not host and self.rank != src:
            host.copy_(moved)

    def send(self, buffer: np.ndarray, dst: int) -> None:
        moved, _ = self._tensor(buffer, True)
        dist.send(moved, dst=self._global(dst), group=self.group)

    def recv(self, buffer: np.ndarray, src: int) -> None:
        moved, host = self._tensor(buffer, False)
        dist.recv(moved, src=self._global(src), group=self.group)
        if moved is not host:
            host.copy_(moved)


def as_collective(process_group: Any) -> Collective:
    """`process_group` as a `Collective`: itself if it is one, else a `TorchGroup` of it
    (``torch.distributed.group.WORLD`` is the default group)."""
    if isinstance(process_group, Collective):
        return process_group
    return TorchGroup(None if process_group is dist.group.WORLD else process_group)
