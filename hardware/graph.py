"""Safe NIR loading and graph analysis.

``load_graph`` never hands a file to ``nir.read``: it opens the HDF5 file itself,
validates the whole object tree *before reading any data* (no external/soft links,
no external raw storage, no virtual datasets, no unknown filters, bounded depth,
object count and declared dataset sizes), then reads the tree into a dict and builds
the graph with ``nir.dict2NIRNode`` (type_check off: shapes come from ``analyse``).

``analyse`` computes topological order, predecessors/successors, per-node output
shapes (no batch dimension, CHW) and back edges, and reports every problem at once.
"""
from __future__ import annotations

import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

import nir

from spikebridge.base.errors import GraphError, InputError, UnsupportedError
from spikebridge.base.fileio import regular_file

from spikebridge.base.dialect import (KNOWN_TYPES, META_KEY, NEURON_TYPES, SPIKING_TYPES,  # noqa: F401
                                       SYNAPSE_TYPES, node_type)

# ----------------------------------------------------------------------------------
# limits
# ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadLimits:
    """Bounds checked on the declared HDF5 structure before any data is read."""

    max_depth: int = 32
    max_objects: int = 100_000
    max_total_bytes: int = 1 << 30  # sum of declared dataset sizes
    max_dataset_bytes: int = 1 << 30
    max_chunk_bytes: int = 256 << 20
    max_ndim: int = 8
    max_dim: int = 1 << 31
    max_string_elements: int = 1_000_000
    max_file_bytes: int = 2 << 30  # the file is read into memory once


# HDF5 filter ids that are built in (deflate, shuffle, fletcher32, szip, nbit,
# scaleoffset) or registered by h5py itself (lzf). Anything else would make HDF5
# look for a dynamically loaded plugin.
_ALLOWED_FILTERS = {1, 2, 3, 4, 5, 6, 32000}



# ----------------------------------------------------------------------------------
# load_graph
# ----------------------------------------------------------------------------------


def _validate_tree(f: h5py.File, file: str, limits: LoadLimits) -> None:
    total = 0
    count = 0

    def check_dataset(ds: h5py.Dataset, where: str) -> int:
        if ds.external:
            raise GraphError("external raw storage is not allowed", file, where)
        if ds.is_virtual:
            raise GraphError("virtual datasets are not allowed", file, where)
        dt = ds.dtype
        is_str = h5py.check_string_dtype(dt) is not None
        if not is_str and dt.kind not in "biuf":
            raise GraphError(f"dataset type {dt} is not allowed (numbers and strings only)",
                             file, where)
        shape = ds.shape
        if shape is None:
            raise GraphError("empty (null) dataspace is not allowed", file, where)
        if len(shape) > limits.max_ndim:
            raise GraphError(f"{len(shape)} dimensions exceed the limit {limits.max_ndim}",
                             file, where)
        if any(int(d) > limits.max_dim for d in shape):
            raise GraphError(f"dimension in shape {shape} exceeds {limits.max_dim}",
                                file, where)
        n = math.prod(int(d) for d in shape)
        if is_str and n > limits.max_string_elements:
            raise GraphError(f"{n} strings exceed the limit {limits.max_string_elements}",
                                file, where)
        nbytes = n * dt.itemsize
        if nbytes > limits.max_dataset_bytes:
            raise GraphError(f"declared size {nbytes} bytes exceeds the limit "
                                f"{limits.max_dataset_bytes}", file, where)
        if ds.chunks is not None:
            cb = math.prod(int(c) for c in ds.chunks) * dt.itemsize
            if cb > limits.max_chunk_bytes:
                raise GraphError(f"chunk size {cb} bytes exceeds {limits.max_chunk_bytes}",
                                    file, where)
        plist = ds.id.get_create_plist()
        for i in range(plist.get_nfilters()):
            code = int(plist.get_filter(i)[0])
            if code not in _ALLOWED_FILTERS:
                raise GraphError(f"HDF5 filter {code} is not allowed", file, where)
        return nbytes

    def walk(group: h5py.Group, path: str, depth: int) -> None:
        nonlocal total, count
        if depth > limits.max_depth:
            raise GraphError(f"group nesting deeper than {limits.max_depth}", file, path)
        for name in group:
            where = f"{path.rstrip('/')}/{name}"
            count += 1
            if count > limits.max_objects:
                raise GraphError(f"more than {limits.max_objects} objects", file, where)
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise GraphError("external links are not allowed", file, where)
            if isinstance(link, h5py.SoftLink):
                raise GraphError("soft links are not allowed", file, where)
            if not isinstance(link, h5py.HardLink):
                raise GraphError("only hard links are allowed", file, where)
            obj = group[name]
            if h5py.h5o.get_info(obj.id).rc != 1:
                raise GraphError("objects linked more than once are not allowed", file, where)
            if isinstance(obj, h5py.Group):
                walk(obj, where, depth + 1)
            elif isinstance(obj, h5py.Dataset):
                total += check_dataset(obj, where)
                if total > limits.max_total_bytes:
                    raise GraphError(f"datasets declare more than {limits.max_total_bytes} "
                                        "bytes in total", file, where)
            else:
                raise GraphError("only groups and datasets are allowed", file, where)

    walk(f, "/", 0)


