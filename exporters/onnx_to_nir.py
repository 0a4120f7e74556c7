"""ONNX ReLU/Clip ANN -> IF SNN as a NIR graph, with data-based threshold balancing.

    graph, report = convert_onnx(model_or_path, calibration, timesteps=T)
    spikebridge convert model.onnx --timesteps T --calibration digits|X.npy --out graph.nir

Accepted operators: Gemm, MatMul (+ Add of a bias), Conv (2-D, symmetric pads), Relu,
Clip (min 0), AveragePool / GlobalAveragePool (no ceil_mode; pads only with
count_include_pad = 1), Flatten / Reshape to (N, -1), BatchNormalization (folded into
the preceding Conv/Gemm, else a diagonal 1x1 Conv or Affine), Add of two tensors
(residual: several edges into one NIR node), Identity, Dropout, Constant, and a final
Softmax / LogSoftmax (argmax-invariant, dropped). Anything else is rejected with one
UnsupportedError listing every offending node (MaxPool included: a max over spike
trains is not the spike train of the max, so an IF network has no exact equivalent;
use AveragePool or a strided Conv).

Conversion scheme (Rueckauer et al., Front. Neurosci. 2017; Han et al., CVPR 2020;
Bu et al., ICLR 2022), chosen because it is the most accurate at small T among schemes
that stay plain IF neurons with binary spikes:

- Threshold balancing: each ReLU becomes an IF population whose threshold is the
  layer's robust maximum activation lambda = the ``percentile`` (default 99.9) of its
  positive activations over the calibration set (Clip(0, m): min(lambda, m)). Spikes stay
  binary; the next layer's weights are multiplied by lambda of their source, so a spike
  carries the value lambda (weight normalisation and threshold balancing are the same
  network up to a per-layer scale; this form keeps the biases and the input untouched
  and lets residual paths meet in one unit: a spiking path into a sum gets a Scale node
  of lambda).
- Soft reset (``reset: subtract``: no charge lost above threshold) and v(0) = theta/2
  (``v_init``: the rate rounds instead of flooring, halving the quantisation error),
  strict ``>`` (plain NIR's test). Both live in the ``spikebridge`` node metadata; a
  reader that ignores it sees hard reset to 0 from v(0) = 0.
- Direct encoding: the model's (preprocessed) input values are the Input at every step;
  biases are injected at every step (per-step ANN units).
- Readout ``sum`` (default): the classifier is an analog Affine whose output summed over
  T approximates the ONNX logits (weights and bias divided by T); class = argmax. The
  spiking alternative ``count`` puts an IF population (threshold = the logits'
  percentile) on the logits and takes the most spikes; it loses accuracy when a logit
  is negative or two classes saturate, so it is opt-in. ``readout`` in the graph
  metadata says which one a graph uses.

The ONNX file is loaded with the one safe loader (exporters/onnx_load.py: bounded parse,
every tensor of every graph and function checked, external data only inside the
model's directory). Before converting, the parsed network is evaluated in
float64 and compared with onnxruntime on the calibration samples, so an operator whose
semantics were misread is an error, not a silently wrong graph.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nir
import numpy as np
import onnx
from onnx import numpy_helper

from spikebridge.base.errors import DatasetError, InputError, ResourceError, UnsupportedError

from spikebridge.base.dialect import META_KEY  # noqa: E402
MAX_CALIBRATION_BYTES = 2 << 30
# float64 self-check: the activations kept for calibration, and separately the working set of
# one chunk of samples, each at most this (evaluated in chunks; a network whose single sample
# does not fit is refused before anything is allocated)
MAX_EVAL_BYTES = 1 << 30
DEFAULT_PERCENTILE = 99.9
SUPPORTED_OPS = ("Gemm", "MatMul", "Add", "Conv", "Relu", "Clip", "AveragePool", "GlobalAveragePool",
                 "Flatten", "Reshape", "BatchNormalization", "Identity", "Dropout", "Constant", "Softmax",
                 "LogSoftmax")


from spikebridge.exporters.onnx_load import OnnxModelError, load_onnx  # noqa: E402


# ----------------------------------------------------------------------------------
# safe loading
# ----------------------------------------------------------------------------------

def load_onnx_safely(path) -> onnx.ModelProto:
    """The one safe ONNX loader (exporters/onnx_load.py: bounded parse, every tensor of
    every graph and function checked, external data only inside the model's directory)."""
    return load_onnx(path)


# ----------------------------------------------------------------------------------
# parsing into a small layer list
# ----------------------------------------------------------------------------------

@dataclass
class Layer:
    """One operation of the parsed network (no batch dimension in shapes)."""
    kind: str  # input | affine | conv | avgpool | flatten | add | relu
    name: str
    srcs: list
    shape: tuple
    params: dict = field(default_factory=dict)


MAX_TENSOR_ELEMENTS = 1 << 31


def _tensor(t, file) -> np.ndarray:
    """An initializer or Constant as numpy, with its declared dims checked first."""
    dims = [int(d) for d in t.dims]
    if any(d < 0 for d in dims) or int(np.prod([float(d) for d in dims])) > MAX_TENSOR_ELEMENTS:
        raise OnnxModelError(f"dims {dims} are negative or exceed {MAX_TENSOR_ELEMENTS} elements", file,
                             f"tensor {t.name!r}")
    try:
        arr = numpy_helper.to_array(t)
    except Exception as e:  # noqa: BLE001 - malformed data (size vs dims, unknown type)
        raise OnnxModelError(f"tensor data does not match its dims/type ({type(e).__name__})", file,
                             f"tensor {t.name!r}") from None
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise OnnxModelError("tensor has NaN or Inf values", file, f"tensor {t.name!r}")
    return arr


MAX_ATTR = 1 << 16  # strides, dilations, pads and kernel sizes beyond this are not networks


def _ints(a: dict, key: str, default: list, n: int, lo: int, what: str) -> list[int]:
    """An integer-list attribute of length ``n`` with every value in lo..MAX_ATTR, else _Skip."""
    v = a.get(key, default)
    try:
        v = [int(x) for x in v]
    except (TypeError, ValueError):
        raise _Skip(f"{key} must be a list of integers, is {v!r}") from None
    if len(v) != n:
        raise _Skip(f"{key} {v} must have {n} values ({what})")
    if any(x < lo or x > MAX_ATTR for x in v):
        raise _Skip(f"{key} {v} must be integers in {lo}..{MAX_ATTR}")
    return v


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", s).strip("_") or "node"


class _Parser:
    def __init__(self, model: onnx.ModelProto, file: str | None, input_shape=None):
        self.model, self.file = model, file
        g = model.graph
        self.consts = {t.name: _tensor(t, file) for t in g.initializer}
        self.layers: list[Layer] = []
        self.value: dict[str, int] = {}  # ONNX tensor name -> layer index
        self.uses: dict[str, int] = {}
        for n in g.node:
            for i in n.input:
                self.uses[i] = self.uses.get(i, 0) + 1
        for o in g.output:
            self.uses[o.name] = self.uses.get(o.name, 0) + 1
        self.problems: list[str] = []
        self.names: set = set()
        self.final_softmax: str | None = None  # a dropped final Softmax/LogSoftmax
        dyn = [i for i in g.input if i.name not in self.consts]
        if len(dyn) != 1:
            raise OnnxModelError(f"the model must have exactly one (non-initializer) input, has "
                                 f"{[i.name for i in dyn]}", file)
        if len(g.output) != 1:
            raise OnnxModelError(f"the model must have exactly one output, has {[o.name for o in g.output]}", file)
        self.input_name = dyn[0].name
        dims = dyn[0].type.tensor_type.shape.dim
        declared = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if len(declared) < 2:
            raise OnnxModelError(f"input {self.input_name!r} must be (N, ...), declared {declared}", file)
        self.batch_dim = declared[0]
        shape = tuple(declared[1:])
        if input_shape is not None:
            input_shape = tuple(int(s) for s in input_shape)
            if len(input_shape) != len(shape) or any(a is not None and a != b for a, b in zip(shape, input_shape)):
                raise DatasetError(f"calibration samples have shape {input_shape}, the model's input "
                                   f"{self.input_name!r} is (N, {', '.join(str(s) for s in shape)})", file)
            shape = input_shape
        if any(s is None or s < 1 for s in shape):
            raise OnnxModelError(f"input {self.input_name!r} has symbolic non-batch dimensions {declared}; "
                                 "give calibration samples so the shape is known", file)
        self.add_layer("input", "input", [], shape)
        self.value[self.input_name] = 0

    def name_for(self, node, suffix=""):
        base = _safe_name((node.name or node.op_type) + suffix)
        nm, k = base, 1
        while nm in self.names or nm in ("input", "output"):
            k += 1
            nm = f"{base}_{k}"
        self.names.add(nm)
        return nm

    def add_layer(self, kind, name, srcs, shape, **params) -> int:
        self.layers.append(Layer(kind, name, list(srcs), tuple(int(s) for s in shape), params))
        return len(self.layers) - 1

    def where(self, node):
        return f"node {node.name or '?'} ({node.op_type})"

    def const(self, name):
        return self.consts.get(name)

    def parse(self) -> tuple[list[Layer], int]:
        g = self.model.graph
        for node in g.node:
            if node.op_type not in SUPPORTED_OPS:
                hint = {"MaxPool": ": a max over spike trains has no exact IF equivalent; use AveragePool or a "
                                   "strided Conv"}.get(node.op_type, "")
                self.problems.append(f"{self.where(node)}: operator {node.op_type} is not supported{hint}")
                continue
            try:
                getattr(self, f"op_{node.op_type}")(node, _attrs(node))
            except _Skip as e:
                self.problems.append(f"{self.where(node)}: {e}")
            except (ValueError, TypeError, IndexError, KeyError, OverflowError, ZeroDivisionError) as e:
                msg = " ".join(str(e).split())[:160] or type(e).__name__
                self.problems.append(f"{self.where(node)}: malformed attributes or inputs ({msg})")
        if self.problems:
            raise UnsupportedError("cannot convert: " + "; ".join(self.problems), self.file, "graph")
        out = g.output[0].name
        if out not in self.value:
            raise OnnxModelError(f"the output {out!r} does not depend on the input", self.file)
        return self.layers, self.value[out]

    # -- helpers ---------------------------------------------------------------------
    def src(self, node, i=0) -> int:
        nm = node.input[i]
        if nm not in self.value:
            if nm in self.consts:
                raise _Skip(f"input {nm!r} is a constant where a tensor from the model's input is expected")
            raise _Skip(f"input {nm!r} comes from an unsupported operator")
        return self.value[nm]

    def alias(self, node, idx):
        self.value[node.output[0]] = idx

    def foldable(self, node, idx) -> bool:
        """True when the producer of node.input[0] is a Conv/affine read only by ``node``."""
        return (self.layers[idx].kind in ("affine", "conv") and self.uses.get(node.input[0], 0) == 1
                and not self.layers[idx].params.get("_shared"))

    # -- operators ---------------------------------------------------------------------
    def op_Identity(self, node, a):
        self.alias(node, self.src(node))

    op_Dropout = op_Identity

    def op_Softmax(self, node, a):
        if any(o.name == node.output[0] for o in self.model.graph.output):
            if int(a.get("axis", -1)) not in (-1, 1):
                raise _Skip("only a Softmax over the class axis is supported")
            self.final_softmax = node.op_type
            self.alias(node, self.src(node))  # argmax-invariant final normalisation
        else:
            raise _Skip("Softmax is only accepted as the model's final operator")

    op_LogSoftmax = op_Softmax

    def op_Constant(self, node, a):
        if "value" in a:
            self.consts[node.output[0]] = _tensor(a["value"], self.file)
        elif "value_float" in a or "value_floats" in a:
            self.consts[node.output[0]] = np.asarray(a.get("value_float", a.get("value_floats")), np.float32)
        elif "value_int" in a or "value_ints" in a:
            self.consts[node.output[0]] = np.asarray(a.get("value_int", a.get("value_ints")), np.int64)
        else:
            raise _Skip("Constant without a numeric value")

    def _dense(self, node, src, w, b):
        shp = self.layers[src].shape
        if len(shp) != 1:
            raise _Skip(f"needs a 2-D input (N, features), gets (N, {shp})")
        if w.shape[1] != shp[0]:
            raise _Skip(f"weight {w.shape} does not fit {shp[0]} input features")
        self.alias(node, self.add_layer("affine", self.name_for(node), [src], (w.shape[0],),
                                        weight=w.astype(np.float64), bias=b.astype(np.float64)))

    def op_Gemm(self, node, a):
        src = self.src(node)
        B = self.const(node.input[1])
        if B is None or B.ndim != 2:
            raise _Skip("the weight (input B) must be a constant matrix")
        if a.get("transA", 0):
            raise _Skip("transA = 1 is not supported")
        if not all(np.isfinite(float(a.get(k, 1.0))) for k in ("alpha", "beta")):
            raise _Skip("alpha and beta must be finite")
        w = (B if a.get("transB", 0) else B.T) * float(a.get("alpha", 1.0))  # (out, in)
        b = np.zeros(w.shape[0])
        if len(node.input) > 2 and node.input[2]:
            C = self.const(node.input[2])
            if C is None:
                raise _Skip("the bias (input C) must be a constant")
            if C.size not in (1, w.shape[0]):
                raise _Skip(f"the bias (input C) has {C.size} values, the layer {w.shape[0]} outputs")
            b = np.broadcast_to(np.asarray(C, np.float64).reshape(-1), (w.shape[0],)) * float(a.get("beta", 1.0))
        self._dense(node, src, w, np.array(b))

    def op_MatMul(self, node, a):
        src = self.src(node)
        B = self.const(node.input[1])
        if B is None or B.ndim != 2:
            raise _Skip("the second input must be a constant matrix")
        self._dense(node, src, B.T, np.zeros(B.shape[1]))

    def op_Conv(self, node, a):
        src = self.src(node)
        W = self.const(node.input[1])
        shp = self.layers[src].shape
        if W is None or W.ndim != 4 or len(shp) != 3:
            raise _Skip("only 2-D convolutions with a constant weight on (N, C, H, W) inputs are supported")
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise _Skip("auto_pad SAME_* is not supported; give explicit pads")
        pads = _ints(a, "pads", [0, 0, 0, 0], 4, 0, "begin and end of both spatial axes")
        if pads[:2] != pads[2:]:
            raise _Skip(f"asymmetric pads {pads} cannot be written as NIR Conv2d padding")
        stride = _ints(a, "strides", [1, 1], 2, 1, "one per spatial axis")
        dil = _ints(a, "dilations", [1, 1], 2, 1, "one per spatial axis")
        if "kernel_shape" in a and _ints(a, "kernel_shape", [], 2, 1, "one per spatial axis") != list(W.shape[2:]):
            raise _Skip(f"kernel_shape {list(a['kernel_shape'])} does not match the weight {W.shape}")
        if min(W.shape) < 1:
            raise _Skip(f"empty weight {W.shape}")
        groups = int(a.get("group", 1))
        if groups < 1 or W.shape[0] % groups or W.shape[1] * groups != shp[0]:
            raise _Skip(f"weight {W.shape} with group {groups} does not fit {shp[0]} input channels")
        b = np.zeros(W.shape[0])
        if len(node.input) > 2 and node.input[2]:
            B = self.const(node.input[2])
            if B is None:
                raise _Skip("the bias must be a constant")
            b = np.asarray(B, np.float64).reshape(-1)
            if b.shape != (W.shape[0],):
                raise _Skip(f"the bias has {b.size} values, the weight {W.shape[0]} output channels")
        span = [dil[d] * (W.shape[2 + d] - 1) + 1 for d in range(2)]
        if any(span[d] > shp[1 + d] + 2 * pads[d] for d in range(2)):
            raise _Skip(f"the kernel {tuple(W.shape[2:])} (dilation {dil}) spans {span}, more than the padded "
                        f"input {[shp[1 + d] + 2 * pads[d] for d in range(2)]}")
        out = [(shp[1 + d] + 2 * pads[d] - span[d]) // stride[d] + 1 for d in range(2)]
        self.alias(node, self.add_layer("conv", self.name_for(node), [src], (W.shape[0], *out),
                                        weight=W.astype(np.float64), bias=b, stride=stride, padding=pads[:2],
                                        dilation=dil, groups=groups))

    def op_BatchNormalization(self, node, a):
        src = self.src(node)
        gamma, beta, mean, var = (self.const(n) for n in node.input[1:5])
        if any(v is None for v in (gamma, beta, mean, var)):
            raise _Skip("scale, bias, mean and variance must be constants (inference mode)")
        ch = self.layers[src].shape[0]
        if any(np.asarray(v).size not in (1, ch) for v in (gamma, beta, mean, var)):
            raise _Skip(f"scale, bias, mean and variance must have 1 or {ch} values")
        eps = float(a.get("epsilon", 1e-5))
        if not np.all(np.asarray(var, np.float64) + eps > 0):
            raise _Skip("variance + epsilon must be > 0")
        with np.errstate(all="ignore"):
            s = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
            c = np.asarray(beta, np.float64) - s * np.asarray(mean, np.float64)
        if not (np.all(np.isfinite(s)) and np.all(np.isfinite(c))):
            raise _Skip("the folded scale or shift is not finite")
        self._channel_affine(node, src, s, c)

    def _channel_affine(self, node, src, s, c):
        L = self.layers[src]
        ch = L.shape[0]
        s = np.broadcast_to(s.reshape(-1), (ch,)).astype(np.float64)
        c = np.broadcast_to(c.reshape(-1), (ch,)).astype(np.float64)
        if self.foldable(node, src):
            w = L.params["weight"]
            L.params["weight"] = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
            L.params["bias"] = L.params["bias"] * s + c
            self.alias(node, src)
        elif len(L.shape) == 3:  # diagonal 1x1 conv (groups = 1 keeps nir's type inference happy)
            self.alias(node, self.add_layer("conv", self.name_for(node), [src], L.shape,
                                            weight=np.diag(s).reshape(ch, ch, 1, 1), bias=c, stride=[1, 1],
                                            padding=[0, 0], dilation=[1, 1], groups=1))
        elif len(L.shape) == 1:
            self.alias(node, self.add_layer("affine", self.name_for(node), [src], L.shape,
                                            weight=np.diag(s), bias=c))
        else:
            raise _Skip(f"per-channel affine on shape {L.shape} is not supported")

    def op_Add(self, node, a):
        ca, cb = self.const(node.input[0]), self.const(node.input[1])
        if ca is None and cb is None:
            x, y = self.src(node, 0), self.src(node, 1)
            if self.layers[x].shape != self.layers[y].shape:
                raise _Skip(f"broadcasting add of shapes {self.layers[x].shape} and {self.layers[y].shape}")
            for i in (x, y):
                self.layers[i].params["_shared"] = True
            self.alias(node, self.add_layer("add", self.name_for(node), [x, y], self.layers[x].shape))
            return
        if ca is not None and cb is not None:
            self.consts[node.output[0]] = ca + cb
            return
        i = 1 if ca is not None else 0
        c = np.asarray(ca if ca is not None else cb, np.float64)
        src = self.src(node, i)
        L = self.layers[src]
        ch = L.shape[0]
        if c.size not in (1, ch) or not self.foldable(node, src):
            raise _Skip("adding a constant is supported only as the bias of the Conv/Gemm/MatMul before it")
        squeezed = c.reshape(-1)
        if c.size == ch and len(L.shape) == 3 and c.ndim >= 3 and c.shape[-1] != 1:
            raise _Skip(f"constant of shape {c.shape} is not per channel")
        self._channel_affine(node, src, np.ones(ch), np.broadcast_to(squeezed, (ch,)))

    def op_Relu(self, node, a):
        src = self.src(node)
        self.layers[src].params["_shared"] = True
        self.alias(node, self.add_layer("relu", self.name_for(node), [src], self.layers[src].shape, clip=None))

    def op_Clip(self, node, a):
        src = self.src(node)
        lo, hi = a.get("min"), a.get("max")
        if len(node.input) > 1 and node.input[1]:
            lo = self.const(node.input[1])
        if len(node.input) > 2 and node.input[2]:
            hi = self.const(node.input[2])
        if any(v is not None and np.asarray(v).size != 1 for v in (lo, hi)):
            raise _Skip("Clip min and max must be scalars")
        if lo is None or float(np.asarray(lo)) != 0.0:
            raise _Skip(f"Clip must have min = 0 (a ReLU with an optional ceiling), has min {lo}")
        hi = None if hi is None else float(np.asarray(hi))
        if hi is not None and not hi > 0:
            raise _Skip(f"Clip max {hi} must be > 0")
        self.layers[src].params["_shared"] = True
        self.alias(node, self.add_layer("relu", self.name_for(node), [src], self.layers[src].shape, clip=hi))

    def op_AveragePool(self, node, a):
        src = self.src(node)
        shp = self.layers[src].shape
        if len(shp) != 3:
            raise _Skip("only 2-D pooling on (N, C, H, W) is supported")
        if "kernel_shape" not in a:
            raise _Skip("kernel_shape is required")
        k = _ints(a, "kernel_shape", [], 2, 1, "one per spatial axis")
        stride = _ints(a, "strides", [1, 1], 2, 1, "one per spatial axis")
        pads = _ints(a, "pads", [0, 0, 0, 0], 4, 0, "begin and end of both spatial axes")
        if _ints(a, "dilations", [1, 1], 2, 1, "one per spatial axis") != [1, 1]:
            raise _Skip("dilated pooling is not supported")
        if any(p > kk // 2 for p, kk in zip(pads[:2], k)):
            raise _Skip(f"pads {pads} must be at most half the kernel {k}")
        if any(kk > n + 2 * p for kk, n, p in zip(k, shp[1:], pads[:2])):
            raise _Skip(f"the kernel {k} is larger than the padded input {[n + 2 * p for n, p in zip(shp[1:], pads[:2])]}")
        if a.get("ceil_mode", 0):
            raise _Skip("ceil_mode = 1 is not supported")
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise _Skip("auto_pad SAME_* is not supported")
        if pads[:2] != pads[2:]:
            raise _Skip(f"asymmetric pads {pads}")
        if any(pads) and not a.get("count_include_pad", 0):
            raise _Skip("padded AveragePool needs count_include_pad = 1 (NIR AvgPool2d divides by the kernel size)")
        self._pool(node, src, k, stride, pads[:2])

    def op_GlobalAveragePool(self, node, a):
        src = self.src(node)
        shp = self.layers[src].shape
        if len(shp) != 3:
            raise _Skip("only (N, C, H, W) inputs are supported")
        self._pool(node, src, list(shp[1:]), list(shp[1:]), [0, 0])

    def _pool(self, node, src, k, stride, pad):
        c, h, w = self.layers[src].shape
        out = [(n + 2 * p - kk) // s + 1 for n, p, kk, s in zip((h, w), pad, k, stride)]
        self.alias(node, self.add_layer("avgpool", self.name_for(node), [src], (c, *out), kernel=k,
                                        stride=stride, padding=pad))

    def op_Flatten(self, node, a):
        src = self.src(node)
        if int(a.get("axis", 1)) != 1:
            raise _Skip("only axis = 1 is supported")
        self._flatten(node, src)

    def _flatten(self, node, src):
        shp = self.layers[src].shape
        if len(shp) == 1:
            self.alias(node, src)
            return
        self.alias(node, self.add_layer("flatten", self.name_for(node), [src], (int(np.prod(shp)),)))

    def op_Reshape(self, node, a):
        src = self.src(node)
        target = self.const(node.input[1])
        if target is None:
            raise _Skip("the target shape must be a constant")
        target = [int(v) for v in np.asarray(target).reshape(-1)]
        n = int(np.prod(self.layers[src].shape))
        if len(target) != 2 or target[1] not in (-1, n):
            raise _Skip(f"only a flatten to (N, {n}) is supported, not {target}")
        self._flatten(node, src)


class _Skip(Exception):
    pass


# ----------------------------------------------------------------------------------
# float64 evaluation of the layer list (calibration and the self-check)
# ----------------------------------------------------------------------------------

def evaluate_layers(layers: list[Layer], x: np.ndarray, keep=None) -> dict[int, np.ndarray]:
    """Every layer's output for x (N, *input_shape), float64 (torch kernels)."""
    import torch
    from torch.nn import functional as F

    vals: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for i, L in enumerate(layers):
            p = L.params
            if L.kind == "input":
                y = torch.as_tensor(np.asarray(x, np.float64))
            else:
                h = vals[L.srcs[0]]
                if L.kind == "affine":
                    y = F.linear(h, torch.from_numpy(p["weight"]), torch.from_numpy(np.asarray(p["bias"])))
                elif L.kind == "conv":
                    y = F.conv2d(h, torch.from_numpy(p["weight"]), torch.from_numpy(np.asarray(p["bias"])),
                                 stride=p["stride"], padding=p["padding"], dilation=p["dilation"],
                                 groups=p["groups"])
                elif L.kind == "avgpool":
                    y = F.avg_pool2d(h, p["kernel"], p["stride"], p["padding"], count_include_pad=True)
                elif L.kind == "flatten":
                    y = h.reshape(h.shape[0], -1)
                elif L.kind == "add":
                    y = h + vals[L.srcs[1]]
                elif L.kind == "relu":
                    y = h.clamp(min=0) if p["clip"] is None else h.clamp(0, p["clip"])
                else:
                    raise AssertionError(L.kind)
            vals[i] = y
    return {i: v.numpy() for i, v in vals.items() if keep is None or i in keep}


def eval_cost(layers: list[Layer]) -> tuple[int, str]:
    """(bytes per sample of ``evaluate_layers``' working set in float64, the layer that
    dominates it): every layer's output is held, plus the largest convolution's padded input
    and unfolded patches (im2col)."""
    held = 8 * sum(int(np.prod(L.shape, dtype=np.float64)) for L in layers)
    work, worst, worst_bytes = 0, layers[0].name, 0
    for L in layers:
        size = 8 * int(np.prod(L.shape, dtype=np.float64))
        if L.kind in ("conv", "avgpool"):
            p = L.params
            c_in = int(L.shape[0]) if L.kind == "avgpool" else int(p["weight"].shape[1]) * int(p["groups"])
            k = p["kernel"] if L.kind == "avgpool" else list(p["weight"].shape[2:])
            hw_out = int(L.shape[1]) * int(L.shape[2])
            cols = c_in // (1 if L.kind == "avgpool" else int(p["groups"])) * int(np.prod(k)) * hw_out
            padded = c_in * int(np.prod([n + 2 * q for n, q in zip(L.shape[1:], p["padding"])], dtype=np.float64))
            size += 8 * (cols + padded)
            work = max(work, 8 * (cols + padded))
        if size > worst_bytes:
            worst, worst_bytes = L.name, size
    return held + work, worst


def evaluate_chunked(layers: list[Layer], x: np.ndarray, keep: set, max_bytes: int = MAX_EVAL_BYTES,
                     file: str | None = None) -> dict[int, np.ndarray]:
    """``evaluate_layers`` over chunks of samples so that neither the working set of a chunk
    nor the kept outputs exceed ``max_bytes``; refused (ResourceError, naming the layer) when
    one sample alone does not fit."""
    per_sample, worst = eval_cost(layers)
    if per_sample > max_bytes:
        raise ResourceError(f"the float64 self-check would need {per_sample / 2**30:.1f} GiB per sample (layer "
                            f"{worst!r}), above the {max_bytes / 2**30:.1f} GiB limit: check the layer's pads, "
                            "strides and sizes", file, f"node {worst}")
    kept = 8 * len(x) * sum(int(np.prod(layers[i].shape, dtype=np.float64)) for i in keep)
    if kept > max_bytes:
        raise ResourceError(f"the calibration activations of {len(x)} samples need {kept / 2**30:.1f} GiB, above "
                            f"the {max_bytes / 2**30:.1f} GiB limit: lower --calibration-limit", file)
    chunk = max(1, int(max_bytes // per_sample))
    parts = [evaluate_layers(layers, x[i:i + chunk], keep=keep) for i in range(0, len(x), chunk)]
    return {i: np.concatenate([p[i] for p in parts]) for i in keep}


def run_onnx(model: onnx.ModelProto, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """The model's output for x (N, *input_shape) in onnxruntime (chunks; a fixed batch
    dimension is honoured by padding the last chunk)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # onnxruntime's own (coloured) warnings must not reach stderr:
    so = ort.SessionOptions()           # its errors become our one error line
    so.log_severity_level = 4
    ro = ort.RunOptions()
    ro.log_severity_level = 4
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    step = fixed or batch
    outs = []
    x = np.asarray(x, np.float32)
    for i in range(0, len(x), step):
        xb = x[i:i + step]
        n = len(xb)
        if fixed and n < fixed:
            xb = np.concatenate([xb, np.zeros((fixed - n, *xb.shape[1:]), np.float32)])
        outs.append(sess.run(None, {inp.name: xb}, ro)[0][:n])
    return np.concatenate(outs)


# ----------------------------------------------------------------------------------
# conversion
# ----------------------------------------------------------------------------------

def _layer_threshold(act: np.ndarray, percentile: float, clip: float | None) -> float:
    pos = act[act > 0]
    lam = float(np.percentile(pos, percentile)) if pos.size else 1.0
    if clip is not None:
        lam = min(lam, clip)
    return lam if lam > 0 else 1.0


def convert_onnx(model, calibration: np.ndarray, timesteps: int, percentile: float = DEFAULT_PERCENTILE,
                 readout: str = "sum", file: str | None = None, check_tolerance: float = 1e-4
                 ) -> tuple[nir.NIRGraph, dict]:
    """ONNX model (or path) + calibration samples (N, *input_shape) -> (NIR graph, report).

    report: per-layer thresholds, the self-check's max difference to onnxruntime, and
    the conversion settings (also stored in the graph's metadata)."""
    if not isinstance(model, onnx.ModelProto):
        file = str(model)
        model = load_onnx_safely(model)
    if readout not in ("sum", "count"):
        raise InputError(f"readout must be 'sum' or 'count', not {readout!r}")
    if not (isinstance(timesteps, int) and 1 <= timesteps <= 100000):
        raise InputError(f"timesteps must be an integer in 1..100000, not {timesteps!r}")
    if not 0 < percentile <= 100:
        raise InputError(f"percentile must be in (0, 100], not {percentile}")
    x = np.asarray(calibration)
    if x.ndim < 2 or len(x) < 1 or x.dtype.kind not in "biuf" or not np.all(np.isfinite(x)):
        raise DatasetError("calibration samples must be a finite numeric array (N, *input_shape), N >= 1", file)
    x = x.astype(np.float64)
    parser = _Parser(model, file, input_shape=x.shape[1:])
    layers, out_idx = parser.parse()
    used = _reachable(layers, out_idx)

    # self-check against onnxruntime, and calibration activations
    relus = [i for i in used if layers[i].kind == "relu"]
    acts = evaluate_chunked(layers, x, set(relus) | {out_idx}, file=file)
    n_check = min(len(x), 256)
    ort_batch = max(1, min(256, int(2 * MAX_EVAL_BYTES // eval_cost(layers)[0])))  # float32: half the bytes
    try:
        ref = run_onnx(model, x[:n_check], batch=ort_batch)
    except Exception as e:  # noqa: BLE001 - onnxruntime rejects the model itself
        raise OnnxModelError(f"onnxruntime cannot run the model ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:300]})", file) from None
    mine = _softmax(acts[out_idx][:n_check], parser.final_softmax).reshape(ref.shape)
    check = float(np.abs(mine - ref).max())
    if not np.isfinite(check) or check > check_tolerance * (1.0 + float(np.abs(ref).max())):
        raise OnnxModelError(f"the parsed network does not reproduce onnxruntime's output (max |diff| "
                             f"{check:.3g}); an operator's semantics are not understood", file)
    lam = {i: _layer_threshold(acts[i], percentile, layers[i].params["clip"]) for i in relus}
    out_lam = _layer_threshold(acts[out_idx], percentile, None) if readout == "count" else None

    graph = _build_graph(layers, out_idx, used, lam, timesteps, readout, out_lam)
    graph.metadata[META_KEY].update({
        "method": "onnx-convert", "arch": _safe_name(model.graph.name or "onnx"),
        "conversion": "threshold balancing: theta = p-th percentile of positive activations per ReLU, "
                      "soft reset, v_init = theta/2, binary spikes, next weights x theta",
        "percentile": float(percentile), "calibration_samples": int(len(x)),
    })
    report = {"timesteps": timesteps, "readout": readout, "percentile": percentile,
              "calibration_samples": int(len(x)), "onnx_check_max_abs_diff": check,
              "thresholds": {layers[i].name: lam[i] for i in relus}}
    if out_lam is not None:
        report["thresholds"]["output_if"] = out_lam
    return graph, report


def _softmax(z: np.ndarray, kind: str | None) -> np.ndarray:
    if kind is None:
        return z
    z = z.reshape(len(z), -1)
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) + z.max(1, keepdims=True)
    return z - lse if kind == "LogSoftmax" else np.exp(z - lse)


def _reachable(layers, out_idx) -> list[int]:
    seen, stack = set(), [out_idx]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        stack.extend(layers[i].srcs)
    return sorted(seen)


def _if_node(shape, theta):
    from spikebridge.exporters.nir_export import neuron_metadata
    shape = tuple(shape)
    return nir.IF(r=np.ones(shape, np.float32), v_threshold=np.full(shape, theta, np.float32),
                  v_reset=np.zeros(shape, np.float32),
                  metadata=neuron_metadata(reset="subtract", threshold_test="gt", v_init=float(np.float32(theta) / 2),
                                           spike_amplitude=1.0))


def _build_graph(layers, out_idx, used, lam, T, readout, out_lam) -> nir.NIRGraph:
    f32 = np.float32
    nodes: dict[str, nir.NIRNode] = {}
    edges: list[tuple[str, str]] = []
    # terms[i]: the layer's value as a sum of NIR node outputs times a factor sigma:
    # ANN value ~= sum(sigma * output of NIR node) at every step (sigma = theta for spikes)
    terms: dict[int, list[tuple[str, float]]] = {}
    n_scale = [0]

    def scaled(ts, shape, target=1.0):
        """Bring every term to the factor ``target`` (Scale nodes where needed)."""
        out = []
        for name, s in ts:
            if s == target:
                out.append((name, s))
                continue
            n_scale[0] += 1
            nm = f"{name}_scale"
            while nm in nodes:
                nm += "_"
            nodes[nm] = nir.Scale(scale=np.full(shape, s / target, f32))
            edges.append((name, nm))
            out.append((nm, target))
        return out

    def common(ts, shape):
        sig = {s for _, s in ts}
        return (ts, sig.pop()) if len(sig) == 1 else (scaled(ts, shape), 1.0)

    def merge(ts):
        acc: dict[str, float] = {}
        for nm, s in ts:
            acc[nm] = acc.get(nm, 0.0) + s
        return list(acc.items())

    consumers = {i: 0 for i in used}
    for i in used:
        for s in layers[i].srcs:
            consumers[s] += 1
    for i in used:
        L = layers[i]
        p = L.params
        if L.kind == "input":
            nodes["input"] = nir.Input(input_type={"input": np.array(L.shape)})
            terms[i] = [("input", 1.0)]
            continue
        src = terms[L.srcs[0]]
        in_shape = layers[L.srcs[0]].shape
        if L.kind in ("affine", "conv"):
            ts, sig = common(src, in_shape)
            w = p["weight"] * sig
            b = np.asarray(p["bias"], np.float64)
            if i == out_idx and readout == "sum":
                w, b = w / T, b / T
            if L.kind == "affine":
                nodes[L.name] = nir.Affine(weight=w.astype(f32), bias=b.astype(f32))
            else:
                nodes[L.name] = nir.Conv2d(input_shape=tuple(in_shape[1:]), weight=w.astype(f32),
                                           stride=tuple(p["stride"]), padding=tuple(p["padding"]),
                                           dilation=tuple(p["dilation"]), groups=p["groups"], bias=b.astype(f32))
            edges.extend((nm, L.name) for nm, _ in ts)
            terms[i] = [(L.name, 1.0)]
        elif L.kind in ("avgpool", "flatten"):
            ts, sig = common(src, in_shape)
            if L.kind == "avgpool":
                nodes[L.name] = nir.AvgPool2d(kernel_size=np.array(p["kernel"]), stride=np.array(p["stride"]),
                                              padding=np.array(p["padding"]))
            else:
                nodes[L.name] = nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1)
            edges.extend((nm, L.name) for nm, _ in ts)
            terms[i] = [(L.name, sig)]
        elif L.kind == "add":
            terms[i] = merge(src + terms[L.srcs[1]])
        elif L.kind == "relu":
            ts = scaled(src, in_shape)
            nodes[L.name] = _if_node(L.shape, lam[i])
            edges.extend((nm, L.name) for nm, _ in ts)
            terms[i] = [(L.name, float(np.float32(lam[i])))]
        else:
            raise AssertionError(L.kind)
    shape = layers[out_idx].shape
    final = terms[out_idx]
    if readout == "sum":
        if layers[out_idx].kind not in ("affine", "conv"):  # readout must sum to the logits: factor 1/T
            final = scaled(final, shape, target=float(T))
    else:
        final = scaled(final, shape)
        nodes["output_if"] = _if_node(shape, out_lam)
        edges.extend((nm, "output_if") for nm, _ in final)
        final = [("output_if", 1.0)]
    nodes["output"] = nir.Output(output_type={"output": np.array(shape)})
    edges.extend((nm, "output") for nm, _ in final)
    meta = {META_KEY: {"format_version": 1, "dt": 1.0, "timesteps": int(T), "encoding": "direct",
                       "readout": readout}}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


# ----------------------------------------------------------------------------------
# calibration data and evaluation
# ----------------------------------------------------------------------------------

def calibration_samples(spec: str, limit: int | None = 1000) -> np.ndarray:
    """``spec`` is a dataset name (its train split) or X.npy (N, *input_shape), never unpickled."""
    p = Path(spec)
    if spec.endswith(".npy") or p.is_file():
        if not p.is_file():
            raise DatasetError("calibration file not found", str(p))
        try:
            x = np.load(p, allow_pickle=False, mmap_mode="r")
        except (ValueError, OSError, EOFError) as e:
            raise DatasetError(f"not a readable .npy array ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                               str(p)) from None
        if not isinstance(x, np.ndarray) or x.dtype.kind not in "biuf" or x.ndim < 2 or len(x) < 1:
            raise DatasetError("calibration samples must be a numeric array (N, *input_shape)", str(p))
        if limit is not None:
            x = x[:limit]
        if x.nbytes > MAX_CALIBRATION_BYTES:
            raise DatasetError(f"calibration samples use {x.nbytes} bytes, above the {MAX_CALIBRATION_BYTES}-byte "
                               "limit (lower --calibration-limit)", str(p))
        x = np.array(x)
        if not np.all(np.isfinite(x)):
            raise DatasetError("calibration samples have NaN or Inf values", str(p))
    else:
        from spikebridge.models.datasets import load_dataset
        x, _ = load_dataset(spec, "train")
    if limit is not None:
        x = x[:limit]
    return np.ascontiguousarray(x, dtype=np.float32)


def compare_accuracy(graph: nir.NIRGraph, model: onnx.ModelProto, x: np.ndarray, y: np.ndarray,
                     timesteps: int | None = None, max_batch: int = 128) -> dict:
    """Accuracy of the ONNX model (onnxruntime) and of the converted SNN (eventsim,
    direct encoding, the graph's readout) on x (N, *input_shape), labels y."""
    from spikebridge.hardware.eventsim import simulate
    from spikebridge.hardware.graph import analyse, classify, graph_meta

    gm = graph_meta(graph)
    T = int(timesteps or gm["timesteps"])
    ref = run_onnx(model, x)
    info = analyse(graph)
    preds = []
    for i in range(0, len(x), max_batch):
        xb = np.asarray(x[i:i + max_batch], np.float64)
        tr = simulate(graph, np.broadcast_to(xb[None], (T, *xb.shape)), info=info, record_spikes=False)
        preds.append(classify(tr.outputs["output"], gm["readout"]))
    snn = np.concatenate(preds)
    onnx_pred = ref.reshape(len(x), -1).argmax(1)
    return {"onnx_accuracy": float(np.mean(onnx_pred == y)), "snn_accuracy": float(np.mean(snn == y)),
            "agreement": float(np.mean(snn == onnx_pred)), "timesteps": T, "samples": int(len(x))}


def write_graph(graph: nir.NIRGraph, path) -> None:
    from spikebridge.exporters.nir_export import write_nir
    write_nir(graph, path)


__all__ = ["convert_onnx", "load_onnx_safely", "calibration_samples", "compare_accuracy", "run_onnx",
           "evaluate_layers", "OnnxModelError", "write_graph"]
