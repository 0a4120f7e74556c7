"""One SNN time step as a pure ONNX function (``spikebridge export --format onnx-step``).

    (x_t, v_<node>..., i_<node>...) -> (output, s_<node>..., v_<node>_next..., i_<node>_next...)

Built from the NIR graph (``checkpoint_to_nir``, or any graph ``spikebridge.hardware.graph.analyse``
accepts), with the semantics of docs/nir-conventions.md under the ``spikebridge``
profile (forward Euler, dt from the graph metadata):

- ``x_t`` (N, *input_shape): the input at this step (under direct encoding, the sample).
- one state input per neuron node, ``v_<node>`` (N, *shape), the membrane before the
  step, and for CubaLIF also ``i_<node>`` (the synaptic current); the step returns the
  new ones as ``v_<node>_next`` / ``i_<node>_next``. Initial state: ``v_init`` from the
  node metadata (0 for our SNN2ANN exports), i = 0; the model's ``metadata_props`` hold
  it as JSON under ``spikebridge.state`` (``initial_state()`` builds the arrays).
- outputs: ``output`` (what reaches the Output node at this step: the analog readout of
  our exports; sum it over T for the logits), and ``s_<node>`` per spiking neuron node
  (the node's output at this step: spikes times spike amplitude).

Per neuron, in float32 and in the same operation order as models/neurons.py:
``v = v + dt*r*I`` (IF; the product is dropped when dt*r == 1, which keeps the bits of
torch's ``v + 1.0*x``), ``s = v > theta`` (``>=`` for ``ge``), reset ``zero``:
``v = Where(s, v_reset, v)``, ``subtract``: ``v = v - Where(s, theta, 0)``. Several
edges into one node are summed. Graphs with back edges (recurrence) are not supported
by this exporter (their state would be the previous step's activations).
"""
from __future__ import annotations

import json
import re

import nir
import numpy as np
import onnx
from onnx import TensorProto

from spikebridge.base.errors import UnsupportedError
from spikebridge.exporters.onnx_export import OnnxBuilder, finish, value_info
from spikebridge.hardware.graph import analyse, conv_geometry, graph_meta, neuron_semantics

SPIKING = ("IF", "LIF", "CubaLIF")
STATEFUL = SPIKING + ("LI", "I", "CubaLI")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def graph_to_onnx_step(graph: nir.NIRGraph, file: str | None = None, name: str = "spikebridge_step"
                       ) -> onnx.ModelProto:
    info = analyse(graph, file=file)
    meta = graph_meta(graph, file)
    dt = float(meta["dt"])
    supported = STATEFUL + ("Input", "Output", "Affine", "Linear", "Conv1d", "Conv2d", "SumPool2d",
                            "AvgPool2d", "Flatten", "Scale")
    problems = sorted({f"node {n!r}: type {t} has no ONNX step lowering"
                       for n, t in info.types.items() if t not in supported})
    if info.back_edges:
        problems.append("back edges (recurrence) " + ", ".join(f"{a}->{b}" for a, b in info.back_edges)
                        + " are not supported by the step exporter")
    if len(info.inputs) != 1 or len(info.outputs) != 1:
        problems.append(f"the step function takes one Input and one Output node (graph has "
                        f"{len(info.inputs)} and {len(info.outputs)})")
    if problems:
        raise UnsupportedError("; ".join(problems), file, "graph")

    b = _Builder()
    inputs, outputs, state_meta = b.inputs, b.outputs, b.state_meta
    op, const, vi = b.op, b.const, b.vi
    f32 = _f32
    value: dict[str, str] = {}
    x_name = "x_t"
    inputs.append(vi(x_name, info.shapes[info.inputs[0]]))
    for n in info.order:
        t = info.types[n]
        node = graph.nodes[n]
        tag = _safe(n)
        if t == "Input":
            value[n] = x_name
            continue
        preds = [value[p] for p in info.preds[n]]
        cur = preds[0] if len(preds) == 1 else op("Sum", preds, f"{tag}_in")
        if t == "Output":
            value[n] = cur
            op("Identity", [cur], "output", out="output")
            outputs.append(vi("output", info.shapes[n]))
            continue
        if t in ("Affine", "Linear"):
            w = f32(node.weight)
            ins = [cur, const(f"{tag}_W", w)]
            if t == "Affine":
                ins.append(const(f"{tag}_b", np.broadcast_to(f32(node.bias).reshape(-1), (w.shape[0],))))
            value[n] = op("Gemm", ins, tag, transB=1)
        elif t in ("Conv1d", "Conv2d"):
            nd = len(info.in_shapes[n]) - 1
            kernel, stride, dil, lo, hi, _ = conv_geometry(node, nd, info.in_shapes[n][1:])
            w = f32(node.weight)
            bias = np.broadcast_to(f32(node.bias).reshape(-1), (w.shape[0],))
            value[n] = op("Conv", [cur, const(f"{tag}_W", w), const(f"{tag}_b", bias)], tag,
                          kernel_shape=list(kernel), strides=list(stride), dilations=list(dil),
                          pads=list(lo) + list(hi), group=int(node.groups))
        elif t in ("SumPool2d", "AvgPool2d"):
            kernel, stride, _dil, lo, hi, _ = conv_geometry(node, 2, info.in_shapes[n][1:])
            c = info.in_shapes[n][0]
            if t == "SumPool2d":  # depthwise all-ones conv: exact sums
                w = np.ones((c, 1, *kernel), np.float32)
                value[n] = op("Conv", [cur, const(f"{tag}_ones", w)], tag, kernel_shape=list(kernel),
                              strides=list(stride), pads=list(lo) + list(hi), group=c)
            else:
                value[n] = op("AveragePool", [cur], tag, kernel_shape=list(kernel), strides=list(stride),
                              pads=list(lo) + list(hi), count_include_pad=1)
        elif t == "Flatten":
            value[n] = op("Reshape", [cur, const(f"{tag}_shape", [0, *info.shapes[n]], np.int64)], tag)
        elif t == "Scale":
            value[n] = op("Mul", [cur, const(f"{tag}_s", f32(node.scale))], tag)
        else:  # neurons
            value[n] = _neuron(b, n, node, t, cur, info.shapes[n], dt, file)
    return finish(b, name, inputs, outputs, {
        "spikebridge.state": json.dumps(state_meta),
        "spikebridge.graph": json.dumps({k: (v if isinstance(v, (int, float, str)) or v is None else str(v))
                                         for k, v in meta.items()}),
    })