def _decode(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf8")
    if isinstance(v, np.ndarray) and (v.dtype.kind in "OS"):
        return np.vectorize(lambda s: s.decode("utf8") if isinstance(s, bytes) else s,
                            otypes=[object])(v) if v.size else v.astype(object)
    return v


def _read_tree(group: h5py.Group, in_meta: bool = False) -> dict:
    out: dict = {}
    for name in group:
        obj = group[name]
        meta = in_meta or name == "metadata"
        if isinstance(obj, h5py.Group):
            out[name] = _read_tree(obj, meta)
        else:
            v = _decode(obj[()])
            if meta and isinstance(v, np.generic):
                v = v.item()
            out[name] = v
    return out


def _check_node_dict(d: Any, file: str, place: str, depth: int = 0) -> None:
    if not isinstance(d, dict):
        raise GraphError("expected a group", file, place)
    t = d.get("type")
    if not isinstance(t, str):
        raise GraphError("node has no string 'type'", file, place)
    if t not in KNOWN_TYPES:
        raise GraphError(f"unknown node type {t!r}", file, place)
    if t == "NIRGraph":
        nodes, edges = d.get("nodes"), d.get("edges")
        if not isinstance(nodes, dict):
            raise GraphError("graph has no 'nodes' group", file, place)
        if nodes and edges is None:
            raise GraphError("graph has no 'edges' dataset", file, place)
        if edges is None:
            edges = np.zeros((0, 2), dtype=object)
            d["edges"] = edges
        edges = np.asarray(edges, dtype=object)
        if edges.size and (edges.ndim != 2 or edges.shape[1] != 2):
            raise GraphError("'edges' must be a list of (source, target) pairs", file, place)
        bad = []
        for a, b in edges.reshape(-1, 2):
            if not (isinstance(a, str) and isinstance(b, str)):
                raise GraphError("edge endpoints must be strings", file, place)
            for end in (a, b):
                if end not in nodes:
                    bad.append(f"edge ({a!r}, {b!r}) names missing node {end!r}")
        if bad:
            raise GraphError("; ".join(bad), file, place)
        d["edges"] = [(a, b) for a, b in edges.reshape(-1, 2)]
        for k, n in nodes.items():
            _check_node_dict(n, file, f"{place}/nodes/{k}", depth + 1)
        d["type_check"] = False


def _parse_hdf5(raw: bytes, file: str, limits: LoadLimits) -> dict:
    """The file's /node tree as nested dicts (structure validated before any data is read)."""
    try:
        f = h5py.File(io.BytesIO(raw), "r")
    except Exception as e:  # noqa: BLE001 - any failure to open is a bad file
        raise GraphError(f"not a readable HDF5 file ({type(e).__name__})", file, "file") from None
    try:
        with f:
            try:
                _validate_tree(f, file, limits)
                if "node" not in f or not isinstance(f["node"], h5py.Group):
                    raise GraphError("missing group 'node' (not a NIR file)", file, "/node")
                tree = _read_tree(f["node"])
                v = f.get("version")  # nir >= 0.2 writes it; older files have none
                v = _decode(v[()]) if isinstance(v, h5py.Dataset) and v.size <= 64 else None
                tree[_VERSION_KEY] = v if isinstance(v, str) else None
                return tree
            except InputError:
                raise
            except Exception as e:  # noqa: BLE001 - corrupt/truncated data
                raise GraphError(f"corrupt HDF5 content ({type(e).__name__}: {e})", file, "data") from None
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - closing a corrupt file
        raise GraphError(f"corrupt HDF5 file ({type(e).__name__})", file, "file") from None


def _hdf5_timeout(nbytes: int) -> float:
    env = os.environ.get("SPIKEBRIDGE_HDF5_TIMEOUT")
    if env:
        try:
            return max(0.1, float(env))
        except ValueError:
            pass
    return 20.0 + nbytes / 10e6  # seconds: generous for a real file (~1 s per 100 MB read)


def _trial_parse(raw: bytes, file: str, limits: LoadLimits) -> None:
    """Parse ``raw`` once in a forked child with a time limit before the caller parses it.

    HDF5's C library can loop forever on crafted data (seen with a mutated variable-length
    string whose global-heap reference points into garbage: ``Dataset[()]`` never returns,
    and no Python signal handler runs while it holds the interpreter). A child that does
    not finish in time is killed and the file rejected; one that finishes shows that the
    same bytes, read by the same library, terminate in the parent too. The child returns
    only an exit code and a message (no pickling). Without fork (not POSIX) this is skipped.
    """
    if not hasattr(os, "fork"):
        return
    import select
    import signal

    timeout = _hdf5_timeout(len(raw))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: parse, report, exit without running any parent clean-up
        code, msg = 0, b""
        try:
            os.close(r)
            try:
                _parse_hdf5(raw, file, limits)
            except InputError as e:
                code, msg = 3, json.dumps({"rule": e.rule, "place": e.place}).encode("utf8")
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                code, msg = 4, f"{type(e).__name__}: {e}".encode("utf8", "replace")
            os.write(w, msg[:4000])
        finally:
            os._exit(code)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], timeout)
        msg = b""
        if ready:  # the child wrote its message and exited (EOF), or is about to
            chunks = []
            while True:
                c = os.read(r, 4096)
                if not c:
                    break
                chunks.append(c)
            msg = b"".join(chunks)
        else:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(r)
    if not ready:
        raise GraphError(f"reading the HDF5 data did not finish within {timeout:.0f} s "
                         "(malformed file; SPIKEBRIDGE_HDF5_TIMEOUT raises the limit)", file, "data")
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return
    text = msg.decode("utf8", "replace").strip() or f"exit status {code}"
    if code == 3:  # the rejection the parent would raise: raise it here
        try:
            d = json.loads(text)
            rule, place = str(d["rule"]), (None if d.get("place") is None else str(d["place"]))
        except (ValueError, KeyError, TypeError):
            rule, place = text, "data"
        raise GraphError(rule, file, place)
    raise GraphError(f"reading the HDF5 data failed ({text})", file, "data")


