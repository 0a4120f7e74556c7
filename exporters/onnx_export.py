"""ONNX writers (opset 17), one family sharing ``OnnxBuilder`` and ``finish``:

- ``ann_to_onnx(AnnNet)``: a method's ANN (SNN2ANN's ReLU branch, the ``ann`` method, the QCFS /
  parallel quantised ANNs; models/deployed.py builds them).
- ``snn_to_onnx(DeployedNet)``: the deployed SNN unrolled over its T steps (bridge, lasnn:
  they have no ANN that equals their SNN).
- one SNN step with explicit state I/O: exporters/onnx_step.py (``--format onnx-step``).

``checkpoint_to_onnx(ckpt)`` dispatches through the method registry: the method's ``onnx``
hook returns an AnnNet or a DeployedNet; a method without one is refused in one line.

The unrolled SNN:

    input (N, *input_shape) -> logits (N, classes) = mean_t (W_L s_L(t) + b_L)

Per neuron layer the T steps are unrolled:
    v = decay * v + I(t)  (IF: v + I(t)),  s = v > theta  (``>=`` for ``ge``),
    reset zero: v = Where(s, 0, v);  subtract: v = v - Where(s, theta, 0),  out = s * amplitude
with v(0) = v_init. Time is batched as in models: a layer's T step outputs are
concatenated along the batch axis (T*N, ...), the next Conv/Gemm runs once over them,
and the result is reshaped to (T, N, ...) and sliced per step (direct encoding: the first
layer's current is computed once). float32; the torch reference runs in float64, so a
membrane within float32 rounding of the threshold can flip a spike (not seen in tests).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from spikebridge.base.errors import UnsupportedError
from spikebridge.base.fileio import atomic_path
from spikebridge.models.deployed import AnnNet, AvgPool, DeployedNet, Flatten, Neuron, Synapse

OPSET = 17
IR_VERSION = 8


class OnnxBuilder:
    """Initialisers and nodes of one graph."""

    def __init__(self):
        self.inits: list = []
        self.nodes: list = []

    def init(self, name: str, arr, dtype=np.float32) -> str:
        """An initialiser of ``arr`` as ``dtype`` (a 0-d array stays 0-d)."""
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    def node(self, op_type: str, inputs: list, output: str, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output


def value_info(name: str, shape) -> onnx.ValueInfoProto:
    """A float tensor with a symbolic batch axis ``N``."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *[int(s) for s in shape]])


def finish(b: OnnxBuilder, name: str, inputs: list, outputs: list, props: dict | None = None) -> onnx.ModelProto:
    """The checked model (opset 17, IR 8, producer spikebridge) of a builder's graph."""
    graph = helper.make_graph(b.nodes, name, inputs, outputs, initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="spikebridge")
    model.ir_version = IR_VERSION
    if props:
        helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model


def _classifier_io(input_shape, num_classes) -> tuple[list, list]:
    return [value_info("input", input_shape)], [value_info("logits", [num_classes])]


# ---------------------------------------------------------------------------------
# the ANN
# ---------------------------------------------------------------------------------

