"""Safe loading of ONNX files from strangers (the one ONNX loader: ``spikebridge convert``,
``convert_onnx`` and toolchain/safety.py all use it).

``load_onnx(path)`` parses a model without letting it read anything outside its own
directory: the file is a regular file of bounded size, read with a bound; the number and
nesting of protobuf messages is bounded by a wire-format scan before parsing (an empty
node record costs 2 bytes on disk and hundreds parsed); every tensor (initializers,
sparse initializers, node attributes, nested subgraphs, bounded depth, and the bodies
of model-local functions) has non-negative dims and a bounded element count; external
data must be a relative path without control characters that resolves (symlinks
included) to a regular file inside the model's directory, with offset and length
inside that file and a bounded total, and is refused inside function bodies (onnxruntime
would resolve it against the current directory); inline data must match its dims.
External data is then read by us (not by onnx) and the model is checked by
``onnx.checker``.
Every rejection is a ``ModelFileError`` (an InputError) naming file, place and rule.
"""
from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from spikebridge.base.errors import InputError


class OnnxModelError(InputError):
    """An ONNX file is unreadable, unsafe, too large, or not a network the converter understands."""


ModelFileError = OnnxModelError  # the name toolchain/safety.py has always exported


@dataclass(frozen=True)
class OnnxLimits:
    max_file_bytes: int = 2 << 30  # protobuf's own hard limit is 2 GiB
    max_external_bytes: int = 4 << 30  # sum over external data
    max_tensor_elements: int = 1 << 31
    max_graph_depth: int = 32
    # protobuf messages (nodes, attributes, tensors, value infos, ...) in the whole file: an
    # empty record costs 2 bytes on disk and some hundred bytes parsed (20 MB of empty nodes
    # parsed to 3.5 GiB), so the count is bounded by a wire-format scan before parsing
    max_messages: int = 1_000_000
    max_message_depth: int = 100


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def scan_protobuf(data: bytes, descriptor, max_messages: int, max_depth: int) -> int:
    """Count the sub-messages of a serialized protobuf message of type ``descriptor`` by
    walking its wire format (no objects are built; iteratively, so no recursion). Raises
    ValueError when the bytes are malformed, hold more than ``max_messages`` messages or
    nest deeper than ``max_depth``. Returns the count."""
    from google.protobuf.descriptor import FieldDescriptor

    kinds: dict = {}

    def message_fields(d):
        if d not in kinds:
            kinds[d] = {n: f.message_type for n, f in d.fields_by_number.items()
                        if f.type == FieldDescriptor.TYPE_MESSAGE}
        return kinds[d]

    count = 0
    stack = [(0, len(data), descriptor, 0)]
    while stack:
        pos, end, d, depth = stack.pop()
        fields = message_fields(d)
        while pos < end:
            key, pos = _varint(data, pos, end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise ValueError("field number 0")
            if wire == 0:
                _, pos = _varint(data, pos, end)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                n, pos = _varint(data, pos, end)
                if pos + n > end:
                    raise ValueError("a length-delimited field runs past its message")
                sub = fields.get(number)
                if sub is not None:
                    count += 1
                    if count > max_messages:
                        raise ValueError(f"more than {max_messages} protobuf messages (nodes, attributes, "
                                         "tensors, ...)")
                    if depth + 1 > max_depth:
                        raise ValueError(f"messages nested deeper than {max_depth} levels")
                    stack.append((pos, pos + n, sub, depth + 1))
                pos += n
            else:
                raise ValueError(f"unsupported wire type {wire}")
            if pos > end:
                raise ValueError("truncated field")
    return count


def _inside(base: Path, target: Path) -> bool:
    try:
        return os.path.commonpath([str(base), str(target)]) == str(base)
    except ValueError:
        return False


def load_onnx(path, limits: OnnxLimits | None = None):
    """Parse and check an ONNX model safely (see module docstring); returns a ModelProto."""
    import onnx
    from onnx import TensorProto, helper

    limits = limits or OnnxLimits()
    file = str(path)
    from spikebridge.base.fileio import regular_file
    st = regular_file(file, limits.max_file_bytes, ModelFileError)
    if st.st_size == 0:
        raise ModelFileError("empty file", file, "file")
    from spikebridge.base.fileio import read_regular_bytes
    data = read_regular_bytes(file, limits.max_file_bytes, ModelFileError)
    try:
        scan_protobuf(data, onnx.ModelProto.DESCRIPTOR, limits.max_messages, limits.max_message_depth)
    except ValueError as e:
        raise ModelFileError(f"not a readable ONNX protobuf, or too large to parse safely ({e})", file, "file") from None
    try:
        model = onnx.ModelProto.FromString(data)
    except Exception as e:  # noqa: BLE001 - DecodeError, RecursionError, ...
        msg = " ".join(str(e).split())[:200] or type(e).__name__
        raise ModelFileError(f"not a readable ONNX protobuf ({msg})", file, "file") from None
    if not model.HasField("graph"):
        raise ModelFileError("model has no graph", file, "graph")

    base = Path(os.path.realpath(os.path.dirname(os.path.abspath(file))))
    external_total = 0

    def check_tensor(t, place: str, external_ok: bool = True) -> None:
        nonlocal external_total
        place = f"{place} {t.name!r}" if t.name else place
        dims = [int(d) for d in t.dims]
        if any(d < 0 for d in dims):
            raise ModelFileError(f"negative dimension in {dims}", file, place)
        n = math.prod(dims)
        if n > limits.max_tensor_elements:
            raise ModelFileError(f"{n} elements exceed the limit {limits.max_tensor_elements}", file, place)
        try:
            itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except Exception:  # noqa: BLE001 - unknown or undefined element type
            raise ModelFileError(f"unknown tensor data type {t.data_type}", file, place) from None
        if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
            if not external_ok:
                raise ModelFileError("external data inside a model-local function body is not accepted", file,
                                     place)
            info = {e.key: e.value for e in t.external_data}
            loc = info.get("location")
            if not loc:
                raise ModelFileError("external data without a location", file, place)
            if any(ord(c) < 0x20 or c == "\x7f" for c in loc):
                raise ModelFileError(f"external data location {loc!r} holds a control character (NUL, ...)",
                                     file, place)
            if os.path.isabs(loc) or loc.startswith(("\\", "/")) or ":" in loc:
                raise ModelFileError(f"external data location {loc!r} is absolute", file, place)
            target = Path(os.path.realpath(base / loc))
            if not _inside(base, target):
                raise ModelFileError(f"external data location {loc!r} resolves outside the model's directory",
                                     file, place)
            try:
                tst = os.stat(target)
            except OSError as e:
                raise ModelFileError(f"external data {loc!r}: {e.strerror}", file, place) from None
            if not stat.S_ISREG(tst.st_mode):
                raise ModelFileError(f"external data {loc!r} is not a regular file", file, place)
            try:
                offset = int(info.get("offset", 0))
                length = int(info["length"]) if "length" in info else n * itemsize
            except ValueError:
                raise ModelFileError("external data offset/length are not integers", file, place) from None
            if offset < 0 or length < 0 or offset + length > tst.st_size:
                raise ModelFileError(f"external data range [{offset}, {offset + length}) is outside {loc!r} "
                                     f"({tst.st_size} bytes)", file, place)
            if length != n * itemsize and t.data_type not in (TensorProto.STRING,):
                raise ModelFileError(f"external data length {length} does not match dims {dims}", file, place)
            external_total += length
            if external_total > limits.max_external_bytes:
                raise ModelFileError(f"external data exceeds {limits.max_external_bytes} bytes in total", file, place)
            with open(target, "rb") as fh:
                fh.seek(offset)
                t.raw_data = fh.read(length)
            del t.external_data[:]
            t.data_location = TensorProto.DEFAULT
        elif t.HasField("raw_data") and t.data_type != TensorProto.STRING and len(t.raw_data) != n * itemsize:
            raise ModelFileError(f"raw data of {len(t.raw_data)} bytes does not match dims {dims}", file, place)

    def walk_nodes(nodes, place: str, depth: int, external_ok: bool = True) -> None:
        for node in nodes:
            np_ = f"{place}/node {node.name or node.op_type!r}"
            for a in node.attribute:
                ap = f"{np_}/attribute {a.name!r}"
                tensors = ([a.t] if a.HasField("t") else []) + list(a.tensors)
                if a.HasField("sparse_tensor"):
                    tensors += [a.sparse_tensor.values, a.sparse_tensor.indices]
                for sp in a.sparse_tensors:
                    tensors += [sp.values, sp.indices]
                for t in tensors:
                    check_tensor(t, ap, external_ok)
                if a.HasField("g"):
                    walk(a.g, ap, depth + 1, external_ok)
                for sub in a.graphs:
                    walk(sub, ap, depth + 1, external_ok)

    def walk(g, place: str, depth: int, external_ok: bool = True) -> None:
        if depth > limits.max_graph_depth:
            raise ModelFileError(f"subgraphs nested deeper than {limits.max_graph_depth}", file, place)
        for t in g.initializer:
            check_tensor(t, f"{place}/initializer", external_ok)
        for s in g.sparse_initializer:
            check_tensor(s.values, f"{place}/sparse_initializer", external_ok)
            check_tensor(s.indices, f"{place}/sparse_initializer", external_ok)
        walk_nodes(g.node, place, depth, external_ok)

    walk(model.graph, "graph", 0)
    for fn in model.functions:  # model-local functions: onnxruntime would resolve their external data
        walk_nodes(fn.node, f"function {fn.name!r}", 1, external_ok=False)  # against the current directory
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - ValidationError and friends
        msg = " ".join(str(e).split())[:300] or type(e).__name__
        raise ModelFileError(f"onnx.checker rejects the model ({msg})", file, "graph") from None
    return model


__all__ = ["OnnxModelError", "ModelFileError", "OnnxLimits", "load_onnx", "scan_protobuf"]
