"""SNN2ANN (Tang et al., arXiv 2206.09449): one parameter set per layer, two branches.

SNN branch (no autograd graph): BN folded from running statistics,
    a = gamma / sqrt(var + eps);  W_s = W * a;  b_s = (a * (c - mu) + beta) / T
IF neurons, hard reset to 0, strict ``>``, a per-neuron threshold tensor of the layer's
output shape initialised U[0, 1) and never trained by gradient; membrane dropout
(p = 0.5) in training. The layer's spiking feature is its spike count n in [0, T].

ANN branch (autograd): z = BN_train(op(h_prev)); z = Dropout(z); r = ReLU(z); h = SMU(r, n).
STSU: forward h = n, backward dh/dr = 1.  ReSU: forward h = n * 1[r > 0], backward 1.
Classifier: ANN logits = FC(h_L / T) == SNN logits = FC(mean_t s_L(t)) in the forward
pass under STSU. Loss on the ANN logits; reported accuracy is the SNN branch's.

ATA (adaptive threshold adjustment), per layer and iteration after the ANN forward:
noisy = (n > 0) & (ReLU(z) == 0); rho = mean(noisy); if rho > 0.1 the layer's
thresholds rise by 0.01 (they never fall).

Deviations and clarifications, named here as methods.md asks:
- The ANN branch is fed ``T * x``: under direct encoding the first layer sees the image
  at each of the T steps, so ``T * x`` is the input's "count", the same quantity every
  later layer receives (n). With it, the SNN's total current over T equals the ANN's
  BN_eval output exactly for every layer (checked in tests), which is what makes the
  bias-spread-over-T rule consistent at the first layer too.
- ATA's noisy test uses ReLU(z) before the ANN dropout: a unit zeroed by dropout is
  not a noisy spike of the SNN.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from models.architectures import infer_shapes
from models.neurons import NeuronConfig, run_if

BN_EPS = 1e-5
ATA_RHO = 0.1
ATA_STEP = 0.01


class STSU(torch.autograd.Function):
    """Straight-through spiking unit: forward the SNN count, backward identity to r."""

    @staticmethod
    def forward(ctx, r, n):
        return n.to(r.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class ReSU(torch.autograd.Function):
    """ReLU spiking unit: forward n * 1[r > 0], backward identity to r."""

    @staticmethod
    def forward(ctx, r, n):
        return n.to(r.dtype) * (r > 0).to(r.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


SMUS = {"stsu": STSU, "resu": ReSU}


class SharedLayer(nn.Module):
    """A conv or linear layer (+ BN + per-neuron thresholds) shared by both branches."""

    def __init__(self, spec: dict, in_shape: tuple, out_shape: tuple):
        super().__init__()
        self.spec = dict(spec)
        self.kind = spec["type"]
        self.neuron = bool(spec.get("neuron", False))
        if self.kind == "conv":
            self.op = nn.Conv2d(in_shape[0], spec["out_channels"], spec["kernel_size"],
                                stride=spec["stride"], padding=spec["padding"], bias=True)
            self.bn = nn.BatchNorm2d(spec["out_channels"], eps=BN_EPS) if spec.get("bn") else None
        else:
            self.op = nn.Linear(in_shape[0], spec["out_features"], bias=True)
            self.bn = nn.BatchNorm1d(spec["out_features"], eps=BN_EPS) if spec.get("bn") else None
        if self.neuron:
            self.register_buffer("threshold", torch.rand(out_shape))
        self.out_shape = tuple(out_shape)

    def folded(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_s, b_s): BN folded from running statistics, bias spread over T."""
        w, c = self.op.weight, self.op.bias
        if self.bn is None:
            return w, c / T
        a = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        shape = (-1,) + (1,) * (w.dim() - 1)
        return w * a.view(shape), (a * (c - self.bn.running_mean) + self.bn.bias) / T

    def snn_current(self, x: torch.Tensor, T: int) -> torch.Tensor:
        w, b = self.folded(T)
        if self.kind == "conv":
            return F.conv2d(x, w, b, stride=self.op.stride, padding=self.op.padding)
        return F.linear(x, w, b)

    def ann(self, h: torch.Tensor) -> torch.Tensor:
        z = self.op(h)
        return self.bn(z) if self.bn is not None else z


