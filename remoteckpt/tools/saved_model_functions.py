"""The functions a SavedModel exports, without TensorFlow: `concrete_functions` reads them from
a MetaGraphDef's object graph (the root object's children that are a ``tf.function`` or a bare
concrete function, and each concrete function's input signature), and
`format_concrete_functions` prints them as ``saved_model_cli show --all`` does under "Concrete
Functions:".

An input signature is TensorFlow's StructuredValue, decoded (`decode`) into JSON values: None,
bools, ints, floats and strings as themselves; any other kind an object of one key, the
StructuredValue kind's name: ``{"tuple": [..]}``, ``{"list": [..]}``, ``{"dict": {..}}`` (keys
sorted), ``{"named_tuple": {"name": N, "fields": [[key, value], ..]}}``, ``{"tensor_spec":
{"name", "shape", "dtype"}}``, ``{"bounded_tensor_spec": {.., "minimum", "maximum"}}``,
``{"tensor_shape": shape}``, ``{"tensor_dtype": "DT_FLOAT"}``, ``{"type_spec": {"class",
"state"}}`` (a RaggedTensorSpec, say: its class name and what the class serializes), ``{"tensor":
{"shape", "dtype"}}`` and ``{"numpy": ..}`` (a tensor's values are not read), ``{"unknown":
None}``.  A shape is a list with -1 for an unknown size, None for an unknown rank (as in
signatures), a dtype TensorFlow's enum name.
"""

from __future__ import annotations

from typing import Any

from .._proto import types_pb2
from ..dtypes import dtype_name

INDENT = " " * 8
"""saved_model_cli's indentation of an argument's line ("Argument #1"); its value is 2 deeper."""


def _shape(proto: Any) -> list[int] | None:
    return None if proto.unknown_rank else [int(d.size) for d in proto.dim]


def _dtype(number: int) -> str | int:
    try:
        return str(types_pb2.DataType.Name(number))
    except ValueError:
        return number


def _tensor(proto: Any) -> dict[str, Any]:
    return {"shape": _shape(proto.tensor_shape), "dtype": _dtype(proto.dtype)}