class _Builder(OnnxBuilder):
    def __init__(self):
        super().__init__()
        self.inputs, self.outputs, self.state_meta = [], [], []

    def const(self, tag, arr, dtype=np.float32):
        # at least 1-d (np.ascontiguousarray), as this writer always made its constants
        return self.init(f"c{len(self.inits)}_{_safe(tag)}", np.ascontiguousarray(np.asarray(arr, dtype=dtype)), dtype)

    def op(self, op_type, ins, tag, out=None, **attrs):
        out = out or f"{_safe(tag)}_{len(self.nodes)}"
        return self.node(op_type, ins, out, f"{op_type}_{len(self.nodes)}_{_safe(tag)}", **attrs)

    vi = staticmethod(value_info)

    def state(self, node, in_name, out_name, shape, init):
        self.inputs.append(self.vi(in_name, shape))
        self.state_meta.append({"node": node, "input": in_name, "output": out_name,
                                "shape": [int(s) for s in shape],
                                "init": float(init) if np.ndim(init) == 0 else
                                np.asarray(init, np.float32).reshape(-1).tolist()})

    def output(self, src, name, shape):
        self.op("Identity", [src], name, out=name)
        self.outputs.append(self.vi(name, shape))


def _f32(v):
    return np.asarray(v, dtype=np.float32)


def _euler_leak(b, tag, v_in, cur, dt, tau, v_leak, r):
    """v + dt/tau * ((v_leak - v) + r*I), the order of models/neurons.lif_step."""
    k = b.const(f"{tag}_dt_tau", np.float32(dt) / _f32(tau))
    ri = b.op("Mul", [b.const(f"{tag}_r", _f32(r)), cur], f"{tag}_ri")
    d = b.op("Add", [b.op("Sub", [b.const(f"{tag}_vleak", _f32(v_leak)), v_in], f"{tag}_lv"), ri], f"{tag}_d")
    return b.op("Add", [v_in, b.op("Mul", [k, d], f"{tag}_kd")], f"{tag}_v")