def load_graph(path: str | os.PathLike, limits: LoadLimits | None = None) -> nir.NIRGraph:
    """Load a NIR file safely (see module docstring). Raises GraphError (every rejection, size limits included).

    The bytes are read once (bounded by ``limits.max_file_bytes``); a forked child parses
    them first under a time limit (:func:`_trial_parse`), then this process parses the same
    bytes."""
    limits = limits or LoadLimits()
    file = str(path)
    st = regular_file(file, limits.max_file_bytes, GraphError)
    try:
        with open(file, "rb") as fh:
            raw = fh.read(st.st_size + 1)  # st_size is within the limit; + 1 sees a file that grew
    except OSError as e:
        raise GraphError(f"cannot read: {e.strerror}", file, "file") from None
    if len(raw) > limits.max_file_bytes:
        raise GraphError(f"file exceeds the limit of {limits.max_file_bytes} bytes", file, "file")
    _trial_parse(raw, file, limits)
    data = _parse_hdf5(raw, file, limits)
    if data.get("type") != "NIRGraph":
        raise GraphError("root node is not a NIRGraph", file, "/node/type")
    written_by = data.pop(_VERSION_KEY, None)
    _check_node_dict(data, file, "/node")
    _upgrade_old_fields(data)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):  # nir warns on crafted values
            warnings.simplefilter("ignore")
            graph = nir.dict2NIRNode(data)
    except Exception as e:  # noqa: BLE001 - nir raises Assertion/Type/Value errors
        who = (f"nir {written_by}" if written_by else "a nir older than 0.2 (no version field)")
        raise GraphError(f"nir could not build the graph ({type(e).__name__}: {e}); the file "
                         f"was written by {who}, this reader is nir {_NIR_VERSION}",
                         file, "/node") from None
    return graph


