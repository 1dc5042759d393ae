"""Torch dtypes in a TensorFlow tensor bundle, for the DCP storage: which numpy dtype holds each
torch dtype's bytes (ml_dtypes for bfloat16 and float8), and tensors as numpy arrays and back
(views of CPU memory where possible)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import ml_dtypes
import numpy as np
import torch

from ..errors import InvalidTensorsError, UnsupportedDTypeError

_PLAIN = [torch.float32, torch.float64, torch.float16, torch.int8, torch.int16, torch.int32, torch.int64,
          torch.uint8, torch.bool, torch.complex64, torch.complex128]
_PLAIN += [d for d in (getattr(torch, n, None) for n in ("uint16", "uint32", "uint64")) if d is not None]
_TO_NUMPY: dict[torch.dtype, np.dtype] = {d: torch.empty(0, dtype=d).numpy().dtype for d in _PLAIN}
# Types numpy lacks: the same bytes, viewed through an integer type of their size, as ml_dtypes.
_VIA: dict[torch.dtype, tuple[torch.dtype, np.dtype]] = {torch.bfloat16: (torch.int16, np.dtype(ml_dtypes.bfloat16))}
for _t, _m in [("float8_e4m3fn", "float8_e4m3fn"), ("float8_e5m2", "float8_e5m2"),
               ("float8_e4m3fnuz", "float8_e4m3fnuz"), ("float8_e5m2fnuz", "float8_e5m2fnuz")]:
    if hasattr(torch, _t) and hasattr(ml_dtypes, _m):
        _VIA[getattr(torch, _t)] = (torch.uint8, np.dtype(getattr(ml_dtypes, _m)))
_TO_NUMPY.update({t: m for t, (_, m) in _VIA.items()})
TO_TORCH: dict[np.dtype, torch.dtype] = {m: t for t, m in _TO_NUMPY.items()}


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype (ml_dtypes for bfloat16 and float8) holding `dtype`'s bytes."""
    try:
        return _TO_NUMPY[dtype]
    except KeyError:
        raise UnsupportedDTypeError(f"torch dtype {dtype} has no TensorFlow checkpoint equivalent") from None


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy array of `tensor`'s elements: a view of its memory for CPU tensors."""
    t = tensor.detach()
    if t.layout != torch.strided:
        raise InvalidTensorsError(f"{t.layout} tensors cannot be stored (convert to dense first)")
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    via = _VIA.get(t.dtype)
    if via is not None:
        return t.view(via[0]).numpy().view(via[1])
    if t.dtype not in _TO_NUMPY:
        numpy_dtype(t.dtype)  # raises UnsupportedDTypeError
    return t.numpy()


def numpy_to_tensor(array: np.ndarray) -> torch.Tensor:
    dtype = TO_TORCH.get(array.dtype)
    if dtype is None:
        raise UnsupportedDTypeError(f"a {array.dtype} tensor cannot be loaded into torch")
    via = _VIA.get(dtype)
    if via is not None:
        return torch.from_numpy(array.view(_TO_NUMPY[via[0]])).view(dtype)
    return torch.from_numpy(array)


def writable_view(target: torch.Tensor, dtype: np.dtype) -> np.ndarray | None:
    """`target`'s memory as a numpy array of `dtype`, if reading straight into it is safe."""
    if (target.device.type != "cpu" or target.layout != torch.strided or target.is_conj() or target.is_neg()
            or _TO_NUMPY.get(target.dtype) != dtype
            or any(st == 0 and sz > 1 for st, sz in zip(target.stride(), target.shape))):
        return None
    via = _VIA.get(target.dtype)
    return target.view(via[0]).numpy().view(via[1]) if via is not None else target.numpy()


def numel(sizes: Sequence[int]) -> int:
    return math.prod(int(s) for s in sizes)
