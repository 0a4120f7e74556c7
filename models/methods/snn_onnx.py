"""The deployed SNN of a method, unrolled over its T steps, as one ONNX model (registers nothing).

``spikebridge export --format onnx`` for ``bridge`` and ``lasnn``: they have no ANN that
equals their SNN (bridge's pretrained ANN is only the T = 1 network before fine-tuning;
lasnn's teacher is another, wider network), so the ONNX model is the SNN itself:

    input (N, *input_shape) -> logits (N, classes) = mean_t (W_L s_L(t) + b_L)

built from the same deployed layer list (``common.lif_deployed``: BN folded) that
``run_deployed`` and the NIR export read. Per neuron layer the T steps are unrolled:
    v = decay * v + I(t)  (IF: v + I(t)),  s = v > theta  (``>=`` for ``ge``),
    reset zero: v = Where(s, 0, v);  subtract: v = v - Where(s, theta, 0),  out = s * amplitude
with v(0) = v_init. Time is batched as in models: a layer's T step outputs are
concatenated along the batch axis (T*N, ...), the next Conv/Gemm runs once over them,
and the result is reshaped to (T, N, ...) and sliced per step (direct encoding: the first
layer's current is computed once). float32; the torch reference runs in float64, so a
membrane within float32 rounding of the threshold can flip a spike (not seen in tests).
One step with explicit state I/O is ``--format onnx-step`` (exporters/onnx_step.py).
"""
from __future__ import annotations

import numpy as np

OPSET = 17


def deployed_to_onnx(layers: list[dict], meta: dict):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    T = int(meta["timesteps"])
    inits, nodes = [], []
    count = {"n": 0}

    def const(tag, arr, dtype=np.float32):
        name = f"c{len(inits)}_{tag}"
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    def op(op_type, ins, tag, **attrs):
        count["n"] += 1
        out = f"{tag}_{count['n']}"
        nodes.append(helper.make_node(op_type, ins, [out], name=out, **attrs))
        return out

    def arr(v):
        return np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, dtype=np.float32)

    seq = None       # (T*N, ...) spikes of the previous neuron layer
    x = "input"      # (N, ...) before the first synaptic layer
    for layer in layers:
        name = layer["name"]
        if layer["type"] == "flatten":
            if seq is None:
                x = op("Flatten", [x], name, axis=1)
            else:
                seq = op("Flatten", [seq], name, axis=1)
            continue
        w, b = arr(layer["w"]), arr(layer["b"])
        src = x if seq is None else seq
        if layer["type"] == "conv":
            s = layer["spec"]
            k = w.shape[-1]
            p = s["padding"]
            z = op("Conv", [src, const(f"{name}_w", w), const(f"{name}_b", b)], name,
                   strides=[s["stride"]] * 2, pads=[p] * 4, kernel_shape=[k, k])
        else:
            z = op("Gemm", [src, const(f"{name}_w", w), const(f"{name}_b", b)], name, transB=1)
        n = layer.get("neuron")
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
        if n is None:  # the classifier: logits = mean over the T steps
            if seq is None:
                return _finish(helper, onnx, TensorProto, nodes, inits, z, meta)
            return _finish(helper, onnx, TensorProto, nodes, inits,
                           op("ReduceMean", [zt], f"{name}_mean", axes=[0], keepdims=0), meta)
        thr = const(f"{name}_thr", arr(n["threshold"]))
        v = const(f"{name}_v0", arr(n["v_init"]))
        decay = const(f"{name}_decay", np.float32(n.get("decay", 1.0))) if n["kind"] == "LIF" else None
        amp = arr(n["amplitude"])
        outs = []
        for t in range(T):
            tag = f"{name}_t{t}"
            v = op("Add", [op("Mul", [v, decay], f"{tag}_leak") if decay else v, steps[t]], f"{tag}_v")
            s = op("GreaterOrEqual" if n["test"] == "ge" else "Greater", [v, thr], f"{tag}_s")
            if n["reset"] == "subtract":
                v = op("Sub", [v, op("Where", [s, thr, const(f"{tag}_0", np.float32(0))], f"{tag}_sub")], f"{tag}_r")
            else:
                v = op("Where", [s, const(f"{tag}_0", np.float32(0)), v], f"{tag}_r")
            sf = op("Cast", [s], f"{tag}_sf", to=TensorProto.FLOAT)
            if not np.all(amp == 1):
                sf = op("Mul", [sf, const(f"{tag}_amp", amp)], f"{tag}_amp")
            outs.append(sf)
        seq = op("Concat", outs, f"{name}_seq", axis=0)
    raise ValueError("the deployed layers end without a classifier")


def _finish(helper, onnx, TensorProto, nodes, inits, cur, meta):
    nodes.append(helper.make_node("Identity", [cur], ["logits"], name="logits"))
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *meta["input_shape"]])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", int(meta["num_classes"])])
    graph = helper.make_graph(nodes, f"spikebridge_{meta['method']}_snn_T{int(meta['timesteps'])}", [inp], [out],
                              initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="spikebridge")
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m