_VERSION_KEY = "\0nir_version"  # never a node field name (HDF5 names cannot hold NUL)
try:
    from importlib.metadata import version as _pkg_version
    _NIR_VERSION = _pkg_version("nir")
except Exception:  # noqa: BLE001 - informational only
    _NIR_VERSION = "?"


def _upgrade_old_fields(d: dict) -> None:
    """Fields that older nir versions did not write, filled as nir 1.0.8 reads them:
    Conv1d/Conv2d input_shape (added in nir 1.0; None = taken from the predecessor,
    which ``analyse`` does). LIF/CubaLIF v_reset, IF v_reset and Flatten input_type have
    defaults in nir 1.0.8 already. Recurses into nested graphs."""
    t = d.get("type")
    if t in ("Conv1d", "Conv2d") and "input_shape" not in d:
        d["input_shape"] = None
    if t == "NIRGraph":
        for n in (d.get("nodes") or {}).values():
            if isinstance(n, dict):
                _upgrade_old_fields(n)


# ----------------------------------------------------------------------------------
# analyse
# ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphInfo:
    order: list[str]
    preds: dict[str, list[str]]
    succs: dict[str, list[str]]
    shapes: dict[str, tuple[int, ...]]  # output shape per node, no batch dim
    in_shapes: dict[str, tuple[int, ...]]
    inputs: list[str]
    outputs: list[str]
    back_edges: list[tuple[str, str]]
    types: dict[str, str] = field(default_factory=dict)
    file: str | None = None

    def is_spiking(self, name: str) -> bool:
        """True when the node's output is spike events (a spiking neuron, or a Flatten /
        Delay whose inputs are all spiking)."""
        t = self.types[name]
        if t in SPIKING_TYPES:
            return True
        if t in ("Flatten", "Delay"):
            ps = self.preds[name]
            return bool(ps) and all(self.is_spiking(p) for p in ps if (p, name) not in self.back_edges)
        return False


def _tup(a) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(a).reshape(-1))


def _pair(v, n: int) -> tuple[int, ...]:
    a = np.asarray(v).reshape(-1)
    if a.size == 1:
        return tuple(int(a[0]) for _ in range(n))
    if a.size != n:
        raise ValueError(f"expected {n} values, got {a.size}")
    return tuple(int(x) for x in a)