def _neuron(b, n, node, t, cur, shape, dt, file):
    tag = _safe(n)
    sem = neuron_semantics(node, n, file, shape)
    v_in, v_out = f"v_{tag}", f"v_{tag}_next"
    b.state(n, v_in, v_out, shape, sem["v_init"])
    if t in ("IF", "I"):
        # v + dt*r*I; the product is dropped when it is 1 (bit-exact with torch's v + 1.0*x)
        g = np.float32(dt) * _f32(node.r)
        inc = cur if np.all(g == 1) else b.op("Mul", [b.const(f"{tag}_dtr", g), cur], f"{tag}_inc")
        v = b.op("Add", [v_in, inc], f"{tag}_v")
    elif t in ("LIF", "LI"):
        v = _euler_leak(b, tag, v_in, cur, dt, node.tau, node.v_leak, node.r)
    else:  # CubaLIF / CubaLI: i <- i + dt/tau_syn*(w_in*I - i); the membrane sees the new i
        i_in, i_out = f"i_{tag}", f"i_{tag}_next"
        b.state(n, i_in, i_out, shape, 0.0)
        ks = b.const(f"{tag}_dt_tau_syn", np.float32(dt) / _f32(node.tau_syn))
        wi = b.op("Mul", [b.const(f"{tag}_w_in", _f32(node.w_in)), cur], f"{tag}_wi")
        i_new = b.op("Add", [i_in, b.op("Mul", [ks, b.op("Sub", [wi, i_in], f"{tag}_di")], f"{tag}_kdi")],
                     f"{tag}_i")
        b.output(i_new, i_out, shape)
        v = _euler_leak(b, tag, v_in, i_new, dt, node.tau_mem, node.v_leak, node.r)
    if t not in SPIKING:
        b.output(v, v_out, shape)
        return v
    thr = b.const(f"{tag}_thr", np.broadcast_to(_f32(node.v_threshold), shape))
    s = b.op("GreaterOrEqual" if sem["threshold_test"] == "ge" else "Greater", [v, thr], f"{tag}_s")
    if sem["reset"] == "subtract":
        sub = b.op("Where", [s, thr, b.const(f"{tag}_zero", np.zeros(shape, np.float32))], f"{tag}_sub")
        v_new = b.op("Sub", [v, sub], f"{tag}_reset")
    else:
        vr = _f32(node.v_reset if node.v_reset is not None else 0.0)
        v_new = b.op("Where", [s, b.const(f"{tag}_vreset", np.broadcast_to(vr, shape)), v], f"{tag}_reset")
    b.output(v_new, v_out, shape)
    sf = b.op("Cast", [s], f"{tag}_sf", to=TensorProto.FLOAT)
    amp = np.asarray(sem["spike_amplitude"], dtype=np.float32)
    if not np.all(amp == 1):
        sf = b.op("Mul", [sf, b.const(f"{tag}_amp", amp)], f"{tag}_amp")
    b.output(sf, f"s_{tag}", shape)
    return sf


def initial_state(model: onnx.ModelProto, batch: int) -> dict[str, np.ndarray]:
    """{state input name: (batch, *shape) float32} from the model's ``spikebridge.state``."""
    props = {p.key: p.value for p in model.metadata_props}
    out = {}
    for s in json.loads(props.get("spikebridge.state", "[]")):
        shape = tuple(s["shape"])
        init = np.asarray(s["init"], dtype=np.float32).reshape(() if np.ndim(s["init"]) == 0 else shape)
        out[s["input"]] = np.ascontiguousarray(np.broadcast_to(init, (batch, *shape)))
    return out


def state_pairs(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(state input, state output) names, in order."""
    props = {p.key: p.value for p in model.metadata_props}
    return [(s["input"], s["output"]) for s in json.loads(props.get("spikebridge.state", "[]"))]


def run_steps(session, model: onnx.ModelProto, x_TB: np.ndarray) -> dict[str, np.ndarray]:
    """Loop the step T times in an onnxruntime session: x (T, B, *input_shape) ->
    {output name: (T, B, ...)} for every graph output that is not a state."""
    x_TB = np.asarray(x_TB, dtype=np.float32)
    state = initial_state(model, x_TB.shape[1])
    pairs = state_pairs(model)
    names = [o.name for o in session.get_outputs()]
    keep = [nm for nm in names if nm not in {o for _, o in pairs}]
    rec = {nm: [] for nm in keep}
    for t in range(x_TB.shape[0]):
        res = dict(zip(names, session.run(None, {"x_t": x_TB[t], **state})))
        state = {i: res[o] for i, o in pairs}
        for nm in keep:
            rec[nm].append(res[nm])
    return {nm: np.stack(v) for nm, v in rec.items()}


def checkpoint_to_onnx_step(ckpt_dir) -> onnx.ModelProto:
    from spikebridge.exporters.nir_export import checkpoint_to_nir
    from spikebridge.models.checkpoint import read_meta
    meta = read_meta(ckpt_dir)
    return graph_to_onnx_step(checkpoint_to_nir(ckpt_dir), name=f"spikebridge_{meta['arch']}_step")


__all__ = ["graph_to_onnx_step", "checkpoint_to_onnx_step", "initial_state", "state_pairs", "run_steps"]
