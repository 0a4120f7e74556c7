"""The deployed network: what a checkpoint runs as on neuromorphic hardware, as plain data.

Every training method turns its checkpoint into one ``DeployedNet`` (the method registry's
``deployed`` hook, models/methods/__init__.py; ``from_checkpoint(ckpt_dir)``); the exporters write it (NIR:
``spikebridge.exporters.nir_export.to_nir``; the SNN unrolled over T as ONNX:
``spikebridge.exporters.onnx_export.snn_to_onnx``) and never look at torch modules or
at ``method``. Models never import the exporters.

A ``DeployedNet`` is a feed-forward graph of named nodes in topological order, each
reading the outputs of earlier nodes (``"input"`` is the sample; several inputs are
summed), with float32 numpy parameters exactly as they are written:

- ``Synapse``: a Conv2d (stride, padding, (H, W) of its input) or an Affine (``W x + b``),
  BN folded from running statistics, the bias injected at every step. The classifier is
  the last synapse with ``readout=True``: its graph form is ``W/T``, ``b/T`` (the output
  summed over T is the logits; ``weight``/``bias`` here are the undivided ones).
- ``Neuron``: IF or LIF under forward Euler with dt = 1: IF ``v <- v + r I``; LIF
  ``v <- v + (v_leak - v + r I) / tau``; spike where ``v > theta`` (``test = "gt"``) or
  ``v >= theta`` (``"ge"``); reset ``zero`` (v <- v_reset), ``subtract`` (v <- v - theta)
  or ``window`` (count-then-emit over ``window`` steps); v(0) = ``v_init``; the output is
  the spike times ``amplitude``. ``decay`` is the LIF's per-step factor 1 - 1/tau when the
  method states it (the unrolled ONNX form multiplies by it).
- ``AvgPool`` (k x k, stride k) and ``Flatten`` (of ``input_shape``).

``DeployedNet.metadata`` is what the graph metadata records beyond the nodes
(docs/nir-conventions.md): dt, T, encoding, readout (``sum``: an analog classifier;
``count``: spikes of the last layer), method, arch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spikebridge.base.errors import CheckpointError, UnsupportedError


@dataclass(frozen=True)
class Synapse:
    kind: str  # "conv" | "affine"
    weight: np.ndarray  # float32; conv (C_out, C_in, k, k), affine (out, in)
    bias: np.ndarray  # float32 (C_out,) / (out,)
    stride: tuple = (1, 1)  # conv only
    padding: tuple = (0, 0)  # conv only
    input_hw: tuple = ()  # conv only: (H, W) of the input
    readout: bool = False  # the classifier: written as W/T, b/T into the output


@dataclass(frozen=True)
class Neuron:
    kind: str  # "IF" | "LIF"
    threshold: np.ndarray  # float32, the layer's output shape
    r: np.ndarray
    v_reset: np.ndarray
    tau: np.ndarray | None = None  # LIF
    v_leak: np.ndarray | None = None  # LIF
    reset: str = "zero"  # "zero" | "subtract" | "window"
    test: str = "gt"  # "gt" | "ge"
    v_init: float | np.ndarray = 0.0
    amplitude: float | np.ndarray = 1.0
    window: int | None = None  # reset "window": steps per window
    decay: float | None = None  # LIF: 1 - 1/tau, as the method states it


@dataclass(frozen=True)
class AvgPool:
    kernel: int


@dataclass(frozen=True)
class Flatten:
    input_shape: tuple


@dataclass(frozen=True)
class Node:
    name: str
    op: Synapse | Neuron | AvgPool | Flatten
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class DeployedNet:
    nodes: tuple[Node, ...]  # topological order; the last node feeds the output
    input_shape: tuple[int, ...]
    num_classes: int
    timesteps: int
    method: str
    arch: str
    readout: str = "sum"  # "sum" | "count"
    dt: float = 1.0
    encoding: str = "direct"
    extra: dict = field(default_factory=dict)

    @property
    def metadata(self) -> dict:
        """The graph-level record (written under the dialect's META_KEY)."""
        return {"format_version": 1, "dt": self.dt, "timesteps": self.timesteps, "encoding": self.encoding,
                "readout": self.readout, "method": self.method, "arch": self.arch, **self.extra}

    def neuron_names(self) -> list[str]:
        """Neuron node names, in the order the torch models report counts/spikes."""
        return [n.name for n in self.nodes if isinstance(n.op, Neuron)]


def from_checkpoint(ckpt_dir) -> DeployedNet:
    """The DeployedNet of a checkpoint directory, built by its method's registry entry (an
    unknown method, or one without an SNN such as ``ann``, is refused in one line)."""
    spec, meta, tensors = _method_of(ckpt_dir)
    if spec.deployed is None:
        raise UnsupportedError(spec.no_snn or f"method {spec.name!r} has no SNN to export", file=str(ckpt_dir),
                               place="method")
    return spec.deployed(meta, tensors, str(ckpt_dir))


def onnx_form(ckpt_dir) -> "AnnNet | DeployedNet":
    """What ``export --format onnx`` writes for a checkpoint: its method's ANN (AnnNet), or its
    SNN to unroll over T (DeployedNet: bridge, lasnn); refused in one line when there is none."""
    spec, meta, tensors = _method_of(ckpt_dir)
    if spec.onnx is None:
        raise UnsupportedError(spec.no_onnx or f"method {spec.name!r} has no ONNX form (export --format nir)",
                               file=str(ckpt_dir), place="method")
    return spec.onnx(meta, tensors, str(ckpt_dir))


def _method_of(ckpt_dir):
    from pathlib import Path

    from spikebridge.models import methods as method_registry
    from spikebridge.models.checkpoint import load_checkpoint

    meta, tensors = load_checkpoint(ckpt_dir)
    return method_registry.require(meta["method"], file=str(Path(ckpt_dir) / "model.json")), meta, tensors


def f32(a, shape=None) -> np.ndarray:
    """float32 numpy copy of a tensor/array (broadcast to ``shape`` when given and not a scalar)."""
    a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    a = a.astype(np.float32)
    if shape is not None and a.ndim:
        a = np.ascontiguousarray(np.broadcast_to(a, shape))
    return a


def _scalar_or(a, shape):
    return float(a) if np.ndim(f32(a)) == 0 else f32(a, shape)


class _Graph:
    def __init__(self):
        self.nodes: list[Node] = []

    def add(self, name, op, *inputs) -> str:
        self.nodes.append(Node(name, op, tuple(inputs)))
        return name


def _meta_fields(meta: dict) -> dict:
    out = {"input_shape": tuple(int(s) for s in meta["input_shape"]), "num_classes": int(meta["num_classes"]),
           "timesteps": int(meta["timesteps"]), "method": str(meta["method"]), "arch": str(meta["arch"])}
    if isinstance(meta.get("events"), dict):  # trained on event frames: say so in the graph (models/event_data.py)
        out["encoding"] = "events"
        out["extra"] = {"events": dict(meta["events"])}
    return out


# ---------------------------------------------------------------------------------
# from torch models whose layers follow the architecture spec (SNN2ANN, BPTT)
# ---------------------------------------------------------------------------------

def from_spec_model(model, meta: dict, kind: str, folded, threshold, lif: dict | None = None) -> DeployedNet:
    """DeployedNet of an SNN2ANN or BPTT torch model (any layer of models/architectures.py).

    ``kind``: "if" or "lif" (node names ``<layer>_<kind>``); ``folded(layer) -> (W, b)``
    (BN folded; the bias as injected per step); ``threshold(module, shape) -> array``;
    ``lif``: {"tau": float} for LIF. Hard reset to 0, ``>``, v(0) = 0, amplitude 1.
    Max-pool on currents has no NIR node: UnsupportedError naming the layer."""
    import torch

    from spikebridge.models.architectures import infer_shapes, pool_kernel

    g = _Graph()
    readout = "count"

    def synapse(name, layer, in_shape, src):
        if getattr(layer, "maxpool", 0):
            raise UnsupportedError(f"layer {name}: max-pool on currents has no NIR node (NIR has no max-pool); "
                                   "nets with max-pool (vgg11, vgg13) are torch-only", place=name)
        w, b = folded(layer)
        if isinstance(layer.op, torch.nn.Conv2d):
            op = Synapse("conv", f32(w), f32(b), tuple(layer.op.stride), tuple(layer.op.padding),
                         tuple(int(s) for s in in_shape[1:]))
        else:
            op = Synapse("affine", f32(w), f32(b))
        return g.add(name, op, src)

    def neuron(name, shape, module, *srcs):
        """``module``: the torch module holding the layer's thresholds (None when the net has one)."""
        shape = tuple(int(d) for d in shape)
        th = f32(threshold(module, shape))
        if th.shape != shape:
            raise CheckpointError(f"threshold shape {th.shape} != layer output {shape}", place=name)
        zeros, ones = np.zeros(shape, np.float32), np.ones(shape, np.float32)
        if kind == "lif":
            op = Neuron("LIF", th, ones, zeros, tau=np.full(shape, lif["tau"], np.float32), v_leak=zeros,
                        decay=1.0 - 1.0 / lif["tau"])
        else:
            op = Neuron("IF", th, ones, zeros)
        return g.add(name, op, *srcs)

    prev = "input"
    with torch.no_grad():
        for spec, (in_shape, out_shape) in zip(meta["layers"], infer_shapes(meta["layers"], meta["input_shape"])):
            name, typ = spec["name"], spec["type"]
            if typ == "flatten":
                prev = g.add(name, Flatten(tuple(int(s) for s in in_shape)), prev)
            elif typ in ("conv", "linear") and not spec.get("neuron"):
                layer = model.layers[name]
                w, b = layer.op.weight, layer.op.bias
                prev = g.add(name, Synapse("affine", f32(w), f32(b), readout=True), prev)
                readout = "sum"
            elif typ in ("conv", "linear"):
                layer = model.layers[name]
                prev = neuron(f"{name}_{kind}", out_shape, layer, synapse(name, layer, in_shape, prev))
            elif typ == "avgpool":
                g.add(name, AvgPool(pool_kernel(spec, in_shape)), prev)
                prev = neuron(f"{name}_{kind}", out_shape, model.layers[name] if name in model.layers else None, name)
            elif typ == "resblock":
                blk = model.layers[name]
                a = synapse(f"{name}_a", blk.a, in_shape, prev)
                a_n = neuron(f"{name}_a_{kind}", out_shape, blk.a, a)
                b = synapse(f"{name}_b", blk.b, out_shape, a_n)
                short = prev if blk.shortcut is None else synapse(f"{name}_shortcut", blk.shortcut, in_shape, prev)
                prev = neuron(f"{name}_{kind}", out_shape, blk, b, short)
            else:
                raise CheckpointError(f"unknown layer type {typ!r}", place=name)
    return DeployedNet(tuple(g.nodes), readout=readout, **_meta_fields(meta))


# ---------------------------------------------------------------------------------
# from the layer dicts of the registry methods (common.run_deployed's input)
# ---------------------------------------------------------------------------------

def from_layers(layers: list[dict], meta: dict) -> DeployedNet:
    """DeployedNet of deployed layer dicts (models/methods/common.py: ``lif_deployed`` and the
    methods' ``deployed``): the same list ``run_deployed`` simulates, so the accuracy a method
    reports and the exported graph cannot disagree. LIF: tau = r = 1/(1 - decay) (forward
    Euler with dt = 1 is then v <- decay v + I); the classifier is an analog readout."""
    from spikebridge.models.architectures import infer_shapes

    T = int(meta["timesteps"])
    g = _Graph()
    prev = "input"
    for layer, (in_shape, out_shape) in zip(layers, infer_shapes(meta["layers"], meta["input_shape"])):
        name = layer["name"]
        if layer["type"] == "flatten":
            prev = g.add(name, Flatten(tuple(int(s) for s in in_shape)), prev)
            continue
        n = layer.get("neuron")
        w, b = f32(layer["w"]), f32(layer["b"])
        if layer["type"] == "conv":
            s = layer["spec"]
            op = Synapse("conv", w, b, (s["stride"],) * 2, (s["padding"],) * 2, tuple(int(v) for v in in_shape[1:]),
                         readout=n is None)
        else:
            op = Synapse("affine", w, b, readout=n is None)
        prev = g.add(name, op, prev)
        if n is None:
            continue
        shape = tuple(int(v) for v in out_shape)
        zeros = np.zeros(shape, np.float32)
        common = dict(reset=n["reset"], test=n["test"], v_init=_scalar_or(n["v_init"], shape),
                      amplitude=_scalar_or(n["amplitude"], shape), window=T if n["reset"] == "window" else None)
        if n["kind"] == "LIF":
            tau = 1.0 / (1.0 - n["decay"])
            op = Neuron("LIF", f32(n["threshold"], shape), np.full(shape, tau, np.float32), zeros,
                        tau=np.full(shape, tau, np.float32), v_leak=zeros, decay=float(n["decay"]), **common)
        else:
            op = Neuron("IF", f32(n["threshold"], shape), np.ones(shape, np.float32), zeros, **common)
        prev = g.add(f"{name}_{n['kind'].lower()}", op, prev)
    return DeployedNet(tuple(g.nodes), readout="sum", **_meta_fields(meta))


# ---------------------------------------------------------------------------------
# the ANN a method deploys on GPUs (``export --format onnx``)
# ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class AnnLayer:
    """One layer of an ANN, reading the outputs of the layers named in ``inputs``.

    kinds: ``conv`` / ``gemm`` (weight, bias; conv: stride, padding, kernel; gemm: ``alpha``
    multiplies W x, None = 1 and unstated) followed by BatchNormalization (``bn`` = (gamma,
    beta, running mean, running var), eps 1e-5) and max-pool (``maxpool`` k > 0) when given;
    ``relu``; ``quantise``: y = scale * clip(floor((z + psi) * k + phi), 0, levels) with
    per-channel or scalar psi, k, phi, scale; ``avgpool`` (k x k, stride k); ``add`` (the sum
    of the inputs); ``flatten``."""
    name: str
    kind: str
    inputs: tuple[str, ...]
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AnnNet:
    layers: tuple[AnnLayer, ...]  # the last one gives the logits
    input_shape: tuple[int, ...]
    num_classes: int
    name: str  # the graph's name
    tensor_names: tuple[str, str] = ("weight", "bias")  # how the weight/bias initialisers are named


def ann_branch(meta: dict, tensors: dict) -> AnnNet:
    """The ReLU ANN of an SNN2ANN (or ``ann``) checkpoint: Conv/Gemm -> BN (running statistics)
    [-> max-pool] -> ReLU per hidden layer; avg-pool -> ReLU; residual block a -> ReLU, b + shortcut
    -> ReLU; the classifier applied to h / T (Gemm alpha = 1/T). The branch is fed T * x in
    training (models/snn2ann.py), so the first layer's weights are multiplied by T here and the
    model's input is the plain preprocessed sample."""
    from spikebridge.models.architectures import infer_shapes, pool_kernel, resblock_has_projection

    T = float(meta["timesteps"])
    layers: list[AnnLayer] = []
    first = [True]

    def synapse(key, node, spec, src, alpha=1.0):
        w = tensors[f"layers.{key}.op.weight"].astype(np.float32)
        b = tensors[f"layers.{key}.op.bias"].astype(np.float32)
        if first[0]:
            w = w * T
            first[0] = False
        p = {"weight": w, "bias": b}
        if spec["type"] == "conv":
            p.update(stride=int(spec["stride"]), padding=int(spec["padding"]), kernel=int(spec["kernel_size"]))
        else:
            p["alpha"] = alpha
        if spec.get("bn"):
            p["bn"] = tuple(tensors[f"layers.{key}.bn.{k}"] for k in ("weight", "bias", "running_mean", "running_var"))
        if spec.get("maxpool"):
            p["maxpool"] = int(spec["maxpool"])
        layers.append(AnnLayer(node, "conv" if spec["type"] == "conv" else "gemm", (src,), p))
        return node

    def relu(src, node):
        layers.append(AnnLayer(f"{node}_relu", "relu", (src,)))
        return f"{node}_relu"

    cur = "input"
    for spec, (in_shape, _) in zip(meta["layers"], infer_shapes(meta["layers"], meta["input_shape"])):
        name, typ = spec["name"], spec["type"]
        if typ == "flatten":
            layers.append(AnnLayer(name, "flatten", (cur,)))
            cur = name
        elif typ in ("conv", "linear") and not spec.get("neuron"):
            cur = synapse(name, name, spec, cur, alpha=1.0 / T)
            break
        elif typ in ("conv", "linear"):
            cur = relu(synapse(name, name, spec, cur), name)
        elif typ == "avgpool":
            layers.append(AnnLayer(name, "avgpool", (cur,), {"kernel": pool_kernel(spec, in_shape)}))
            cur = relu(name, name)
        elif typ == "resblock":
            st = spec["stride"]
            conv = {"type": "conv", "padding": 1, "kernel_size": 3, "bn": True}
            h1 = relu(synapse(f"{name}.a", f"{name}_a", {**conv, "stride": st}, cur), f"{name}_a")
            zb = synapse(f"{name}.b", f"{name}_b", {**conv, "stride": 1}, h1)
            short = cur
            if resblock_has_projection(spec, in_shape):
                short = synapse(f"{name}.shortcut", f"{name}_shortcut",
                                {"type": "conv", "padding": 0, "kernel_size": 1, "bn": True, "stride": st}, cur)
            layers.append(AnnLayer(name, "add", (zb, short)))
            cur = relu(name, name)
    return AnnNet(tuple(layers), tuple(int(s) for s in meta["input_shape"]), int(meta["num_classes"]),
                  f"spikebridge_{meta['arch']}_ann")


def quantised_ann(model, meta: dict, acts: dict) -> AnnNet:
    """The ANN of a conversion method (a models/methods/common.py ``Stack``): Conv/Gemm -> BN
    (running statistics) -> per neuron layer the quantiser
        y = scale * Clip(Floor((z + psi) * k + phi), 0, levels)
    with ``acts[name] = (psi, k, phi, levels, scale)`` (per-channel arrays or scalars):
    QCFS is psi = 0, k = L / lambda, phi = 1/2, levels = L, scale = lambda / L."""
    import torch

    layers: list[AnnLayer] = []
    cur = "input"
    with torch.no_grad():
        for s in model.spec:
            name = s["name"]
            if s["type"] == "flatten":
                layers.append(AnnLayer(name, "flatten", (cur,)))
                cur = name
                continue
            blk = model.layers[name]
            p = {"weight": blk.op.weight.detach().cpu().numpy(), "bias": blk.op.bias.detach().cpu().numpy()}
            if s["type"] == "conv":
                p.update(stride=int(s["stride"]), padding=int(s["padding"]), kernel=int(s["kernel_size"]))
            else:
                p["alpha"] = None
            if blk.neuron and blk.bn is not None:
                p["bn"] = tuple(getattr(blk.bn, k).detach().cpu().numpy()
                                for k in ("weight", "bias", "running_mean", "running_var"))
            layers.append(AnnLayer(name, "conv" if s["type"] == "conv" else "gemm", (cur,), p))
            cur = name
            if not blk.neuron:
                break
            psi, k, phi, levels, scale = acts[name]
            layers.append(AnnLayer(f"{name}_q", "quantise", (cur,),
                                   {"psi": psi, "k": k, "phi": phi, "levels": levels, "scale": scale,
                                    "per_channel": "conv" if s["type"] == "conv" else "linear", "tag": name}))
            cur = f"{name}_q"
    return AnnNet(tuple(layers), tuple(int(v) for v in meta["input_shape"]), int(meta["num_classes"]),
                  f"spikebridge_{meta['method']}_ann", tensor_names=("w", "b"))