def conv_geometry(node, ndim: int, in_spatial: tuple[int, ...]):
    """(kernel, stride, dilation, pad_lo, pad_hi, out_spatial) for conv and pool nodes."""
    t = node_type(node)
    if t in ("Conv1d", "Conv2d"):
        kernel = tuple(int(k) for k in node.weight.shape[2:])
        dilation = _pair(node.dilation, ndim)
    else:
        kernel = _pair(node.kernel_size, ndim)
        dilation = (1,) * ndim
    stride = _pair(node.stride, ndim)
    pad = node.padding
    if isinstance(pad, str):
        if pad == "valid":
            lo = hi = (0,) * ndim
        elif pad == "same":
            if any(s != 1 for s in stride):
                raise ValueError("padding 'same' needs stride 1")
            tot = [d * (k - 1) for d, k in zip(dilation, kernel)]
            lo = tuple(p // 2 for p in tot)
            hi = tuple(p - p // 2 for p in tot)
        else:
            raise ValueError(f"unknown padding {pad!r}")
    else:
        lo = hi = _pair(pad, ndim)
    if any(s < 1 for s in stride) or any(d < 1 for d in dilation) or any(k < 1 for k in kernel):
        raise ValueError("stride, dilation and kernel must be >= 1")
    if any(p < 0 for p in lo + hi):
        raise ValueError("padding must be >= 0")
    out = tuple((i + a + b - d * (k - 1) - 1) // s + 1
                for i, a, b, d, k, s in zip(in_spatial, lo, hi, dilation, kernel, stride))
    if any(o < 1 for o in out):
        raise ValueError(f"output size {out} is empty")
    return kernel, stride, dilation, lo, hi, out


def _elementwise_shape(node, pin):
    params = [np.asarray(v) for k, v in vars(node).items()
              if k not in ("input_type", "output_type", "metadata") and isinstance(v, np.ndarray)]
    pshape = ()
    for p in params:
        pshape = np.broadcast_shapes(pshape, p.shape)
    if pin is None:
        return pshape, pshape
    if np.broadcast_shapes(pshape, pin) != tuple(pin):
        raise ValueError(f"parameters of shape {pshape} do not fit input shape {pin}")
    return tuple(pin), tuple(pin)


def _shape_fn(node, pin):
    """(expected input shape or None if free, output shape). pin: shape of predecessors."""
    t = node_type(node)
    if t == "Input":
        s = _tup(node.input_type["input"])
        return None, s
    if t == "Output":
        declared = node.output_type.get("output")
        if pin is None:
            s = _tup(declared)
            return s, s
        return (None if declared is None else _tup(declared)), pin
    if t in ("Affine", "Linear"):
        w = np.asarray(node.weight)
        if w.ndim != 2:
            raise ValueError(f"weight must be 2-D, got shape {w.shape}")
        if t == "Affine" and np.asarray(node.bias).size not in (1, w.shape[0]):
            raise ValueError(f"bias shape {np.asarray(node.bias).shape} does not fit weight {w.shape}")
        return (w.shape[1],), (w.shape[0],)
    if t in ("Conv1d", "Conv2d"):
        nd = 1 if t == "Conv1d" else 2
        w = np.asarray(node.weight)
        if w.ndim != nd + 2:
            raise ValueError(f"weight must be {nd + 2}-D, got shape {w.shape}")
        g = int(node.groups)
        if g < 1 or w.shape[0] % g:
            raise ValueError(f"groups={g} does not divide {w.shape[0]} output channels")
        cin = w.shape[1] * g
        ish = node.input_shape
        if pin is None:
            if ish is None:
                raise ValueError("input shape unknown (no predecessor, no input_shape)")
            pin = (cin, *_pair(ish, nd))
        elif ish is not None and len(pin) == nd + 1 and _pair(ish, nd) != tuple(pin[1:]):
            raise ValueError(f"input_shape {_pair(ish, nd)} differs from the incoming "
                             f"spatial shape {tuple(pin[1:])}")
        if len(pin) != nd + 1:
            raise ValueError(f"input shape {pin} is not C + {nd} spatial dims")
        b = np.asarray(node.bias)
        if b.size not in (1, w.shape[0]):
            raise ValueError(f"bias shape {b.shape} does not fit {w.shape[0]} channels")
        *_, out = conv_geometry(node, nd, tuple(pin[1:]))
        return (cin, *pin[1:]), (w.shape[0], *out)
    if t in ("SumPool2d", "AvgPool2d"):
        if pin is None:
            raise ValueError("input shape unknown")
        if len(pin) != 3:
            raise ValueError(f"input shape {pin} is not CHW")
        *_, out = conv_geometry(node, 2, tuple(pin[1:]))
        return pin, (pin[0], *out)
    if t == "Flatten":
        declared = node.input_type.get("input")
        src = pin if pin is not None else (None if declared is None else _tup(declared))
        if src is None:
            raise ValueError("input shape unknown")
        nd = len(src)
        s, e = int(node.start_dim), int(node.end_dim)
        s = s + nd if s < 0 else s
        e = e + nd if e < 0 else e
        if not (0 <= s <= e < nd):
            raise ValueError(f"start_dim/end_dim {node.start_dim}/{node.end_dim} invalid for shape {src}")
        out = (*src[:s], math.prod(src[s:e + 1]), *src[e + 1:])
        return (None if declared is None else _tup(declared)), out
    if t == "Scale":
        s = tuple(np.asarray(node.scale).shape)
        if pin is not None and np.broadcast_shapes(s, pin) == tuple(pin):
            return pin, pin
        return s, s
    if t in ("IF", "LIF", "CubaLIF", "CubaLI", "LI", "I", "Threshold", "Delay"):
        return _elementwise_shape(node, pin)
    raise KeyError(t)


def _param_problems(name: str, node) -> list[str]:
    out = []
    for k, v in vars(node).items():
        if k in ("input_type", "output_type", "metadata"):
            continue
        if isinstance(v, (np.ndarray, float, np.floating)):
            a = np.asarray(v)
            if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
                out.append(f"node {name!r}: parameter {k} is not finite")
            elif a.dtype.kind not in "biufc":
                out.append(f"node {name!r}: parameter {k} is not numeric")
    t = node_type(node)
    for k in ("tau", "tau_mem", "tau_syn"):
        if hasattr(node, k):
            a = np.asarray(getattr(node, k))
            if a.dtype.kind in "biuf" and np.any(a <= 0):
                out.append(f"node {name!r}: {k} must be > 0")
    if t == "Delay" and np.any(np.asarray(node.delay) < 0):
        out.append(f"node {name!r}: delay must be >= 0")
    return out



def back_edges(roots, succs) -> list[tuple[str, str]]:
    """The edges that close a cycle, in the order found: a depth-first search from each of
    ``roots`` in turn (``succs``: node -> its successors) marks an edge to a node still on
    the stack as a back edge, i.e. one that carries the previous step's value."""
    back: list[tuple[str, str]] = []
    state: dict[str, int] = {}
    for r in roots:
        if r in state:
            continue
        stack = [(r, iter(succs[r]))]
        state[r] = 1
        while stack:
            n, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[n] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                back.append((n, nxt))
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(succs[nxt])))
    return back