class SNN2ANNNet(nn.Module):
    def __init__(self, spec: list[dict], input_shape, timesteps: int, smu: str = "stsu",
                 ann_dropout: float = 0.2, membrane_dropout: float = 0.5):
        super().__init__()
        self.spec = [dict(s) for s in spec]
        self.input_shape = tuple(input_shape)
        self.timesteps = int(timesteps)
        self.smu = smu
        self.ann_dropout = ann_dropout
        self.membrane_dropout = membrane_dropout
        self.neuron_cfg = NeuronConfig(reset="zero", threshold_test="gt", dt=1.0)
        self.layers = nn.ModuleDict()
        for s, (i, o) in zip(spec, infer_shapes(spec, input_shape)):
            if s["type"] in ("conv", "linear"):
                self.layers[s["name"]] = SharedLayer(s, i, o)
        last = self.spec[-1]
        if last["type"] != "linear" or last.get("neuron"):
            raise ValueError("the last layer must be a linear classifier without neurons")

    # ---- SNN branch -------------------------------------------------------------
    @torch.no_grad()
    def snn_forward(self, x: torch.Tensor, record: bool = False):
        """Run the SNN over T steps. Returns (logits, counts per neuron layer[, spikes])."""
        T = self.timesteps
        s_seq = None
        counts, spikes = [], []
        logits = None
        for s in self.spec:
            if s["type"] == "flatten":
                if s_seq is None:
                    x = x.flatten(1)
                else:
                    s_seq = s_seq.flatten(2)
                continue
            layer = self.layers[s["name"]]
            if not layer.neuron:
                logits = F.linear(s_seq.mean(0), layer.op.weight, layer.op.bias)
                break
            if s_seq is None:  # direct encoding: the same analog current at every step
                cur = layer.snn_current(x, T)
                currents = cur.unsqueeze(0).expand(T, *cur.shape)
            else:
                flat = s_seq.reshape(T * s_seq.shape[1], *s_seq.shape[2:])
                cur = layer.snn_current(flat, T)
                currents = cur.view(T, s_seq.shape[1], *cur.shape[1:])
            s_seq = run_if(currents, layer.threshold, self.neuron_cfg,
                           membrane_dropout=self.membrane_dropout, training=self.training)
            counts.append(s_seq.sum(0))
            if record:
                spikes.append(s_seq)
        return (logits, counts, spikes) if record else (logits, counts)

    # ---- ANN branch -------------------------------------------------------------
    def ann_forward(self, x: torch.Tensor, counts=None):
        """ANN branch. With ``counts`` (from snn_forward) the SMU maps ReLU outputs onto
        the SNN's counts; without, it is the plain ReLU ANN that shares the weights.
        Returns (logits, per-layer noisy-spike fractions or [])."""
        T = self.timesteps
        h = x * T
        i = 0
        noisy = []
        smu = SMUS[self.smu]
        for s in self.spec:
            if s["type"] == "flatten":
                h = h.flatten(1)
                continue
            layer = self.layers[s["name"]]
            if not layer.neuron:
                return layer.op(h / T), noisy
            z = layer.ann(h)
            r_clean = F.relu(z)
            r = F.relu(F.dropout(z, self.ann_dropout, self.training)) if self.ann_dropout else r_clean
            if counts is None:
                h = r
            else:
                n = counts[i]
                noisy.append(((n > 0) & (r_clean.detach() <= 0)).float().mean())
                h = smu.apply(r, n)
            i += 1
        raise AssertionError("unreachable: the spec ends with a classifier")

    @torch.no_grad()
    def adapt_thresholds(self, noisy_fractions) -> list[float]:
        """ATA: raise a layer's thresholds by 0.01 when its noisy-spike fraction > 0.1."""
        out = []
        layers = [l for l in self.layers.values() if l.neuron]
        for layer, rho in zip(layers, noisy_fractions):
            rho = float(rho)
            if rho > ATA_RHO:
                layer.threshold += ATA_STEP
            out.append(rho)
        return out