def ann_to_onnx(net: AnnNet) -> onnx.ModelProto:
    """An AnnNet (models/deployed.py) as ONNX: input (N, *input_shape) -> logits (N, classes)."""
    b = OnnxBuilder()
    wname, bname = net.tensor_names
    out: dict[str, str] = {"input": "input"}
    cur = "input"
    for layer in net.layers:
        p, name = layer.params, layer.name
        src = [out[i] for i in layer.inputs]
        if layer.kind == "flatten":
            cur = b.node("Flatten", src, f"{name}_out", name, axis=1)
        elif layer.kind in ("conv", "gemm"):
            ins = src + [b.init(f"{name}.{wname}", p["weight"]), b.init(f"{name}.{bname}", p["bias"])]
            if layer.kind == "conv":
                pad, k = p["padding"], p["kernel"]
                cur = b.node("Conv", ins, f"{name}_z", name, strides=[p["stride"]] * 2, pads=[pad] * 4,
                             kernel_shape=[k, k])
            else:
                attrs = {} if p.get("alpha") is None else {"alpha": p["alpha"]}
                cur = b.node("Gemm", ins, f"{name}_z", name, transB=1, **attrs)
            if p.get("bn") is not None:
                args = [b.init(f"{name}.bn.{k}", v)
                        for k, v in zip(("weight", "bias", "running_mean", "running_var"), p["bn"])]
                cur = b.node("BatchNormalization", [cur] + args, f"{name}_bn", f"{name}_bn", epsilon=1e-5)
            if p.get("maxpool"):
                m = int(p["maxpool"])
                cur = b.node("MaxPool", [cur], f"{name}_mp", f"{name}_mp", kernel_shape=[m, m], strides=[m, m])
        elif layer.kind == "relu":
            cur = b.node("Relu", src, name, name)
        elif layer.kind == "avgpool":
            k = p["kernel"]
            cur = b.node("AveragePool", src, f"{name}_pool", name, kernel_shape=[k, k], strides=[k, k])
        elif layer.kind == "add":
            cur = b.node("Add", src, f"{name}_sum", f"{name}_add")
        elif layer.kind == "quantise":
            cur = _quantise(b, p, src[0])
        else:
            raise ValueError(f"unknown ANN layer kind {layer.kind!r}")
        out[name] = cur
    b.node("Identity", [cur], "logits", "logits")
    return finish(b, net.name, *_classifier_io(net.input_shape, net.num_classes))


def _quantise(b: OnnxBuilder, p: dict, cur: str) -> str:
    """scale * Clip(Floor((z + psi) * k + phi), 0, levels), constants per channel or scalar."""
    tag = p["tag"]
    shape = (-1, 1, 1) if p["per_channel"] == "conv" else (-1,)

    def per(v, what):
        v = np.asarray(v, dtype=np.float32)
        return b.init(f"{tag}.{what}", v.reshape(shape) if v.ndim else v)

    for i, (op, c) in enumerate([("Add", per(p["psi"], "psi")), ("Mul", per(p["k"], "k")),
                                 ("Add", per(p["phi"], "phi"))]):
        cur = b.node(op, [cur, c], f"{tag}_q{i}", f"{tag}_q{i}")
    cur = b.node("Floor", [cur], f"{tag}_floor", f"{tag}_floor")
    cur = b.node("Clip", [cur, b.init(f"{tag}.lo", 0.0), b.init(f"{tag}.hi", float(p["levels"]))], f"{tag}_clip",
                 f"{tag}_clip")
    return b.node("Mul", [cur, per(p["scale"], "scale")], f"{tag}_act", f"{tag}_act")


# ---------------------------------------------------------------------------------
# the SNN unrolled over T
# ---------------------------------------------------------------------------------

