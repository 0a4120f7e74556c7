"""Spike-based back-propagation baseline (BPTT / STBP with surrogate gradients).

The same architectures as SNN2ANN (models/architectures.py), unrolled over T steps,
trained end to end through the spikes with a surrogate derivative. Multi-step, as
SpikingJelly's multi-step mode: every stateless layer (conv, BN, pooling, linear) runs
once over all T steps folded into the batch (T*B), then the neuron layer loops over T.
The first layer sees the same analog input at every step (direct encoding), so its
conv + BN is computed once and broadcast over T (BN statistics of T identical copies are
those of one copy).

Neurons (models/neurons.py semantics, dt = 1, r = 1, v_leak = 0, v(0) = 0):
    IF:   h[t] = v[t-1] + x[t]
    LIF:  h[t] = v[t-1] + (x[t] - v[t-1]) / tau          (SpikingJelly's decay_input LIF)
    s[t] = 1[h[t] > v_th];  v[t] = h[t] * (1 - s[t])       (hard reset to 0; or soft:
                                                            v[t] = h[t] - v_th * s[t])
The neuron loop is one autograd function: the forward keeps only h (T x B x N) and the
backward runs the recurrence in reverse (what SpikingJelly's fused kernels do), instead
of leaving T x (several elementwise ops) in the autograd graph:
    dL/dh[t] = dL/ds[t] * sg(h[t] - v_th) + dL/dv[t] * dv[t]/dh[t]
    dv/dh = (1 - s) - h * sg   (hard reset; the reset path is not detached)
          = 1 - v_th * sg       (soft reset)
    dL/dv[t-1] = dL/dh[t] * (1 - 1/tau)   (IF: 1);  dL/dx[t] = dL/dh[t] / tau  (IF: 1)
Surrogates sg(x): rectangular 1[|x| < 1/2] (width 1, height 1); atan (alpha = 2)
alpha / 2 / (1 + (pi/2 * alpha * x)^2); sigmoid (alpha = 4) alpha * sig(alpha x) (1 - sig).

Loss: cross-entropy on the mean-over-time logits FC(mean_t s_L(t)) (= mean_t FC(s_L(t))).
Thresholds are one scalar per network (default 1.0), LIF tau = 2 steps (SpikingJelly's
default). Export: BN folded into the conv/linear (bias NOT spread over T: it is injected
at every step), IF or LIF nodes with tau/r/dt so the ``spikebridge`` profile reproduces it.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from spikebridge.models.architectures import infer_shapes, pool_kernel, resblock_has_projection
from spikebridge.models.event_data import time_major

BN_EPS = 1e-5
SURROGATES = ("rectangular", "atan", "sigmoid")
NEURONS = ("if", "lif")


def surrogate_grad(x: torch.Tensor, kind: str, inplace: bool = False) -> torch.Tensor:
    """sg(x) for the surrogates above; ``inplace`` overwrites x (a temporary) with it."""
    if kind == "rectangular":
        return torch.lt(x.abs_() if inplace else x.abs(), 0.5, out=x if inplace else None).to(x.dtype)
    if kind == "atan":
        alpha = 2.0
        y = x if inplace else x.clone()
        return y.square_().mul_((math.pi / 2 * alpha) ** 2).add_(1.0).reciprocal_().mul_(alpha / 2)
    if kind == "sigmoid":
        sg = torch.sigmoid(4.0 * x)
        sg = sg.mul_(1 - sg).mul_(4.0)
        return x.copy_(sg) if inplace else sg
    raise ValueError(f"unknown surrogate {kind!r}; known: {', '.join(SURROGATES)}")


class MultiStepNeuron(torch.autograd.Function):
    """x_seq (T, B, ...) -> spikes (T, B, ...) with the surrogate BPTT backward above."""

    @staticmethod
    def forward(ctx, x_seq, v_th: float, decay: float, gain: float, soft: bool, surrogate: str):
        # Float arithmetic throughout (the comparison writes 0/1 floats straight into the
        # spike tensor, the reset is one fused multiply-add): torch's bool kernels and
        # masked_fill cost several times a float multiply on the CPU.
        T = x_seq.shape[0]
        h_seq = torch.empty_like(x_seq)
        s_seq = torch.empty_like(x_seq)
        v = torch.zeros_like(x_seq[0])
        for t in range(T):
            h = h_seq[t]
            if gain != 1.0:
                torch.mul(x_seq[t], gain, out=h)
                h.add_(v, alpha=decay)
            else:
                torch.add(x_seq[t], v, alpha=decay, out=h)
            s = torch.gt(h, v_th, out=s_seq[t])
            if soft:
                v = torch.sub(h, s, alpha=v_th)
            else:
                v = torch.addcmul(h, h, s, value=-1.0)
        ctx.save_for_backward(h_seq)
        ctx.cfg = (v_th, decay, gain, soft, surrogate)
        return s_seq

    @staticmethod
    def backward(ctx, grad_s):
        (h_seq,) = ctx.saved_tensors
        v_th, decay, gain, soft, surrogate = ctx.cfg
        grad_x = torch.empty_like(h_seq)
        grad_v = torch.zeros_like(h_seq[0])
        dv_dh = torch.empty_like(h_seq[0])
        for t in range(h_seq.shape[0] - 1, -1, -1):
            h = h_seq[t]
            sg = surrogate_grad(h - v_th, surrogate, inplace=True)
            if soft:
                torch.mul(sg, -v_th, out=dv_dh).add_(1.0)
            else:
                torch.le(h, v_th, out=dv_dh).addcmul_(h, sg, value=-1.0)
            grad_h = sg.mul_(grad_s[t]).addcmul_(grad_v, dv_dh)
            torch.mul(grad_h, gain, out=grad_x[t])
            grad_v = grad_h.mul_(decay)
        return grad_x, None, None, None, None, None


class SpikingNeuron(nn.Module):
    """IF or LIF over (T, B, ...) with surrogate gradients; parameters named as in NIR."""

    def __init__(self, kind: str = "lif", v_threshold: float = 1.0, tau: float = 2.0,
                 reset: str = "zero", surrogate: str = "atan"):
        super().__init__()
        if kind not in NEURONS:
            raise ValueError(f"unknown neuron {kind!r}; known: {', '.join(NEURONS)}")
        if surrogate not in SURROGATES:
            raise ValueError(f"unknown surrogate {surrogate!r}; known: {', '.join(SURROGATES)}")
        self.kind, self.v_threshold, self.tau = kind, float(v_threshold), float(tau)
        self.reset, self.surrogate = reset, surrogate

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if self.kind == "lif":
            decay, gain = 1.0 - 1.0 / self.tau, 1.0 / self.tau
        else:
            decay, gain = 1.0, 1.0
        return MultiStepNeuron.apply(x_seq, self.v_threshold, decay, gain, self.reset == "subtract",
                                     self.surrogate)


def reference_neuron(x_seq, v_th, decay, gain, soft, surrogate):
    """Plain autograd loop (for tests): the same forward, gradient through a surrogate step."""
    class _Spike(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u):
            ctx.save_for_backward(u)
            return (u > 0).to(u.dtype)

        @staticmethod
        def backward(ctx, g):
            (u,) = ctx.saved_tensors
            return g * surrogate_grad(u, surrogate)

    v = torch.zeros_like(x_seq[0])
    out = []
    for t in range(x_seq.shape[0]):
        h = v * decay + x_seq[t] * gain
        s = _Spike.apply(h - v_th)
        v = h - s * v_th if soft else h * (1 - s)
        out.append(s)
    return torch.stack(out)


class _Synapse(nn.Module):
    """conv/linear + BN (+ max-pool), applied over T*B at once."""

    def __init__(self, spec, in_shape, out_channels=None, kernel=None, stride=None, padding=None):
        super().__init__()
        self.kind = spec["type"]
        self.maxpool = int(spec.get("maxpool") or 0)
        if self.kind == "conv":
            oc = out_channels or spec["out_channels"]
            self.op = nn.Conv2d(in_shape[0], oc, kernel or spec["kernel_size"],
                                stride=stride or spec["stride"],
                                padding=spec["padding"] if padding is None else padding, bias=True)
            self.bn = nn.BatchNorm2d(oc, eps=BN_EPS) if spec.get("bn", True) else None
        else:
            self.op = nn.Linear(in_shape[0], spec["out_features"], bias=True)
            self.bn = nn.BatchNorm1d(spec["out_features"], eps=BN_EPS) if spec.get("bn") else None

    def forward(self, x):  # x: (N, ...) with N = B or T*B
        z = self.op(x)
        if self.bn is not None:
            z = self.bn(z)
        return F.max_pool2d(z, self.maxpool) if self.maxpool else z

    def folded(self):
        """(W, b) with BN folded from running statistics; b is injected at every step."""
        w, c = self.op.weight, self.op.bias
        if self.bn is None:
            return w, c
        a = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        shape = (-1,) + (1,) * (w.dim() - 1)
        return w * a.view(shape), a * (c - self.bn.running_mean) + self.bn.bias


class _Block(nn.Module):
    def __init__(self, spec, in_shape, out_shape):
        super().__init__()
        ch, s = int(spec["out_channels"]), int(spec["stride"])
        conv = {"type": "conv", "padding": 1, "bn": True}
        self.a = _Synapse(conv, in_shape, ch, 3, s, 1)
        self.b = _Synapse(conv, out_shape, ch, 3, 1, 1)
        self.shortcut = _Synapse(conv, in_shape, ch, 1, s, 0) if resblock_has_projection(spec, in_shape) else None


class BPTTNet(nn.Module):
    def __init__(self, spec: list[dict], input_shape, timesteps: int, neuron: str = "lif",
                 surrogate: str = "atan", tau: float = 2.0, v_threshold: float = 1.0, reset: str = "zero",
                 encoding: str = "direct", seed: int = 0):
        super().__init__()
        import numpy as np

        self.encoding = encoding  # static images -> spikes (models/config.py encode_batch)
        self.encoding_rng = np.random.default_rng(seed)
        self.spec = [dict(s) for s in spec]
        self.input_shape = tuple(input_shape)
        self.timesteps = int(timesteps)
        self.neuron = SpikingNeuron(neuron, v_threshold, tau, reset, surrogate)
        self.layers = nn.ModuleDict()
        self.pool_kernels: dict[str, int] = {}
        for s, (i, o) in zip(self.spec, infer_shapes(self.spec, input_shape)):
            if s["type"] in ("conv", "linear"):
                self.layers[s["name"]] = _Synapse(s, i)
            elif s["type"] == "resblock":
                self.layers[s["name"]] = _Block(s, i, o)
            elif s["type"] == "avgpool":
                self.pool_kernels[s["name"]] = pool_kernel(s, i)
        last = self.spec[-1]
        if last["type"] != "linear" or last.get("neuron"):
            raise ValueError("the last layer must be a linear classifier without neurons")
        self.channels_last = False

    def use_channels_last(self) -> "BPTTNet":
        """Run the convolutions in NHWC: the 4-D parameters and the image input are laid out
        channels-last (same values, same results up to float summation order). A no-op for
        networks without convolutions."""
        if any(s["type"] in ("conv", "resblock") for s in self.spec) and len(self.input_shape) == 3:
            self.to(memory_format=torch.channels_last)
            self.channels_last = True
        return self

    def neuron_names(self) -> list[str]:
        out = []
        for s in self.spec:
            if s["type"] == "resblock":
                out.append(s["name"] + ".a")
            if s["type"] != "flatten" and s.get("neuron"):
                out.append(s["name"])
        return out

    def forward(self, x: torch.Tensor, record: bool = False):
        """x (B, ...) -> (logits = FC(mean_t s_L), spike counts per neuron layer[, spikes]).

        Direct encoding: the static image is the first layer's input at every step (its current
        computed once). Another ``encoding`` (rate, latency, delta), or x given as a sequence
        (B, T, ...) of frames, feeds the first layer a different input at each step: x is made
        time-major here, by models/config.py ``encode_batch`` (frames pass through unencoded)."""
        from spikebridge.models.config import encode_batch
        from spikebridge.models.distributed import global_rows

        T = self.timesteps
        B = x.shape[0]
        frames = time_major(x, self.input_shape, T)  # event frames (B, T, ...) -> (T, B, ...), T checked
        seq = frames is not None or self.encoding != "direct"
        if frames is not None:
            x = frames
        elif seq:
            x = encode_batch(x, self.encoding, T, self.encoding_rng, len(self.input_shape),
                             rows=global_rows() if self.training else None)  # (T, B, ...)
            T = x.shape[0]
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        h = x  # direct: analog until the first neuron layer, (B, ...) shared by every step
        counts, spikes = [], []

        def over_t(fn, h_seq):  # a stateless op over all T steps at once (T*B batch)
            y = fn(h_seq.flatten(0, 1))
            return y.view(T, B, *y.shape[1:])

        def fire(cur, is_seq):
            if not is_seq:
                cur = cur.unsqueeze(0).expand(T, *cur.shape)
            s = self.neuron(cur)
            counts.append(s.detach().sum(0))
            if record:
                spikes.append(s.detach())
            return s

        for sp in self.spec:
            typ, name = sp["type"], sp["name"]
            if typ == "flatten":
                h = h.flatten(2) if seq else h.flatten(1)
                continue
            if typ in ("conv", "linear") and not sp.get("neuron"):
                layer = self.layers[name]
                logits = layer(h.mean(0) if seq else h)
                return (logits, counts, spikes) if record else (logits, counts)
            if typ in ("conv", "linear"):
                layer = self.layers[name]
                cur = over_t(layer, h) if seq else layer(h)
            elif typ == "avgpool":
                k = self.pool_kernels[name]
                cur = over_t(lambda z: F.avg_pool2d(z, k), h) if seq else F.avg_pool2d(h, k)
            elif typ == "resblock":
                blk = self.layers[name]
                s1 = fire(over_t(blk.a, h) if seq else blk.a(h), seq)
                short = h if blk.shortcut is None else (over_t(blk.shortcut, h) if seq else blk.shortcut(h))
                if not seq:
                    short = short.unsqueeze(0).expand(T, *short.shape)
                cur = over_t(blk.b, s1) + short
                h, seq = fire(cur, True), True
                continue
            h = fire(cur, seq)
            seq = True
        raise AssertionError("unreachable: the spec ends with a classifier")


def build_bptt_model(meta: dict, tensors: dict, file: str | None = None) -> BPTTNet:
    """Rebuild a BPTT checkpoint's model (weights checked by name and shape)."""

    from spikebridge.base.errors import CheckpointError
    from spikebridge.models.config import encoding_of

    n = meta.get("neuron", {})
    kind = str(n.get("model", "LIF")).lower()
    try:
        model = BPTTNet(meta["layers"], meta["input_shape"], meta["timesteps"], neuron=kind,
                        surrogate=str(n.get("surrogate", "atan")), tau=float(n.get("tau") or 2.0),
                        v_threshold=float(n.get("threshold", 1.0)), reset=str(n.get("reset", "zero")),
                        encoding=encoding_of(meta), seed=int(meta.get("seed", 0) or 0))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"invalid BPTT neuron settings ({e})", file=file, place="neuron") from None
    from spikebridge.models.checkpoint import load_weights

    load_weights(model, tensors, file)
    model.eval()
    return model