def decode(value: Any) -> Any:
    """A StructuredValue (`remoteckpt._proto.struct_pb2`) as a JSON value (module docstring)."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return {"unknown": None}
    name = kind.removesuffix("_value")
    inner = getattr(value, kind)
    if kind == "none_value":
        return None
    if kind in ("float64_value", "int64_value", "string_value", "bool_value"):
        return inner
    if kind in ("tensor_spec_value", "bounded_tensor_spec_value"):
        spec = {"name": inner.name or None, "shape": _shape(inner.shape), "dtype": _dtype(inner.dtype)}
        if kind == "bounded_tensor_spec_value":
            spec.update(minimum=_tensor(inner.minimum), maximum=_tensor(inner.maximum))
        return {name: spec}
    if kind == "tensor_shape_value":
        return {name: _shape(inner)}
    if kind == "tensor_dtype_value":
        return {name: _dtype(inner)}
    if kind == "type_spec_value":
        return {name: {"class": inner.type_spec_class_name, "state": decode(inner.type_state)}}
    if kind in ("list_value", "tuple_value"):
        return {name: [decode(v) for v in inner.values]}
    if kind == "dict_value":
        return {name: {key: decode(inner.fields[key]) for key in sorted(inner.fields)}}
    if kind == "named_tuple_value":
        return {name: {"name": inner.name, "fields": [[pair.key, decode(pair.value)] for pair in inner.values]}}
    return {name: _tensor(inner)}  # tensor_value, numpy_value


def _signature(graph: Any, name: str) -> tuple[list[Any], dict[str, Any]] | None:
    """The (args, kwargs) a concrete function is called with, None if the graph lacks them."""
    if name not in graph.concrete_functions:
        return None
    saved = graph.concrete_functions[name]
    if not saved.HasField("canonicalized_input_signature"):
        return None
    signature = decode(saved.canonicalized_input_signature)
    pair = signature.get("tuple") if isinstance(signature, dict) else None
    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, dict) for p in pair)):
        return None
    args, kwargs = pair[0].get("tuple", pair[0].get("list")), pair[1].get("dict")
    return (args, kwargs) if isinstance(args, list) and isinstance(kwargs, dict) else None


def concrete_functions(graph: Any) -> list[dict[str, Any]]:
    """The functions of a SavedObjectGraph (`remoteckpt._proto.saved_model_pb2`) that
    ``saved_model_cli`` lists: the root object's children that are a ``tf.function`` (`kind`
    ``function``) or a bare concrete function, by name; per function its concrete functions
    (`options`, in the order the SavedModel lists them: a tf.function's in the order it was
    traced): `args` (a list of values) and `kwargs` (a dict), None when the graph records no
    input signature, and `argument_keywords` (the flat argument names a bare concrete function
    records; None if none does).

    ``saved_model_cli`` numbers a function's options in the order of the names TensorFlow
    gives the concrete functions as it loads them (a counter of the process), and prints a
    dict in the order of a protobuf map (which differs from one process to the next); here
    both are deterministic: the options in the SavedModel's order, a dict's keys sorted."""
    nodes = graph.nodes
    if not nodes:
        return []
    keywords = {node.bare_concrete_function.concrete_function_name: list(node.bare_concrete_function.argument_keywords)
                for node in nodes if node.WhichOneof("kind") == "bare_concrete_function"}
    functions = []
    for child in sorted(nodes[0].children, key=lambda c: c.local_name):
        if not 0 <= child.node_id < len(nodes):
            continue
        node = nodes[child.node_id]
        kind = node.WhichOneof("kind")
        if kind == "function":
            names = list(node.function.concrete_functions)
        elif kind == "bare_concrete_function":
            names = [node.bare_concrete_function.concrete_function_name]
        else:
            continue  # a variable, an asset, any other object
        options = []
        for name in names:
            signature = _signature(graph, name)
            options.append({"concrete_function": name, "args": signature[0] if signature else None,
                            "kwargs": signature[1] if signature else None, "argument_keywords": keywords.get(name)})
        functions.append({"name": child.local_name, "kind": kind, "options": options})
    return functions


# --- as saved_model_cli prints them -------------------------------------------------------------


def _kind(value: Any) -> str:
    """A decoded value's kind: its key for the objects of one key, else its Python type's name."""
    if isinstance(value, dict) and len(value) == 1:
        return next(iter(value))
    return type(value).__name__


def _shape_text(shape: list[int] | None) -> str:
    """`tf.TensorShape`'s str: ``(None, 4)``, ``(3,)``, ``()``, ``<unknown>``."""
    if shape is None:
        return "<unknown>"
    dims = ["None" if d == -1 else str(d) for d in shape]
    return f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"


def _dtype_text(dtype: str | int) -> str:
    """`tf.DType`'s name: ``float32``."""
    return dtype_name(types_pb2.DataType.Value(dtype) if isinstance(dtype, str) else dtype)


def _tensor_text(kind: str, tensor: dict[str, Any]) -> str:
    """A tensor in a signature, by shape and dtype (its values are not read)."""
    return f"<{'tf.Tensor' if kind == 'tensor' else 'ndarray'} shape={_shape_text(tensor['shape'])} " \
           f"dtype={_dtype_text(tensor['dtype'])}>"