def analyse(graph: nir.NIRGraph, file: str | None = None) -> GraphInfo:
    """Structure and shapes of a graph; raises one GraphError (or UnsupportedError when
    every problem is an unsupported feature) listing every problem found."""
    errors: list[str] = []
    unsupported: list[str] = []
    nodes = graph.nodes
    types = {n: node_type(v) for n, v in nodes.items()}
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    succs: dict[str, list[str]] = {n: [] for n in nodes}
    seen_edges = set()
    for e in graph.edges:
        a, b = str(e[0]), str(e[1])
        missing = [x for x in (a, b) if x not in nodes]
        if missing:
            errors.append(f"edge ({a!r}, {b!r}) names missing node {missing[0]!r}")
            continue
        if (a, b) in seen_edges:
            errors.append(f"duplicate edge ({a!r}, {b!r})")
            continue
        seen_edges.add((a, b))
        preds[b].append(a)
        succs[a].append(b)
    for n, t in types.items():
        if t not in KNOWN_TYPES or t == "NIRGraph":
            unsupported.append(f"node {n!r}: type {t} is not supported")
        errors.extend(_param_problems(n, nodes[n]))
    inputs = [n for n, t in types.items() if t == "Input"]
    outputs = [n for n, t in types.items() if t == "Output"]
    if not inputs:
        errors.append("graph has no Input node")
    if not outputs:
        errors.append("graph has no Output node")
    for n in inputs:
        if preds[n]:
            errors.append(f"Input node {n!r} has incoming edges")
    for n in outputs:
        if succs[n]:
            errors.append(f"Output node {n!r} has outgoing edges")
    for n in nodes:
        if not preds[n] and types[n] != "Input":
            errors.append(f"node {n!r} has no incoming edge and is not an Input")

    # DFS from inputs (then any leftover node) to find back edges.
    back = back_edges(inputs + sorted(n for n in nodes if n not in inputs), succs)
    backset = set(back)
    # Kahn on the forward edges, stable in insertion order.
    indeg = {n: sum(1 for p in preds[n] if (p, n) not in backset) for n in nodes}
    ready = [n for n in nodes if indeg[n] == 0]
    order: list[str] = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for s in succs[n]:
            if (n, s) in backset:
                continue
            indeg[s] -= 1
            if indeg[s] == 0:
                ready.append(s)

    shapes: dict[str, tuple[int, ...]] = {}
    in_shapes: dict[str, tuple[int, ...]] = {}
    for n in order:
        if types[n] not in KNOWN_TYPES or types[n] == "NIRGraph":
            continue
        fwd = [p for p in preds[n] if (p, n) not in backset]
        pshapes = {p: shapes[p] for p in fwd if p in shapes}
        if len(fwd) != len(pshapes):
            continue  # a predecessor already failed
        pin = None
        if pshapes:
            distinct = set(pshapes.values())
            if len(distinct) > 1:
                errors.append(f"node {n!r}: incoming edges carry different shapes "
                              + ", ".join(f"{p}:{s}" for p, s in pshapes.items()))
                continue
            pin = distinct.pop()
        try:
            expected, out = _shape_fn(nodes[n], pin)
        except Exception as e:  # noqa: BLE001
            errors.append(f"node {n!r} ({types[n]}): {e}")
            continue
        if pin is not None and expected is not None and tuple(expected) != tuple(pin):
            errors.append(f"node {n!r} ({types[n]}) expects input shape {tuple(expected)} "
                          f"but receives {tuple(pin)} from {', '.join(pshapes)}")
            continue
        in_shapes[n] = tuple(pin) if pin is not None else tuple(expected if expected is not None else out)
        shapes[n] = tuple(int(v) for v in out)
    for a, b in back:
        if a in shapes and b in in_shapes and shapes[a] != in_shapes[b]:
            errors.append(f"back edge ({a!r}, {b!r}) carries shape {shapes[a]} "
                          f"but {b!r} takes {in_shapes[b]}")

    for n in nodes:  # our metadata, validated up front so every problem is reported
        if types[n] in ("IF", "LIF", "CubaLIF", "LI", "I", "CubaLI"):
            try:
                neuron_semantics(nodes[n], n, None, shapes.get(n), windowed=True)
            except GraphError as e:
                errors.append(e.rule if e.place is None else f"{e.place}: {e.rule}")
    try:
        graph_meta(graph)
    except GraphError as e:
        errors.append(f"{e.place}: {e.rule}")

    if errors:
        raise GraphError("; ".join(errors + unsupported), file, "graph")
    if unsupported:
        raise UnsupportedError("; ".join(unsupported), file, "graph")
    return GraphInfo(order=order, preds=preds, succs=succs, shapes=shapes,
                     in_shapes=in_shapes, inputs=inputs, outputs=outputs,
                     back_edges=back, types=types, file=file)


