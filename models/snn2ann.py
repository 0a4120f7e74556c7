"""SNN2ANN (Tang et al., arXiv 2206.09449): one parameter set per layer, two branches.

SNN branch (no autograd graph): BN folded from running statistics,
    a = gamma / sqrt(var + eps);  W_s = W * a;  b_s = (a * (c - mu) + beta) / T
IF neurons, hard reset to 0, strict ``>``, a per-neuron threshold tensor of the layer's
output shape initialised U[0, 1) and never trained by gradient; membrane dropout
(p = 0.5) in training. The layer's spiking feature is its spike count n in [0, T].

ANN branch (autograd): z = BN_train(op(h_prev)); z = Dropout(z); r = ReLU(z); h = SMU(r, n).
STSU: forward h = n, backward dh/dr = 1.  ReSU: forward h = n * 1[r > 0], backward 1.
(ReLU, dropout and SMU run as one autograd function that keeps only mask * 1[z > 0].)
Classifier: ANN logits = FC(h_L / T) == SNN logits = FC(mean_t s_L(t)) in the forward
pass under STSU. Loss on the ANN logits; reported accuracy is the SNN branch's.

ATA (adaptive threshold adjustment), per layer and iteration after the ANN forward:
noisy = (n > 0) & (r == 0) with r = ReLU(Dropout(z)) the ANN's activation as the released
code tests it (module.py ``adjust_Vth`` on ``relu(dropout(bn(conv x)))``: a unit the ANN
dropout zeroed where the SNN fired counts as noisy); rho = mean(noisy) over batch x neurons;
if rho > 0.1 the layer's thresholds rise by 0.01 (the released EMA
V <- 0.9 V + 0.1 (V + 0.1 [rho > 0.1]) is exactly that step; they never fall).
``ata=False`` turns the adaptation off (the study's ablation); ``ata_noisy="before_dropout"``
tests ReLU(z) before the dropout instead (our reading before the comparison with the
released code; kept for the study, benchmarks/snn2ann_study.py).

Spike penalty (``spike_penalty`` = lambda > 0, off by default; not in the paper): the loss
gets lambda * (mean firing rate of the ANN branch's mapped activations) =
lambda * sum_l sum h_l / (B * T * N), N the number of neurons. Under STSU h_l = n_l in
the forward pass, so the term is the SNN's spikes per neuron per step; its gradient reaches
z through the SMU's straight-through path (mask * 1[z > 0]) and pushes active units'
pre-activations (through BN: mostly the BN shift) down, which lowers the folded SNN
currents. See ``activity_penalty``.

Deviations and clarifications, named here as methods.md asks:
- The ANN branch is fed ``T * x``: under direct encoding the first layer sees the image
  at each of the T steps, so ``T * x`` is the input's "count", the same quantity every
  later layer receives (n). With it, the SNN's total current over T equals the ANN's
  BN_eval output exactly for every layer (checked in tests), which is what makes the
  bias-spread-over-T rule consistent at the first layer too. The released code feeds the
  ANN ``x`` (its first layer's SNN current over T is then T a W x + a (c - mu) + beta against
  the ANN's a (W x + c - mu) + beta: the SNN's first layer is driven about T times harder
  than its ANN counterpart, which makes noisy spikes there and lets ATA raise that layer's
  thresholds); ``ann_input="image"`` reproduces that, for the study only (a checkpoint
  trained so has no ANN equal to its SNN and is not meant for export).
- Max-pool is taken on each step's current (SNN) and on the BN output (ANN), as the
  released code does; sum_t maxpool(I(t)) may exceed maxpool(sum_t I(t)), so the two
  branches agree exactly only for nets without max-pool (the equality tests use those).
- Avg-pool is IF -> avgpool -> IF: the pooled spikes are the next IF's current, and on the
  ANN side the pooled counts pass through ReLU and the SMU like any other layer.
- Residual block: the block's IF receives conv_b's current plus the shortcut's (identity:
  the input spikes; projection: a 1x1 conv + BN folded like every other layer). As the
  released BasicBlock, the ANN dropout acts after conv_a only, not on the block's output.
- The SNN branch runs layer by layer when its layers are small (each layer's conv/matmul
  once over T*B samples, then its IF scan over T, as eventsim and the BPTT baseline; one
  layer's T steps alive at a time, no autograd graph), else step by step through all layers
  (one step's activations alive): LAYERWISE_MAX_ELEMENTS. Both forms draw each layer's
  membrane-dropout mask for all T steps in one ``keep_mask`` call at the layer's first step
  and give identical spikes, counts and logits (tested), so the choice changes time and
  memory only.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from spikebridge.models.architectures import infer_shapes, pool_kernel, resblock_has_projection
from spikebridge.models.distributed import global_rows, rows
from spikebridge.models.event_data import time_major
from spikebridge.models.neurons import NeuronConfig

BN_EPS = 1e-5
ATA_RHO = 0.1
ATA_STEP = 0.01
ATA_NOISY = ("after_dropout", "before_dropout")
# snn_forward runs layer by layer when T x batch x (largest neuron layer) is at most this many
# elements, else step by step (identical results; only time and memory differ). Measured on one
# core: digits cnn T=8 batch 128 (1M elements) layer by layer cut SNN2ANN's epoch CPU time from
# 0.74x to 0.60x BPTT's; Fashion-MNIST cnn T=5 batch 128 (8M) it gained no time and its peak
# memory went from 0.20x to 0.36x BPTT's (the paper's 0.27x target).
LAYERWISE_MAX_ELEMENTS = 1 << 22


class STSU(torch.autograd.Function):
    """Straight-through spiking unit on h = SMU(ReLU(Dropout(z)), n).

    Forward h = n; backward dh/dz = dReLU(Dropout(z))/dz = mask * 1[z > 0], i.e. identity
    to r = ReLU(Dropout(z)) as the paper's STSU, with the ReLU and the dropout fused in:
    the only tensor kept for the backward is ``gate`` = mask * 1[z > 0] (one float per
    element, instead of ReLU's output and the dropout mask)."""

    @staticmethod
    def forward(ctx, z, n, gate):
        ctx.save_for_backward(gate)
        return n.to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        (gate,) = ctx.saved_tensors
        return grad * gate, None, None


class ReSU(torch.autograd.Function):
    """ReLU spiking unit: forward h = n * 1[r > 0] with r = ReLU(Dropout(z)); backward as STSU."""

    @staticmethod
    def forward(ctx, z, n, gate):
        ctx.save_for_backward(gate)
        return n.to(z.dtype) * torch.gt(gate, 0, out=torch.empty_like(gate))

    @staticmethod
    def backward(ctx, grad):
        (gate,) = ctx.saved_tensors
        return grad * gate, None, None


SMUS = {"stsu": STSU, "resu": ReSU}


def keep_mask(like: torch.Tensor, p: float, batch_dim: int = 0, bits: bool = False) -> torch.Tensor:
    """Inverted-dropout mask for ``like``: each element is 1 / (1 - p) with probability
    1 - p, else 0, independently (float tensor of ``like``'s shape, dtype and device).

    On the CPU torch's bernoulli_ draws one Mersenne-Twister number per element (about
    28 ms for a 128x16x28x28 tensor on one core; it was a third of SNN2ANN's step time).
    Here one 62-bit seed is drawn from torch's generator (so ``torch.manual_seed``, the
    checkpointed RNG state and ``--resume`` still determine every mask) and numpy's PCG64
    expands it: for p = 1/2 one random bit per element (unpacked bytes), otherwise one
    16-bit integer per element kept when below round((1 - p) * 2^16), a keep probability
    within 2^-17 of 1 - p. On a GPU torch's own bernoulli_ is used.

    ``batch_dim``: the sample axis of ``like`` (1 for a (T, B, ...) mask of all time steps);
    under distributed training the global batch's mask is drawn and this rank's samples
    along that axis are returned. ``bits=True``: the same draw as a uint8 tensor of 0/1 (keep),
    a quarter of the float mask's memory; ``bits * (1 / (1 - p))`` in float32 is the mask."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    g_rows = global_rows()
    if g_rows is not None:  # distributed: the global batch's mask, this rank's rows (models/distributed.py)
        off, gb = g_rows
        shape = list(like.shape)
        shape[batch_dim] = gb
        with rows(0, None):
            full = keep_mask(like.new_empty(shape), p, batch_dim, bits)
        return full.narrow(batch_dim, off, like.shape[batch_dim])
    scale = 1.0 / (1.0 - p)
    if like.device.type != "cpu":
        m = torch.empty_like(like).bernoulli_(1.0 - p)
        return m.to(torch.uint8) if bits else m.mul_(scale)
    n = like.numel()
    g = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
    if p == 0.5:
        keep = np.unpackbits(np.frombuffer(g.bytes((n + 7) // 8), dtype=np.uint8))[:n]
    else:
        u = np.frombuffer(g.bytes(2 * n), dtype=np.uint16)
        keep = np.less(u, np.uint16(min(65535, round((1.0 - p) * 65536))))
    if bits:
        return torch.from_numpy(keep.view(np.uint8)).view(like.shape)
    m = np.multiply(keep, np.float32(scale), dtype=np.float32)
    return torch.from_numpy(m).view(like.shape).to(like.dtype)


class SharedLayer(nn.Module):
    """A conv or linear layer (+ BN [+ max-pool] + per-neuron thresholds) shared by both branches."""

    def __init__(self, spec: dict, in_shape: tuple, out_shape: tuple):
        super().__init__()
        self.spec = dict(spec)
        self.kind = spec["type"]
        self.neuron = bool(spec.get("neuron", False))
        self.maxpool = int(spec.get("maxpool") or 0)
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

    def apply_folded(self, x: torch.Tensor, wb) -> torch.Tensor:
        w, b = wb
        if self.kind == "conv":
            y = F.conv2d(x, w, b, stride=self.op.stride, padding=self.op.padding)
            return F.max_pool2d(y, self.maxpool) if self.maxpool else y
        return F.linear(x, w, b)

    def snn_current(self, x: torch.Tensor, T: int) -> torch.Tensor:
        """Per-step input current (max-pool, when the spec has one, is taken on the current)."""
        return self.apply_folded(x, self.folded(T))

    def ann(self, h: torch.Tensor) -> torch.Tensor:
        z = self.op(h)
        z = self.bn(z) if self.bn is not None else z
        return F.max_pool2d(z, self.maxpool) if self.maxpool else z


class PoolLayer(nn.Module):
    """Average pooling between two IF layers: spikes -> avgpool -> IF (per-neuron thresholds)."""

    def __init__(self, spec: dict, in_shape: tuple, out_shape: tuple):
        super().__init__()
        self.spec = dict(spec)
        self.kind = "avgpool"
        self.neuron = True
        self.kernel = pool_kernel(spec, in_shape)
        self.register_buffer("threshold", torch.rand(out_shape))
        self.out_shape = tuple(out_shape)

    def pool(self, x):
        return F.avg_pool2d(x, self.kernel)


class ResBlock(nn.Module):
    """Basic residual block: a = IF(BN(conv_a x)); out = IF(BN(conv_b a) + shortcut(x))."""

    def __init__(self, spec: dict, in_shape: tuple, out_shape: tuple):
        super().__init__()
        self.spec = dict(spec)
        self.kind = "resblock"
        self.neuron = True
        ch, s = int(spec["out_channels"]), int(spec["stride"])
        conv = {"type": "conv", "kernel_size": 3, "padding": 1, "bn": True}
        self.a = SharedLayer({**conv, "name": spec["name"] + ".a", "out_channels": ch, "stride": s,
                              "neuron": True}, in_shape, out_shape)
        self.b = SharedLayer({**conv, "name": spec["name"] + ".b", "out_channels": ch, "stride": 1,
                              "neuron": False}, out_shape, out_shape)
        if resblock_has_projection(spec, in_shape):
            self.shortcut = SharedLayer({"type": "conv", "name": spec["name"] + ".shortcut", "kernel_size": 1,
                                         "padding": 0, "bn": True, "out_channels": ch, "stride": s,
                                         "neuron": False}, in_shape, out_shape)
        else:
            self.shortcut = None
        self.register_buffer("threshold", torch.rand(out_shape))
        self.out_shape = tuple(out_shape)


def build_layers(spec, input_shape, classes=(SharedLayer, PoolLayer, ResBlock)) -> nn.ModuleDict:
    shared, pool, res = classes
    layers = nn.ModuleDict()
    for s, (i, o) in zip(spec, infer_shapes(spec, input_shape)):
        if s["type"] in ("conv", "linear"):
            layers[s["name"]] = shared(s, i, o)
        elif s["type"] == "avgpool":
            layers[s["name"]] = pool(s, i, o)
        elif s["type"] == "resblock":
            layers[s["name"]] = res(s, i, o)
    return layers


def neuron_units(spec, layers) -> list[tuple[str, nn.Module]]:
    """(name, module holding ``threshold``) of every neuron layer, in the order both branches
    produce counts / noisy fractions (a residual block gives ``<name>.a`` then ``<name>``)."""
    out = []
    for s in spec:
        if s["type"] == "flatten" or not s.get("neuron"):
            continue
        layer = layers[s["name"]]
        if s["type"] == "resblock":
            out.append((s["name"] + ".a", layer.a))
        out.append((s["name"], layer))
    return out


class SNN2ANNNet(nn.Module):
    def __init__(self, spec: list[dict], input_shape, timesteps: int, smu: str = "stsu",
                 ann_dropout: float = 0.2, membrane_dropout: float = 0.5, ata: bool = True,
                 ata_noisy: str = "after_dropout", spike_penalty: float = 0.0, ann_input: str = "count"):
        super().__init__()
        if ann_input not in ("count", "image"):
            raise ValueError(f"ann_input must be count or image, got {ann_input!r}")
        self.ann_input = ann_input
        if ata_noisy not in ATA_NOISY:
            raise ValueError(f"ata_noisy must be one of {', '.join(ATA_NOISY)}, got {ata_noisy!r}")
        self.ata = bool(ata)
        self.ata_noisy = ata_noisy
        self.spike_penalty = float(spike_penalty)
        self.spec = [dict(s) for s in spec]
        self.input_shape = tuple(input_shape)
        self.timesteps = int(timesteps)
        self.smu = smu
        self.ann_dropout = ann_dropout
        self.membrane_dropout = membrane_dropout
        self.neuron_cfg = NeuronConfig(reset="zero", threshold_test="gt", dt=1.0)
        self.layers = build_layers(self.spec, input_shape)
        self._static_out: torch.Tensor | None = None  # reused spike buffer of the first layer (not state)
        last = self.spec[-1]
        if last["type"] != "linear" or last.get("neuron"):
            raise ValueError("the last layer must be a linear classifier without neurons")

    def neuron_units(self):
        return neuron_units(self.spec, self.layers)

    # ---- SNN branch -------------------------------------------------------------
    def _membrane_mask(self, masks: dict, key: str, like: torch.Tensor):
        """The membrane-dropout keep bits of neuron layer ``key`` for all T steps, uint8
        (T, B, ...), or None (eval, or p = 0). Drawn once per layer, at the layer's first step,
        by one ``keep_mask`` call: both SNN forms reach the layers' first steps in the same
        order (``neuron_units``), so they draw the same masks from the same torch RNG state."""
        if not (self.membrane_dropout > 0 and self.training):
            return None
        if key not in masks:
            masks[key] = keep_mask(like.new_empty((self.timesteps, *like.shape)), self.membrane_dropout,
                                   batch_dim=1, bits=True)
        return masks[key]

    def _if_step(self, v, cur, th, keep, out=None, scratch=None):
        """One IF step (hard reset to 0, strict >, membrane dropout with ``keep`` bits or None),
        in place on ``v`` (None at t = 0). Returns (membrane, spikes); the spikes are written
        into ``out`` when given (it may be ``cur`` itself: cur is read before); ``scratch``, a
        tensor of v's shape for the float mask (reused across a scan's steps: fresh tensors of
        this size come from mmap and page-fault on first write).

        Float arithmetic throughout (the comparison writes 0/1 floats directly; the reset
        and the dropout are one multiply by (1 - s) * mask): torch's bool/uint8 kernels
        and masked_fill_ cost several times a float multiply on the CPU."""
        v = cur.clone() if v is None else v.add_(cur)
        s = torch.gt(v, th, out=torch.empty_like(v) if out is None else out)
        if keep is not None:
            m = torch.mul(keep, 1.0 / (1.0 - self.membrane_dropout),
                          out=torch.empty_like(v) if scratch is None else scratch)
            v.mul_(m.addcmul_(m, s, value=-1.0))
        else:
            v.addcmul_(v, s, value=-1.0)
        return v, s

    def _scan(self, masks, key, cur, th, static: bool, reuse: bool = False):
        """The IF over all T steps of one layer: ``cur`` (T, B, ...), or (B, ...) the same at
        every step when ``static``. Returns the spikes (T, B, ...): written over ``cur``'s
        steps as they are consumed, so a layer holds its input spikes, its currents-then-spikes
        and its uint8 dropout bits, nothing more. When ``static`` the spikes go to a new tensor,
        or with ``reuse`` to one buffer kept between calls (a fresh multi-MB tensor is mmapped
        and page-faults on first write: on digits cnn, T = 8, that was a fifth of the step)."""
        T = self.timesteps
        if not static:
            out = cur
        elif reuse:
            n = T * cur.numel()
            buf = self._static_out
            if buf is None or buf.numel() < n or buf.dtype != cur.dtype or buf.device != cur.device:
                buf = self._static_out = cur.new_empty(n)
            out = buf[:n].view(T, *cur.shape)
        else:
            out = cur.new_empty((T, *cur.shape))
        keep = self._membrane_mask(masks, key, out[0])
        scratch = torch.empty_like(out[0]) if keep is not None else None
        v = None
        for t in range(T):
            v, _ = self._if_step(v, cur if static else cur[t], th, None if keep is None else keep[t], out[t],
                                 scratch)
        return out

    def layerwise_fits(self, batch: int) -> bool:
        """Whether ``snn_forward`` runs layer by layer for this batch size by default:
        T x batch x (largest neuron layer's size) <= LAYERWISE_MAX_ELEMENTS."""
        largest = max((u.threshold.numel() for _, u in self.neuron_units()), default=0)
        return self.timesteps * batch * largest <= LAYERWISE_MAX_ELEMENTS

    @torch.no_grad()
    def snn_forward(self, x: torch.Tensor, record: bool = False, stepwise: bool | None = None):
        """Run the SNN over T steps. Returns (logits, counts per neuron layer[, spikes (T, B, ...)]).

        Layer by layer (the default): each layer runs once over all T steps -- its convolution
        or matmul over T*B samples, then the IF scan over T -- as eventsim and the BPTT
        baseline do; one layer's T steps of currents, spikes and dropout mask are alive at a
        time (no autograd graph). ``stepwise=True`` runs the whole net one step at a time
        (only one step's activations alive): the reference form, equal spike for spike
        (tests/test_models.py; the per-sample arithmetic is the same, see _snn_steps).
        ``stepwise=None`` (default) picks by size (``layerwise_fits``): small layers gain from
        fewer, larger ops; big ones are compute-bound and would only hold T times the memory.
        The first layer's current is computed once (direct encoding: same input every step).
        """
        if stepwise is None:
            stepwise = not self.layerwise_fits(x.shape[0])
        if stepwise:
            return self._snn_steps(x, record)
        T = self.timesteps
        masks: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        rec: dict[str, torch.Tensor] = {}

        def cur(layer, h, seq):
            if not seq:
                return layer.snn_current(h, T)
            y = layer.snn_current(h.flatten(0, 1), T)
            return y.view(T, h.shape[1], *y.shape[1:])

        def emit(key, s):
            counts[key] = s.sum(0)  # 0/1 summed: exact, whatever the order
            if record:
                rec[key] = s

        frames = time_major(x, self.input_shape, self.timesteps)  # event frames (B, T, ...): the input of step t is frame t
        h, seq = (x, False) if frames is None else (frames, True)
        for sp in self.spec:
            typ, name = sp["type"], sp["name"]
            if typ == "flatten":
                h = h.flatten(2) if seq else h.flatten(1)
                continue
            layer = self.layers[name]
            if typ in ("conv", "linear") and not layer.neuron:
                acc = (h[0] if seq else h).clone()  # summed step by step, as _snn_steps does
                for t in range(1, T):
                    acc.add_(h[t] if seq else h)
                logits = F.linear(acc / T, layer.op.weight, layer.op.bias)
                keys = [k for k, _ in self.neuron_units()]
                count_list = [counts[k] for k in keys]
                if record:
                    return logits, count_list, [rec[k] for k in keys]
                return logits, count_list
            if typ in ("conv", "linear"):
                c = cur(layer, h, seq)
                # the buffer only in training without record: the caller never sees these spikes
                s = self._scan(masks, name, c, layer.threshold, static=not seq,
                               reuse=self.training and not record)
            elif typ == "avgpool":
                c = layer.pool(h.flatten(0, 1)).view(T, h.shape[1], *layer.out_shape) if seq else layer.pool(h)
                s = self._scan(masks, name, c, layer.threshold, static=not seq)
            elif typ == "resblock":
                s1 = self._scan(masks, name + ".a", cur(layer.a, h, seq), layer.a.threshold, static=not seq)
                emit(name + ".a", s1)
                short = cur(layer.shortcut, h, seq) if layer.shortcut is not None else h
                c = cur(layer.b, s1, True).add_(short)  # short (B, ...) broadcasts over T when static
                del s1, short
                s = self._scan(masks, name, c, layer.threshold, static=False)
            else:
                raise AssertionError(typ)
            emit(name, s)
            h, seq = s, True
        raise AssertionError("unreachable: the spec ends with a classifier")

    def _snn_steps(self, x: torch.Tensor, record: bool = False):
        """The SNN one time step at a time through all layers (the reference form of
        ``snn_forward``). Same per-sample arithmetic as the layer-by-layer form: the same
        folded weights, each step's current from the same conv/matmul on the same inputs
        (see tests/test_models.py for the batched-vs-per-step rounding check), the same IF
        step ops in the same order, the same membrane-dropout masks."""
        T = self.timesteps
        fold: dict[int, tuple] = {}

        def cur(layer, h):
            wb = fold.get(id(layer))
            if wb is None:
                wb = fold[id(layer)] = layer.folded(T)
            return layer.apply_folded(h, wb)

        mem: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        rec: dict[str, list] = {}
        static: dict[str, torch.Tensor] = {}
        acc = None
        logits = None

        def fire(key, c, th, t):
            m = self._membrane_mask(masks, key, c)
            mem[key], s = self._if_step(mem.get(key), c, th, None if m is None else m[t])
            return s

        def emit(key, s):
            counts[key] = s.clone() if key not in counts else counts[key].add_(s)
            if record:
                rec.setdefault(key, []).append(s)

        frames = time_major(x, self.input_shape, self.timesteps)
        for t in range(T):
            h, analog = (x, True) if frames is None else (frames[t], False)
            for sp in self.spec:
                typ, name = sp["type"], sp["name"]
                if typ == "flatten":
                    h = h.flatten(1)
                    continue
                layer = self.layers[name]
                if typ in ("conv", "linear") and not layer.neuron:
                    acc = h.clone() if acc is None else acc.add_(h)
                    if t == T - 1:
                        logits = F.linear(acc / T, layer.op.weight, layer.op.bias)
                    break
                if typ in ("conv", "linear"):
                    if analog:  # direct encoding: the same analog current at every step
                        if name not in static:
                            static[name] = cur(layer, h)
                        c = static[name]
                    else:
                        c = cur(layer, h)
                    s = fire(name, c, layer.threshold, t)
                elif typ == "avgpool":
                    s = fire(name, layer.pool(h), layer.threshold, t)
                elif typ == "resblock":
                    s1 = fire(name + ".a", cur(layer.a, h), layer.a.threshold, t)
                    emit(name + ".a", s1)
                    c = cur(layer.b, s1) + (cur(layer.shortcut, h) if layer.shortcut is not None else h)
                    s = fire(name, c, layer.threshold, t)
                else:
                    raise AssertionError(typ)
                emit(name, s)
                h, analog = s, False
        keys = [k for k, _ in self.neuron_units()]
        count_list = [counts[k] for k in keys]
        if record:
            return logits, count_list, [torch.stack(rec[k]) for k in keys]
        return logits, count_list

    # ---- ANN branch -------------------------------------------------------------
    def ann_forward(self, x: torch.Tensor, counts=None, activity: list | None = None):
        """ANN branch. With ``counts`` (from snn_forward) the SMU maps ReLU outputs onto
        the SNN's counts; without, it is the plain ReLU ANN that shares the weights.
        Returns (logits, per-layer noisy-spike fractions or []). ``activity``: a list that
        receives each neuron layer's mapped activation h (with its autograd graph), for
        ``activity_penalty``."""
        T = self.timesteps
        frames = time_major(x, self.input_shape, self.timesteps)
        # event frames: the ANN sees their sum over time, the total input the IF layer integrates
        # (= T x the rate; for a static image, T x the image as before); ann_input "image" (an
        # ablation, as the released code): the image itself, or the frames' mean
        if frames is None:
            h = x * T if self.ann_input == "count" else x
        else:
            h = frames.sum(0) if self.ann_input == "count" else frames.mean(0)
        noisy = []
        smu = SMUS[self.smu]
        it = iter(counts) if counts is not None else None

        def act(z, dropout: bool = True):
            # relu(dropout(z)) == relu(z) * mask (the mask is >= 0)
            drop = dropout and self.ann_dropout and self.training
            if it is None:
                r = F.relu(z)
                h = r * keep_mask(r, self.ann_dropout) if drop else r
            else:
                n = next(it)
                with torch.no_grad():
                    gate = torch.gt(z, 0, out=torch.empty_like(z))  # dReLU/dz
                    fired = torch.gt(n, 0, out=torch.empty_like(z))
                    if self.ata_noisy == "before_dropout":
                        noisy.append(fired.sub_(gate).clamp_(min=0).mean())
                    if drop:
                        gate.mul_(keep_mask(gate, self.ann_dropout))
                    if self.ata_noisy == "after_dropout":
                        # noisy spike: the SNN fired where the ANN's ReLU(Dropout(z)) is 0
                        noisy.append(fired.sub_(torch.gt(gate, 0, out=torch.empty_like(z))).clamp_(min=0).mean())
                h = smu.apply(z, n, gate)
            if activity is not None:
                activity.append(h)
            return h

        for s in self.spec:
            typ = s["type"]
            if typ == "flatten":
                h = h.flatten(1)
                continue
            layer = self.layers[s["name"]]
            if typ in ("conv", "linear"):
                if not layer.neuron:
                    return layer.op(h / T), noisy
                h = act(layer.ann(h))
            elif typ == "avgpool":
                h = act(layer.pool(h))
            elif typ == "resblock":
                h1 = act(layer.a.ann(h))
                z = layer.b.ann(h1) + (layer.shortcut.ann(h) if layer.shortcut is not None else h)
                h = act(z, dropout=False)  # the released BasicBlock: no dropout on the block's output
        raise AssertionError("unreachable: the spec ends with a classifier")

    def activity_penalty(self, activity: list, batch: int) -> torch.Tensor:
        """``spike_penalty`` x the mean firing rate of the mapped activations ``activity``
        (from ``ann_forward``): lambda * sum_l sum h_l / (batch * T * neurons). Under STSU this
        is the SNN's spikes per neuron per step (h = n in the forward pass)."""
        neurons = sum(u.threshold.numel() for _, u in self.neuron_units())
        total = torch.stack([h.sum() for h in activity]).sum()
        return total * (self.spike_penalty / (batch * self.timesteps * neurons))

    @torch.no_grad()
    def adapt_thresholds(self, noisy_fractions) -> list[float]:
        """ATA: raise a layer's thresholds by 0.01 when its noisy-spike fraction > 0.1
        (nothing when ``ata`` is off). Returns the fractions."""
        out = []
        for (_, layer), rho in zip(self.neuron_units(), noisy_fractions):
            rho = float(rho)
            if self.ata and rho > ATA_RHO:
                layer.threshold += ATA_STEP
            out.append(rho)
        return out
