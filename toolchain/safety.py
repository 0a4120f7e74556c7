"""Safe loaders for files from strangers: ONNX models and torch ``.pt`` files.

``load_onnx(path)`` parses a model without letting it read anything outside its own
directory: the file size is bounded before reading; every tensor (initializers, sparse
initializers, node attributes, nested subgraphs, bounded depth) has non-negative dims
and a bounded element count; external data must be a relative path that resolves
(symlinks included) to a regular file inside the model's directory, with offset and
length inside that file and a bounded total; inline data must match its dims. External
data is then read by us (not by onnx) and the model is checked by ``onnx.checker``.
Every rejection is a ``ModelFileError`` (an InputError) naming file, place and rule.

``load_train_state`` (torch files through ``torch.load(weights_only=True)`` only, after
a scan that names every unsafe global) lives in models/checkpoint.py, where training
can use it; it is re-exported here.
"""
from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from spikebridge.base.errors import InputError
from spikebridge.models.checkpoint import load_train_state, scan_pickle_globals  # noqa: F401 (re-export)


class ModelFileError(InputError):
    """An ONNX model file is malformed, unsafe or too large."""


@dataclass(frozen=True)
class OnnxLimits:
    max_file_bytes: int = 2 << 30  # protobuf's own hard limit is 2 GiB
    max_external_bytes: int = 4 << 30  # sum over external data
    max_tensor_elements: int = 1 << 31
    max_graph_depth: int = 32


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
    with open(file, "rb") as f:
        data = f.read()
    try:
        model = onnx.ModelProto.FromString(data)
    except Exception as e:  # noqa: BLE001 - DecodeError, RecursionError, ...
        msg = " ".join(str(e).split())[:200] or type(e).__name__
        raise ModelFileError(f"not a valid ONNX protobuf ({msg})", file, "file") from None
    if not model.HasField("graph"):
        raise ModelFileError("model has no graph", file, "graph")

    base = Path(os.path.realpath(os.path.dirname(os.path.abspath(file))))
    external_total = 0

    def check_tensor(t, place: str) -> None:
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
        if t.data_location == TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            loc = info.get("location")
            if not loc:
                raise ModelFileError("external data without a location", file, place)
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

    def walk(g, place: str, depth: int) -> None:
        if depth > limits.max_graph_depth:
            raise ModelFileError(f"subgraphs nested deeper than {limits.max_graph_depth}", file, place)
        for t in g.initializer:
            check_tensor(t, f"{place}/initializer")
        for s in g.sparse_initializer:
            check_tensor(s.values, f"{place}/sparse_initializer")
            check_tensor(s.indices, f"{place}/sparse_initializer")
        for node in g.node:
            np_ = f"{place}/node {node.name or node.op_type!r}"
            for a in node.attribute:
                ap = f"{np_}/attribute {a.name!r}"
                if a.HasField("t"):
                    check_tensor(a.t, ap)
                for t in a.tensors:
                    check_tensor(t, ap)
                if a.HasField("sparse_tensor"):
                    check_tensor(a.sparse_tensor.values, ap)
                if a.HasField("g"):
                    walk(a.g, ap, depth + 1)
                for sub in a.graphs:
                    walk(sub, ap, depth + 1)

    walk(model.graph, "graph", 0)
    for fn in model.functions:
        for node in fn.node:
            for a in node.attribute:
                if a.HasField("g"):
                    walk(a.g, f"function {fn.name!r}", 1)
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - ValidationError and friends
        msg = " ".join(str(e).split())[:300] or type(e).__name__
        raise ModelFileError(f"onnx.checker rejects the model ({msg})", file, "graph") from None
    return model


__all__ = ["ModelFileError", "OnnxLimits", "load_onnx", "load_train_state", "scan_pickle_globals"]