def value_repr(value: Any) -> str:
    """Python's repr of the object TensorFlow decodes the value into (``TensorSpec(shape=(None,
    4), dtype=tf.float32, name='inputs')``, ``(1, [None, 'a'])``)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    kind = _kind(value)
    inner = value[kind]
    if kind == "list":
        return "[" + ", ".join(map(value_repr, inner)) + "]"
    if kind == "tuple":
        return "(" + ", ".join(map(value_repr, inner)) + (",)" if len(inner) == 1 else ")")
    if kind == "dict":
        return "{" + ", ".join(f"{key!r}: {value_repr(v)}" for key, v in inner.items()) + "}"
    if kind == "named_tuple":
        return f"{inner['name']}(" + ", ".join(f"{key}={value_repr(v)}" for key, v in inner["fields"]) + ")"
    if kind in ("tensor_spec", "bounded_tensor_spec"):
        text = f"shape={_shape_text(inner['shape'])}, dtype=tf.{_dtype_text(inner['dtype'])}, name={inner['name']!r}"
        if kind == "tensor_spec":
            return f"TensorSpec({text})"
        return f"BoundedTensorSpec({text}, minimum={_tensor_text('numpy', inner['minimum'])}, " \
               f"maximum={_tensor_text('numpy', inner['maximum'])})"
    if kind == "tensor_shape":
        return "TensorShape(None)" if inner is None else f"TensorShape({[None if d == -1 else d for d in inner]!r})"
    if kind == "tensor_dtype":
        return f"tf.{_dtype_text(inner)}"
    if kind == "type_spec":
        state = inner["state"]
        fields = state.get("tuple") if isinstance(state, dict) else None
        if inner["class"] == "VariableSpec" and isinstance(fields, list) and len(fields) == 4:
            shape, dtype, trainable, alias_id = fields  # VariableSpec's own repr
            return (f"VariableSpec(shape={value_str(shape)}, dtype={value_repr(dtype)}, "
                    f"trainable={value_repr(trainable)}, alias_id={value_repr(alias_id)})")
        return f"{inner['class']}{value_repr(state)}"
    if kind in ("tensor", "numpy"):
        return _tensor_text(kind, inner)
    return "<unknown>"


def value_str(value: Any) -> str:
    """Python's str of the object TensorFlow decodes the value into (a string itself, a
    dtype ``<dtype: 'float32'>``, a shape ``(None, 4)``, else its repr)."""
    if isinstance(value, str):
        return value
    kind = _kind(value)
    if kind == "tensor_dtype":
        return f"<dtype: '{_dtype_text(value[kind])}'>"
    if kind == "tensor_shape":
        return _shape_text(value[kind])
    return value_repr(value)


_TYPE_NAMES = {"tensor_shape": "TensorShape", "tensor_dtype": "DType", "tensor": "Tensor", "numpy": "ndarray"}


def _type_name(value: Any) -> str:
    """The Python type's name of the object TensorFlow decodes the value into."""
    kind = _kind(value)
    if kind == "named_tuple":
        return str(value[kind]["name"])
    if kind == "type_spec":
        return str(value[kind]["class"])
    return _TYPE_NAMES.get(kind, kind)


def _quoted(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else value_str(value)


def _items(value: Any) -> list[Any] | None:
    """The elements saved_model_cli iterates over when it prints a value as ``Value: [..]``:
    a tuple's, a list's, a named tuple's, a known shape's dimensions; None for the others."""
    kind = _kind(value)
    if kind in ("tuple", "list"):
        return list(value[kind])
    if kind == "named_tuple":
        return [v for _, v in value[kind]["fields"]]
    if kind == "tensor_shape" and value[kind] is not None:
        return [None if d == -1 else d for d in value[kind]]
    return None


def format_arguments(values: list[Any], label: str) -> list[str]:
    """Arguments as ``saved_model_cli`` prints them (``Argument #1``, then a TensorSpec as
    ``name: TensorSpec(..)``, a string as itself, a sequence or a dict as its type and its
    elements, anything else as its type and its str).  saved_model_cli ends a sequence's
    elements with backspaces over the last ``", "``; here the sequence ends as a terminal
    shows it."""
    lines = []
    deeper = INDENT + "  "
    for index, value in enumerate(values, 1):
        lines.append(f"{INDENT}{label} #{index}")
        kind = _kind(value)
        items = _items(value)
        if isinstance(value, str):
            lines.append(deeper + value)
        elif kind in ("tensor_spec", "bounded_tensor_spec"):
            lines.append(f"{deeper}{value[kind]['name']}: {value_repr(value)}")
        elif items is not None:
            lines += [f"{deeper}DType: {_type_name(value)}", f"{deeper}Value: [{', '.join(map(_quoted, items))}]"]
        elif kind == "dict":
            text = ", ".join(f"'{key}': {_quoted(v)}" for key, v in value[kind].items())
            lines += [f"{deeper}DType: dict", f"{deeper}Value: {{{text}}}"]
        else:
            lines += [f"{deeper}DType: {_type_name(value)}", f"{deeper}Value: {value_str(value)}"]
    return lines


def format_concrete_functions(functions: list[dict[str, Any]]) -> list[str]:
    """`concrete_functions`' result as ``saved_model_cli show --all`` prints it: per function
    its options (concrete functions) and each one's positional arguments (``Callable with:``,
    printed only if there are any) and keyword arguments (``Named Argument``, by name)."""
    lines = ["Concrete Functions:"]
    for number, function in enumerate(functions):
        if number:
            lines.append("")
        lines.append(f"  Function Name: '{function['name']}'")
        for index, option in enumerate(function["options"], 1):
            args = option["args"] if option["args"] is not None else option["argument_keywords"]
            if args:
                lines += [f"    Option #{index}", "      Callable with:", *format_arguments(args, "Argument")]
            if option["kwargs"]:
                lines += format_arguments(list(option["kwargs"]), "Named Argument")
    return lines
