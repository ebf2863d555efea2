"""Just enough of the ONNX file format to read a graph's weights and write a small conv graph.

The streaming scorer's screen (detector/streaming.py) runs the shipped head's convolutions once
over a whole stream. It takes their weights from the shipped graph and builds its own graph
for onnxruntime, which needs a serialised ModelProto. The `onnx` package is a training-only
dependency, so the few protobuf messages involved are read and written here by hand.
"""

from dataclasses import dataclass

import numpy as np

FLOAT = 1  # TensorProto.FLOAT
ATTR_INT, ATTR_INTS = 2, 7  # AttributeProto.INT, INTS
OPSET = 17
IR_VERSION = 8


# -- reading ------------------------------------------------------------------------------------
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, object]]:
    """(field number, wire type, value) of one message: ints for varints, bytes otherwise."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, i = buf[i : i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((field, wire, value))
    return out


def _tensor(buf: bytes) -> tuple[str, np.ndarray | None]:
    """(name, float32 array); the array is None for other data types (int64 shapes, ...)."""
    dims, name, raw, floats, dtype = [], "", None, [], FLOAT
    for field, wire, value in _fields(buf):
        if field == 1:  # dims, packed or not
            dims += [value] if wire == 0 else _packed_varints(value)
        elif field == 2:
            dtype = value
        elif field == 4:
            floats.append(np.frombuffer(value, "<f4"))
        elif field == 8:
            name = value.decode()
        elif field == 9:
            raw = value
    if dtype != FLOAT:
        return name, None
    data = np.frombuffer(raw, "<f4") if raw is not None else np.concatenate(floats or [[]])
    return name, data.astype(np.float32).reshape(dims)


def _packed_varints(buf: bytes) -> list[int]:
    out, i = [], 0
    while i < len(buf):
        value, i = _varint(buf, i)
        out.append(value)
    return out


@dataclass
class Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    ints: dict[str, int | list[int]]  # the node's int and int-list attributes


def _node(buf: bytes, weights: dict[str, np.ndarray]) -> Node:
    parts = _fields(buf)
    op = next(v.decode() for f, _, v in parts if f == 4)
    found = Node(op, [v.decode() for f, _, v in parts if f == 1], [], {})
    found.outputs = [v.decode() for f, _, v in parts if f == 2]
    for attr in (_fields(v) for f, _, v in parts if f == 5):
        name = next(v.decode() for f, _, v in attr if f == 1)
        single = [v for f, w, v in attr if f == 3 and w == 0]
        ints = [v for f, w, v in attr if f == 8 and w == 0]
        ints += [i for f, w, v in attr if f == 8 and w == 2 for i in _packed_varints(v)]
        if single:
            found.ints[name] = single[0]
        elif ints:
            found.ints[name] = ints
        value = next((v for f, _, v in attr if f == 5), None)  # a Constant's tensor
        if op == "Constant" and value is not None:
            array = _tensor(value)[1]
            if array is not None:
                weights[found.outputs[0]] = array
    return found


def read_graph(data: bytes) -> tuple[list[Node], dict[str, np.ndarray]]:
    """An ONNX model's nodes in order, and its float initializers and Constant outputs by name."""
    graph = next(v for f, w, v in _fields(data) if f == 7)
    nodes, weights = [], {}
    for field, _, value in _fields(graph):
        if field == 1:
            nodes.append(_node(value, weights))
        elif field == 5:
            name, array = _tensor(value)
            if array is not None:
                weights[name] = array
    return nodes, weights


# -- writing ------------------------------------------------------------------------------------
def _vb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len(field: int, payload: bytes) -> bytes:
    return _vb(field << 3 | 2) + _vb(len(payload)) + payload


def _int(field: int, value: int) -> bytes:
    return _vb(field << 3) + _vb(value)


def _str(field: int, text: str) -> bytes:
    return _len(field, text.encode())


def tensor(name: str, array: np.ndarray) -> bytes:
    """A float32 TensorProto."""
    array = np.ascontiguousarray(array, dtype="<f4")
    dims = b"".join(_int(1, d) for d in array.shape)
    return dims + _int(2, FLOAT) + _str(8, name) + _len(9, array.tobytes())


def node(op: str, inputs: list[str], outputs: list[str], **ints: int | list[int]) -> bytes:
    """A NodeProto whose attributes are ints (group) or lists of ints (kernel_shape, pads)."""
    out = b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in outputs)
    out += _str(4, op)
    for name, values in ints.items():
        if isinstance(values, int):
            attr = _str(1, name) + _int(3, values) + _int(20, ATTR_INT)
        else:
            attr = _str(1, name) + b"".join(_int(8, v) for v in values) + _int(20, ATTR_INTS)
        out += _len(5, attr)
    return out


def value_info(name: str, dims: list[int | str] | None) -> bytes:
    """A float32 graph input or output; dims are sizes or symbolic names (None: unknown rank)."""
    shape = b""
    if dims is not None:
        shape = _len(
            2,
            b"".join(_len(1, _int(1, d) if isinstance(d, int) else _str(2, d)) for d in dims),
        )
    return _str(1, name) + _len(2, _len(1, _int(1, FLOAT) + shape))


def model(
    nodes: list[bytes], weights: list[bytes], inputs: list[bytes], outputs: list[bytes]
) -> bytes:
    """A serialised ModelProto (default domain, opset 17) that onnxruntime can load."""
    graph = b"".join(_len(1, n) for n in nodes) + _str(2, "graph")
    graph += b"".join(_len(5, w) for w in weights)
    graph += b"".join(_len(11, i) for i in inputs) + b"".join(_len(12, o) for o in outputs)
    return _int(1, IR_VERSION) + _len(8, _int(2, OPSET)) + _len(7, graph)
