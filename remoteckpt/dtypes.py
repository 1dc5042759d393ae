"""TensorFlow DataType numbers <-> numpy dtypes.

Narrow float and int types come from ml_dtypes (what JAX and TF's own numpy bridge use).
TF stores int4/uint4 (and the other sub-byte types) unpacked, one byte per element, which is
also ml_dtypes' in-memory layout, so payload bytes map 1:1.  Quantized types (qint8, ...)
read as their plain integer counterparts.  DT_STRING maps to numpy ``object`` arrays of
``bytes``.  DT_RESOURCE and DT_VARIANT hold TF runtime objects and are unsupported.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ._proto import types_pb2
from .errors import UnsupportedDTypeError

DT_STRING = types_pb2.DT_STRING

_NUMERIC: dict[int, np.dtype] = {
    types_pb2.DT_FLOAT: np.dtype(np.float32),
    types_pb2.DT_DOUBLE: np.dtype(np.float64),
    types_pb2.DT_INT32: np.dtype(np.int32),
    types_pb2.DT_UINT8: np.dtype(np.uint8),
    types_pb2.DT_INT16: np.dtype(np.int16),
    types_pb2.DT_INT8: np.dtype(np.int8),
    types_pb2.DT_COMPLEX64: np.dtype(np.complex64),
    types_pb2.DT_INT64: np.dtype(np.int64),
    types_pb2.DT_BOOL: np.dtype(np.bool_),
    types_pb2.DT_BFLOAT16: np.dtype(ml_dtypes.bfloat16),
    types_pb2.DT_UINT16: np.dtype(np.uint16),
    types_pb2.DT_COMPLEX128: np.dtype(np.complex128),
    types_pb2.DT_HALF: np.dtype(np.float16),
    types_pb2.DT_UINT32: np.dtype(np.uint32),
    types_pb2.DT_UINT64: np.dtype(np.uint64),
    types_pb2.DT_FLOAT8_E5M2: np.dtype(ml_dtypes.float8_e5m2),
    types_pb2.DT_FLOAT8_E4M3FN: np.dtype(ml_dtypes.float8_e4m3fn),
    types_pb2.DT_FLOAT8_E4M3FNUZ: np.dtype(ml_dtypes.float8_e4m3fnuz),
    types_pb2.DT_FLOAT8_E4M3B11FNUZ: np.dtype(ml_dtypes.float8_e4m3b11fnuz),
    types_pb2.DT_FLOAT8_E5M2FNUZ: np.dtype(ml_dtypes.float8_e5m2fnuz),
    types_pb2.DT_INT4: np.dtype(ml_dtypes.int4),
    types_pb2.DT_UINT4: np.dtype(ml_dtypes.uint4),
    types_pb2.DT_INT2: np.dtype(ml_dtypes.int2),
    types_pb2.DT_UINT2: np.dtype(ml_dtypes.uint2),
    types_pb2.DT_FLOAT4_E2M1FN: np.dtype(ml_dtypes.float4_e2m1fn),
}

_READ_ONLY: dict[int, np.dtype] = {
    types_pb2.DT_QINT8: np.dtype(np.int8),
    types_pb2.DT_QUINT8: np.dtype(np.uint8),
    types_pb2.DT_QINT16: np.dtype(np.int16),
    types_pb2.DT_QUINT16: np.dtype(np.uint16),
    types_pb2.DT_QINT32: np.dtype(np.int32),
}

_BY_NUMPY: dict[np.dtype, int] = {dt: num for num, dt in _NUMERIC.items()}

OBJECT = np.dtype(object)


def dtype_name(dtype_enum: int) -> str:
    """TF's lower-case name for a DataType number (``float32`` style, as `tf.DType.name`)."""
    try:
        name = types_pb2.DataType.Name(dtype_enum)
    except ValueError:
        return f"<unknown dtype {dtype_enum}>"
    return {"DT_FLOAT": "float32", "DT_DOUBLE": "float64", "DT_HALF": "float16"}.get(
        name, name[3:].lower()
    )


def to_numpy(dtype_enum: int) -> np.dtype:
    """The numpy dtype of a stored DataType (``object`` for strings)."""
    if dtype_enum == DT_STRING:
        return OBJECT
    found = _NUMERIC.get(dtype_enum) or _READ_ONLY.get(dtype_enum)
    if found is None:
        raise UnsupportedDTypeError(f"dtype {dtype_name(dtype_enum)} cannot be restored as a numpy array")
    return found


def from_numpy(dtype: np.dtype) -> int:
    """The DataType number to store a numpy dtype as (strings: object, ``S`` and ``U``)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return DT_STRING
    found = _BY_NUMPY.get(dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype)
    if found is None:
        raise UnsupportedDTypeError(f"numpy dtype {dtype} has no TensorFlow equivalent")
    return found


def item_size(dtype_enum: int) -> int:
    """Bytes per element in a data file (fixed-width types only)."""
    return to_numpy(dtype_enum).itemsize