# ----------------------------------------------------------------------------------
# metadata
# ----------------------------------------------------------------------------------

RESETS = ("zero", "subtract")
THRESHOLD_TESTS = ("gt", "ge")
READOUTS = ("sum", "count")


def _meta(obj) -> dict:
    md = getattr(obj, "metadata", None) or {}
    sb = md.get(META_KEY, {}) if isinstance(md, dict) else {}
    return sb if isinstance(sb, dict) else {}


def _finite_value(v, what: str, file, place, shape=None):
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise GraphError(f"{what} must be a number or array", file, place) from None
    if not np.all(np.isfinite(a)):
        raise GraphError(f"{what} must be finite", file, place)
    if shape is not None and a.ndim:
        try:
            if np.broadcast_shapes(a.shape, tuple(shape)) != tuple(shape):
                raise ValueError
        except ValueError:
            raise GraphError(f"{what} of shape {a.shape} does not fit the node shape "
                             f"{tuple(shape)}", file, place) from None
    return float(a) if a.ndim == 0 else a


def neuron_semantics(node, name: str | None = None, file: str | None = None,
                     shape: tuple | None = None, windowed: bool = False) -> dict:
    """reset, threshold_test, v_init, spike_amplitude from node.metadata['spikebridge']
    (defaults: zero, gt, 0.0, 1.0).

    ``reset: "window"`` with ``window: W`` is the count-then-emit IF neuron of the parallel
    conversion (docs in README, NIR conventions): it integrates W steps without firing,
    then emits one graded spike k * spike_amplitude, k = clip(floor(v / theta), 0, W), and
    restarts from v_init. Only consumers that implement it pass ``windowed=True`` (eventsim's
    float kernels); for every other one it is an error, never a silent plain IF."""
    sb = _meta(node)
    place = f"node {name!r} metadata {META_KEY}" if name else f"metadata {META_KEY}"
    reset = sb.get("reset", "zero")
    test = sb.get("threshold_test", "gt")
    if reset == "window":
        if not windowed:
            raise GraphError("reset 'window' (count-then-emit neuron) is only implemented by eventsim "
                             "(float modes)", file, place)
        w = sb.get("window")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not float(w).is_integer() or int(w) < 1:
            raise GraphError(f"window {w!r} must be a positive integer (steps)", file, place)
        return {"reset": reset, "threshold_test": "ge", "window": int(w),
                "v_init": _finite_value(sb.get("v_init", 0.0), "v_init", file, place, shape),
                "spike_amplitude": _finite_value(sb.get("spike_amplitude", 1.0), "spike_amplitude",
                                                 file, place, shape)}
    if reset not in RESETS:
        raise GraphError(f"reset {reset!r} is not one of {RESETS}", file, place)
    if test not in THRESHOLD_TESTS:
        raise GraphError(f"threshold_test {test!r} is not one of {THRESHOLD_TESTS}", file, place)
    return {
        "reset": reset,
        "threshold_test": test,
        "v_init": _finite_value(sb.get("v_init", 0.0), "v_init", file, place, shape),
        "spike_amplitude": _finite_value(sb.get("spike_amplitude", 1.0), "spike_amplitude",
                                         file, place, shape),
    }