def snn_to_onnx(net: DeployedNet) -> onnx.ModelProto:
    """A chain DeployedNet (conv/affine synapses, each followed by at most one neuron, flatten)
    unrolled over T (the module docstring). Residual blocks and pooling are refused."""
    T = int(net.timesteps)
    b = OnnxBuilder()
    count = [0]

    def const(tag, arr, dtype=np.float32):
        return b.init(f"c{len(b.inits)}_{tag}", arr, dtype)

    def op(op_type, ins, tag, **attrs):
        count[0] += 1
        out = f"{tag}_{count[0]}"
        return b.node(op_type, ins, out, out, **attrs)

    def done(cur):
        b.node("Identity", [cur], "logits", "logits")
        return finish(b, f"spikebridge_{net.method}_snn_T{T}", *_classifier_io(net.input_shape, net.num_classes))

    seq = None  # (T*N, ...) spikes of the previous neuron layer
    x = "input"  # (N, ...) before the first synaptic layer
    nodes = list(net.nodes)
    i = 0
    while i < len(nodes):
        node = nodes[i]
        name, o = node.name, node.op
        i += 1
        if len(node.inputs) != 1 or isinstance(o, (AvgPool, Neuron)):
            raise UnsupportedError(f"node {name}: the unrolled ONNX form takes chains of conv/linear layers "
                                   "each followed by its neuron (export --format nir or onnx-step)", place=name)
        if isinstance(o, Flatten):
            if seq is None:
                x = op("Flatten", [x], name, axis=1)
            else:
                seq = op("Flatten", [seq], name, axis=1)
            continue
        assert isinstance(o, Synapse)
        src = x if seq is None else seq
        if o.kind == "conv":
            k = o.weight.shape[-1]
            z = op("Conv", [src, const(f"{name}_w", o.weight), const(f"{name}_b", o.bias)], name,
                   strides=list(o.stride), pads=[*o.padding, *o.padding], kernel_shape=[k, k])
        else:
            z = op("Gemm", [src, const(f"{name}_w", o.weight), const(f"{name}_b", o.bias)], name, transB=1)
        if seq is None:
            steps = [z] * T
        else:
            # (T*N, C, ...) -> (T, N, C, ...): prepend T, let N be inferred, keep the rest
            rest = op("Slice", [op("Shape", [z], f"{name}_shape"), const(f"{name}_s1", [1], np.int64),
                                const(f"{name}_smax", [2 ** 62], np.int64)], f"{name}_rest")
            tshape = op("Concat", [const(f"{name}_tm1", [T, -1], np.int64), rest], f"{name}_tshape", axis=0)
            zt = op("Reshape", [z, tshape], f"{name}_zt")
            steps = [op("Gather", [zt, const(f"{name}_t{t}", t, np.int64)], f"{name}_z{t}", axis=0)
                     for t in range(T)]
        if o.readout:  # the classifier: logits = mean over the T steps
            return done(z if seq is None else op("ReduceMean", [zt], f"{name}_mean", axes=[0], keepdims=0))
        n = nodes[i].op if i < len(nodes) and isinstance(nodes[i].op, Neuron) else None
        if n is None or n.reset not in ("zero", "subtract") or n.kind not in ("IF", "LIF") or \
                (n.kind == "LIF" and n.decay is None):
            raise UnsupportedError(f"layer {name}: no IF/LIF neuron with zero or subtract reset to unroll",
                                   place=name)
        i += 1
        thr = const(f"{name}_thr", n.threshold)
        v = const(f"{name}_v0", n.v_init)
        decay = const(f"{name}_decay", np.float32(n.decay)) if n.kind == "LIF" else None
        amp = np.asarray(n.amplitude, dtype=np.float32)
        outs = []
        for t in range(T):
            tag = f"{name}_t{t}"
            v = op("Add", [op("Mul", [v, decay], f"{tag}_leak") if decay else v, steps[t]], f"{tag}_v")
            s = op("GreaterOrEqual" if n.test == "ge" else "Greater", [v, thr], f"{tag}_s")
            if n.reset == "subtract":
                v = op("Sub", [v, op("Where", [s, thr, const(f"{tag}_0", np.float32(0))], f"{tag}_sub")], f"{tag}_r")
            else:
                v = op("Where", [s, const(f"{tag}_0", np.float32(0)), v], f"{tag}_r")
            sf = op("Cast", [s], f"{tag}_sf", to=TensorProto.FLOAT)
            if not np.all(amp == 1):
                sf = op("Mul", [sf, const(f"{tag}_amp", amp)], f"{tag}_amp")
            outs.append(sf)
        seq = op("Concat", outs, f"{name}_seq", axis=0)
    raise ValueError("the deployed network ends without a classifier")


# ---------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------

def checkpoint_to_onnx(ckpt_dir) -> onnx.ModelProto:
    """``export --format onnx``: the method's ANN, or its SNN unrolled over T (bridge, lasnn)."""
    from spikebridge.models.deployed import onnx_form

    net = onnx_form(ckpt_dir)
    return snn_to_onnx(net) if isinstance(net, DeployedNet) else ann_to_onnx(net)


def write_onnx(model: onnx.ModelProto, path) -> None:
    with atomic_path(Path(path)) as tmp:
        onnx.save(model, str(tmp))