def graph_meta(graph: nir.NIRGraph, file: str | None = None) -> dict:
    """dt (default 1.0), timesteps (or None), readout (default: 'count' when the Output's
    predecessor is a spiking neuron node, else 'sum'), plus every other field as is."""
    sb = dict(_meta(graph))
    place = f"graph metadata {META_KEY}"
    dt = sb.get("dt", 1.0)
    try:
        dt = float(dt)
    except (TypeError, ValueError):
        raise GraphError(f"dt {dt!r} is not a number", file, place) from None
    if not (math.isfinite(dt) and dt > 0):
        raise GraphError(f"dt {dt!r} must be finite and > 0", file, place)
    ts = sb.get("timesteps")
    if ts is not None:
        if isinstance(ts, bool) or not float(ts).is_integer() or int(ts) < 1:
            raise GraphError(f"timesteps {ts!r} must be a positive integer", file, place)
        ts = int(ts)
    readout = sb.get("readout")
    if readout is None:
        readout = "sum"
        outs = [n for n, v in graph.nodes.items() if node_type(v) == "Output"]
        for o in outs:
            ps = [a for a, b in graph.edges if b == o]
            if ps and all(node_type(graph.nodes[p]) in SPIKING_TYPES for p in ps if p in graph.nodes):
                readout = "count"
    if readout not in READOUTS:
        raise GraphError(f"readout {readout!r} is not one of {READOUTS}", file, place)
    sb.update(dt=dt, timesteps=ts, readout=readout)
    return sb


def classify(output_TBN: np.ndarray, readout: str, membrane_TBN: np.ndarray | None = None
             ) -> np.ndarray:
    """Predicted class per sample from an output (T, B, n_classes).

    sum:   argmax of the output summed over T, ties to the lower index.
    count: most output spikes (nonzero entries over T); ties to the larger summed
           membrane (``membrane_TBN``, else the summed output), then the lower index.
    """
    y = np.asarray(output_TBN)
    if y.ndim != 3:
        raise GraphError(f"output must be (T, B, n_classes), got shape {y.shape}", None, "classify")
    if readout == "sum":
        return np.argmax(y.sum(axis=0), axis=-1)
    if readout == "count":
        counts = (y != 0).sum(axis=0)
        tie = (np.asarray(membrane_TBN) if membrane_TBN is not None else y).astype(np.float64).sum(axis=0)
        n = y.shape[2]
        idx = np.broadcast_to(np.arange(n), counts.shape)
        # lexsort: last key is primary; pick the max count, then max tie, then min index
        keys = (-idx, tie, counts)
        order = np.lexsort(keys, axis=-1)
        return order[..., -1]
    raise GraphError(f"readout {readout!r} is not one of {READOUTS}", None, "classify")


__all__ = ["LoadLimits", "GraphInfo", "load_graph", "analyse", "neuron_semantics",
           "graph_meta", "classify", "conv_geometry", "SPIKING_TYPES", "NEURON_TYPES",
           "SYNAPSE_TYPES", "META_KEY", "node_type"]

