"""Pieces shared by the qcfs, parallel, bridge, lasnn and ann methods (registers nothing).

- ``Stack``: the architecture spec (conv / linear / flatten) as conv-or-linear + BN blocks
  whose state-dict keys are ``layers.<name>.op.*`` and ``layers.<name>.bn.*`` (the same
  names SNN2ANN uses, so weights move between methods one to one). The activation is a
  callable chosen by the method.
- ``SpikingStack``: the same blocks run as a LIF/IF SNN over T steps with a surrogate
  gradient (rectangular, 1[|v - theta| < 1/2]), BN applied to the current over the T*B batch
  (folded from running statistics at export). Used by BPTT in bridge and lasnn.
- The *deployed* SNN: a list of plain layer dicts (folded weights, neuron parameters) that
  ``run_deployed`` (torch, sequential) simulates and ``models.deployed.from_layers`` turns
  into the DeployedNet the exporters write, so the torch accuracy and the exported graph
  cannot disagree.
- data loading, epoch loops, metrics/curves writing.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from spikebridge.base.errors import CheckpointError, InputError
from spikebridge.base.fileio import atomic_path, atomic_write_text
from spikebridge.models.architectures import build_spec, infer_shapes
from spikebridge.models.checkpoint import load_weights  # noqa: F401 (the methods' weight loader)
from spikebridge.models.config import seed_everything  # noqa: F401 (the methods' seeding)
from spikebridge.models.methods.options import SCHEDULES

BN_EPS = 1e-5
SUPPORTED = ("conv", "linear", "flatten")


# ---------------------------------------------------------------------------------
# architecture
# ---------------------------------------------------------------------------------

def check_spec(spec: list[dict], method: str) -> None:
    bad = [s.get("name") for s in spec if s.get("type") not in SUPPORTED]
    if bad:
        raise InputError(f"method {method!r} supports conv, linear and flatten layers (archs mlp, cnn); "
                         f"unsupported layer(s): {', '.join(map(str, bad))}")
    last = spec[-1]
    if last.get("type") != "linear" or last.get("neuron"):
        raise InputError("the last layer must be a linear classifier without neurons")


def shrink_spec(spec: list[dict], width: float) -> list[dict]:
    """The same layer list with every hidden layer's channels/features scaled by ``width``."""
    out = []
    for s in spec:
        s = dict(s)
        if s["type"] == "conv":
            s["out_channels"] = max(1, int(round(s["out_channels"] * width)))
        elif s["type"] == "linear" and s.get("neuron"):
            s["out_features"] = max(1, int(round(s["out_features"] * width)))
        out.append(s)
    return out


class Block(nn.Module):
    def __init__(self, spec: dict, in_shape: tuple, out_shape: tuple, bn_init: float = 1.0):
        super().__init__()
        self.spec = dict(spec)
        self.kind = spec["type"]
        self.neuron = bool(spec.get("neuron", False))
        self.out_shape = tuple(out_shape)
        if self.kind == "conv":
            self.op = nn.Conv2d(in_shape[0], spec["out_channels"], spec["kernel_size"],
                                stride=spec["stride"], padding=spec["padding"], bias=True)
            self.bn = nn.BatchNorm2d(spec["out_channels"], eps=BN_EPS) if spec.get("bn") else None
        else:
            self.op = nn.Linear(in_shape[0], spec["out_features"], bias=True)
            self.bn = nn.BatchNorm1d(spec["out_features"], eps=BN_EPS) if spec.get("bn") else None
        if self.bn is not None and bn_init != 1.0:
            nn.init.constant_(self.bn.weight, bn_init)

    def forward(self, h):
        z = self.op(h)
        return self.bn(z) if self.bn is not None else z

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, b) with BN folded from running statistics (bias NOT divided by T)."""
        w, c = self.op.weight, self.op.bias
        if self.bn is None:
            return w, c
        a = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        shape = (-1,) + (1,) * (w.dim() - 1)
        return w * a.view(shape), a * (c - self.bn.running_mean) + self.bn.bias


class Stack(nn.Module):
    """The spec's blocks. ``forward(x, act)``: act(index, block, z) -> h for neuron layers."""

    def __init__(self, spec, input_shape, bn_init: float = 1.0):
        super().__init__()
        self.spec = [dict(s) for s in spec]
        self.input_shape = tuple(input_shape)
        self.layers = nn.ModuleDict()
        for s, (i, o) in zip(self.spec, infer_shapes(self.spec, input_shape)):
            if s["type"] in ("conv", "linear"):
                self.layers[s["name"]] = Block(s, i, o, bn_init)

    def neuron_blocks(self) -> list[Block]:
        return [b for b in self.layers.values() if b.neuron]

    def forward(self, x, act, record: bool = False):
        h = x
        feats = []
        i = 0
        for s in self.spec:
            if s["type"] == "flatten":
                h = h.flatten(1)
                continue
            blk = self.layers[s["name"]]
            z = blk(h)
            if not blk.neuron:
                return (z, feats) if record else z
            h = act(i, blk, z)
            if record:
                feats.append(h)
            i += 1
        raise AssertionError("unreachable: the spec ends with a classifier")


# ---------------------------------------------------------------------------------
# BPTT SNN with surrogate gradient
# ---------------------------------------------------------------------------------

class SpikeFn(torch.autograd.Function):
    """Heaviside forward (``v > theta``), rectangular surrogate 1[|v - theta| < 1/2] backward."""

    @staticmethod
    def forward(ctx, v, theta):
        ctx.save_for_backward(v)
        ctx.theta = theta
        return (v > theta).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad * ((v - ctx.theta).abs() < 0.5).to(grad.dtype), None


class SpikingStack(Stack):
    """LIF SNN over T steps: v(t) = decay * v(t-1) * (1 - s(t-1)) + I(t), s = v > theta,
    hard reset to 0 (decay = 1 would be IF). Direct encoding: the analog image is the first
    layer's input at every step. Logits = classifier(mean_t s_L(t))."""

    def __init__(self, spec, input_shape, decay: float = 0.25, threshold: float = 0.5, bn_init: float = 1.0):
        super().__init__(spec, input_shape, bn_init)
        self.decay = float(decay)
        self.threshold = float(threshold)

    def run(self, x, T: int, record: bool = False):
        """Returns logits (and the per-neuron-layer firing-rate maps when ``record``)."""
        B = x.shape[0]
        seq = None  # (T*B, ...)
        rates = []
        for s in self.spec:
            if s["type"] == "flatten":
                if seq is None:
                    x = x.flatten(1)
                else:
                    seq = seq.flatten(1)
                continue
            blk = self.layers[s["name"]]
            if seq is None:
                cur = blk(x)
                cur = cur.unsqueeze(0).expand(T, *cur.shape)
            else:
                cur = blk(seq).view(T, B, *blk.out_shape)
            if not blk.neuron:
                logits = cur.mean(0)
                return (logits, rates) if record else logits
            v = torch.zeros_like(cur[0])
            s_prev = torch.zeros_like(cur[0])
            out = []
            for t in range(T):
                v = self.decay * v * (1.0 - s_prev) + cur[t]
                s_prev = SpikeFn.apply(v, self.threshold)
                out.append(s_prev)
            st = torch.stack(out)
            if record:
                rates.append(st.mean(0))
            seq = st.reshape(T * B, *st.shape[2:])
        raise AssertionError("unreachable")


def lif_deployed(model: Stack, decay: float, threshold: float) -> list[dict]:
    """Deployed layers of a SpikingStack (BN folded; LIF decay, hard reset, strict >)."""
    layers = []
    with torch.no_grad():
        for s, (_, o) in zip(model.spec, infer_shapes(model.spec, model.input_shape)):
            if s["type"] == "flatten":
                layers.append({"name": s["name"], "type": "flatten"})
                continue
            blk = model.layers[s["name"]]
            w, b = blk.folded()
            d = {"name": s["name"], "type": s["type"], "w": w.double().cpu(), "b": b.double().cpu(), "spec": s}
            if blk.neuron:
                d["neuron"] = {"kind": "LIF" if decay != 1.0 else "IF", "decay": float(decay),
                               "threshold": torch.full(o, float(threshold), dtype=torch.float64),
                               "v_init": 0.0, "reset": "zero", "test": "gt", "amplitude": 1.0}
            layers.append(d)
    return layers


# ---------------------------------------------------------------------------------
# deployed SNN: torch reference and NIR
# ---------------------------------------------------------------------------------

def _apply(layer: dict, x: torch.Tensor) -> torch.Tensor:
    s = layer["spec"]
    if layer["type"] == "conv":
        return F.conv2d(x, layer["w"], layer["b"], stride=s["stride"], padding=s["padding"])
    return F.linear(x, layer["w"], layer["b"])


# whole-window neuron kinds: kind -> f(currents (T, B, ...), neuron dict) -> outputs (T, B, ...)
# (parallel.py registers "PAR", its windowed neuron); run_deployed walks the layers for them too
WINDOW_NEURONS: dict = {}


def count_then_emit(cur: torch.Tensor, n: dict) -> torch.Tensor:
    """IF with reset 'window' over one window of T = len(cur) steps (hardware/graph.py
    neuron_semantics): v = v_init + sum_t I(t), no output before the last step, then one
    graded output clip(floor(v / theta), 0, T) * amplitude."""
    T = cur.shape[0]
    thr = torch.as_tensor(n["threshold"], dtype=torch.float64)
    v = torch.zeros_like(cur[0]) + torch.as_tensor(n["v_init"], dtype=torch.float64)
    for t in range(T):  # eventsim's order of additions
        v = v + cur[t]
    out = torch.zeros_like(cur)
    out[-1] = torch.clamp(torch.floor(v / thr), 0, T) * torch.as_tensor(n["amplitude"], dtype=torch.float64)
    return out


@torch.no_grad()
def run_deployed(layers: list[dict], x: torch.Tensor, T: int) -> tuple[torch.Tensor, float]:
    """The deployed SNN exactly as the NIR export states it (float64, sequential neurons).

    A neuron whose kind is in ``WINDOW_NEURONS`` maps the layer's whole T-step current to its
    outputs at once (spikes counted as nonzero outputs). Otherwise, per neuron layer and step: v <- decay * v + I (IF: decay 1); spike where v > theta
    (``gt``) or v >= theta (``ge``); reset zero (v <- 0) or subtract (v <- v - theta);
    output s * amplitude. v(0) = v_init. Readout: sum_t (W s(t) + b) / T.
    Returns (logits, spikes per sample)."""
    x = x.double()
    B = x.shape[0]
    seq = None
    spikes = 0.0
    for layer in layers:
        if layer["type"] == "flatten":
            if seq is None:
                x = x.flatten(1)
            else:
                seq = seq.flatten(1)
            continue
        if seq is None:
            cur = _apply(layer, x)
            cur = cur.unsqueeze(0).expand(T, *cur.shape)
        else:
            c = _apply(layer, seq)
            cur = c.view(T, B, *c.shape[1:])
        n = layer.get("neuron")
        if n is None:
            return cur.mean(0), spikes / max(B, 1)
        if n["kind"] in WINDOW_NEURONS or n["reset"] == "window":
            out = (count_then_emit if n["reset"] == "window" else WINDOW_NEURONS[n["kind"]])(cur, n)
            spikes += float((out != 0).sum())
            seq = out.reshape(T * B, *out.shape[2:])
            continue
        thr = torch.as_tensor(n["threshold"], dtype=torch.float64)
        amp = torch.as_tensor(n["amplitude"], dtype=torch.float64)
        v = torch.zeros_like(cur[0]) + torch.as_tensor(n["v_init"], dtype=torch.float64)
        out = torch.empty_like(cur)
        for t in range(T):
            v = n.get("decay", 1.0) * v + cur[t] if n["kind"] == "LIF" else v + cur[t]
            s = (v >= thr) if n["test"] == "ge" else (v > thr)
            sf = s.double()
            v = v - sf * thr if n["reset"] == "subtract" else v * (1.0 - sf)
            out[t] = sf * amp
            spikes += float(s.sum())
        seq = out.reshape(T * B, *out.shape[2:])
    raise AssertionError("unreachable")


@torch.no_grad()
def deployed_accuracy(layers, x, y, T: int, batch_size: int = 500) -> tuple[float, float]:
    ok, spikes = 0, 0.0
    for i in range(0, len(x), batch_size):
        logits, sp = run_deployed(layers, x[i:i + batch_size], T)
        ok += int((logits.argmax(1) == y[i:i + batch_size]).sum())
        spikes += sp * len(x[i:i + batch_size])
    n = max(len(x), 1)
    return ok / n, spikes / n


# ---------------------------------------------------------------------------------
# data, loops, checkpoint helpers
# ---------------------------------------------------------------------------------

# methods that train on event frames (B, T, ...) (their networks take the frame of step t at step t);
# the others need static samples: conversion calibrates on them, bridge/lasnn/ann train an ANN on them
EVENT_METHODS = ("snn2ann", "bptt")


def load_data(cfg, device):
    from spikebridge.models.datasets import dataset_info, load_dataset

    info = dataset_info(cfg.dataset)
    if info.events:
        return load_event_data(cfg, device)
    if {"data_dir", "event_size", "event_window_us"} & set(cfg.extra or {}):
        raise InputError(f"--data-dir, --event-size and --event-window-us are for the event datasets (nmnist, dvsgesture, shd), "
                         f"not {cfg.dataset}")
    xtr, ytr = load_dataset(cfg.dataset, "train")
    xte, yte = load_dataset(cfg.dataset, "test")
    if cfg.limit_train:
        xtr, ytr = xtr[:cfg.limit_train], ytr[:cfg.limit_train]
    lt = getattr(cfg, "limit_test", None) or ((cfg.extra or {}).get("limit_test"))
    if lt:
        xte, yte = xte[:int(lt)], yte[:int(lt)]
    t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return info, t(xtr), t(ytr), t(xte), t(yte)


def load_event_data(cfg, device):
    """An event dataset's frames (N, T, *input_shape) with T = cfg.timesteps bins, kept as uint8/int16
    counts (the networks convert each batch to float); ``cfg.extra``: data_dir, event_size, event_window_us."""
    from spikebridge.models.datasets import event_dataset_info
    from spikebridge.models.event_data import EventTransform, load_event_dataset

    if cfg.method not in EVENT_METHODS:
        raise InputError(f"method {cfg.method!r} cannot train on event data ({cfg.dataset}): it needs static "
                         f"samples (conversion calibrates on them, bridge/lasnn/ann train an ANN on them); use "
                         f"--method {' or '.join(EVENT_METHODS)}")
    extra = cfg.extra or {}
    tf = EventTransform(int(cfg.timesteps), extra.get("event_size"), extra.get("event_window_us"))
    info = event_dataset_info(cfg.dataset, tf.resolved(cfg.dataset).size)
    xtr, ytr = load_event_dataset(cfg.dataset, "train", tf, extra.get("data_dir"), limit=cfg.limit_train)
    lt = getattr(cfg, "limit_test", None) or extra.get("limit_test")
    xte, yte = load_event_dataset(cfg.dataset, "test", tf, extra.get("data_dir"), limit=int(lt) if lt else None)
    t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return info, t(xtr), t(ytr), t(xte), t(yte)


def event_record(cfg, info) -> dict:
    """model.json's (and the NIR metadata's) ``events``: how the frames were made."""
    from spikebridge.models.event_data import size_from_shape

    window = (cfg.extra or {}).get("event_window_us")
    return {"dataset": cfg.dataset, "bins": int(cfg.timesteps), "size": size_from_shape(cfg.dataset, info.input_shape),
            "binning": "tonic ToFrame n_time_bins" if window is None else "tonic ToFrame time_window",
            **({} if window is None else {"window_us": int(window)}), "counts": True}


def check_cfg(cfg, resume: bool = False) -> None:
    if cfg.timesteps < 1 or cfg.epochs < 1 or cfg.batch_size < 1:
        raise InputError("--timesteps, --epochs and --batch-size must be positive")


def batches(n: int, batch_size: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


def make_optimizer(params, cfg, epochs: int):
    """Adam (cfg.lr, cfg.weight_decay) and a per-epoch schedule: ``step`` (the released
    SNN2ANN setting: x0.1 at 50/75/87.5% of the epochs) or ``cosine`` (cosine decay to 0 over
    the epochs, stepped once per epoch)."""
    schedule = getattr(cfg, "schedule", "step")
    if schedule not in SCHEDULES:
        raise InputError(f"unknown --schedule {schedule!r}; use {' or '.join(SCHEDULES)}")
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if schedule == "cosine":
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1))
    ms = sorted({max(1, round(epochs * f)) for f in (0.5, 0.75, 0.875)})
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, ms, gamma=0.1)


@torch.no_grad()
def ann_accuracy(model: Stack, act, x, y, batch_size: int = 500) -> float:
    model.eval()
    ok = 0
    for i in range(0, len(x), batch_size):
        ok += int((model(x[i:i + batch_size], act).argmax(1) == y[i:i + batch_size]).sum())
    return ok / max(len(x), 1)


def base_meta(cfg, info, spec, neuron: dict, **extra) -> dict:
    return {"arch": cfg.arch, "method": cfg.method, "timesteps": int(cfg.timesteps),
            "input_shape": list(info.input_shape), "num_classes": info.num_classes, "dataset": cfg.dataset,
            "layers": spec, "neuron": neuron, "seed": cfg.seed, "config": _jsonable(asdict(cfg)), **extra}


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def write_history(out: Path, history: list[dict], plot: bool = True) -> None:
    """metrics.jsonl (one JSON object per row, atomically) and, with ``plot``, curves.png."""
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    if plot:
        plot_curves(history, out / "curves.png")


def save_outputs(out: Path, state_dict: dict, meta: dict, history: list[dict]) -> None:
    """Checkpoint + metrics.jsonl + curves.png, written by rank 0 only (each file atomically);
    under torch.distributed every rank then waits until they are there."""
    from spikebridge.models import distributed as D
    from spikebridge.models.checkpoint import save_checkpoint

    if D.is_main():
        save_checkpoint(out, state_dict, meta)
        write_history(out, history)
    D.barrier()


def plot_curves(history: list[dict], path: Path) -> None:
    if not history:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = list(range(1, len(history) + 1))
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(ep, [h.get("loss", float("nan")) for h in history])
    ax[0].set_xlabel("epoch (all stages)"); ax[0].set_ylabel("loss"); ax[0].set_title("training loss")
    for key in ("ann_test_accuracy", "snn_test_accuracy"):
        vals = [h.get(key) for h in history]
        if any(v is not None for v in vals):
            ax[1].plot(ep, [np.nan if v is None else v for v in vals], label=key)
    ax[1].set_xlabel("epoch (all stages)"); ax[1].set_ylabel("test accuracy"); ax[1].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def spec_of(meta: dict, key: str = "layers") -> list[dict]:
    spec = meta.get(key)
    if not isinstance(spec, list):
        raise CheckpointError(f"model.json lacks {key!r}", place=key)
    return spec


def train_epoch(loss_of, opt, sched, xtr, ytr, batch_size: int, gen, runner=None) -> tuple[float, float]:
    """One epoch over shuffled mini-batches: loss_of(xb, yb) -> loss, an optimizer step per batch,
    a scheduler step at the end. Returns (mean loss per sample, seconds).

    Distributed (``runner`` from spikebridge.models.distributed.prepare): every rank draws the same global
    batches and trains on its slice through DDP, with random draws made for the global batch
    and the loss scaled for DDP's gradient average (models/distributed.py)."""
    from spikebridge.models import distributed as D

    ctx = D.current()
    clock = timer()
    tot, n = 0.0, 0
    for idx in batches(len(xtr), batch_size, gen):
        if ctx.enabled:
            if len(idx) < ctx.world_size:
                continue  # fewer samples than processes: skipped by every rank
            off, n_local = ctx.shard(len(idx))
            li = idx[off:off + n_local]
            with D.rows(off, len(idx)):
                loss = runner(lambda net: loss_of(xtr[li], ytr[li]))
            opt.zero_grad(set_to_none=True)
            D.sliced_loss(loss, n_local, len(idx)).backward()
            opt.step()
            tot += float(loss.detach()) * n_local
            n += n_local
            continue
        loss = loss_of(xtr[idx], ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tot += float(loss.detach()) * len(idx)
        n += len(idx)
    sched.step()
    if ctx.enabled:
        tot, n = D.all_reduce_sum(torch.tensor([tot, n], dtype=torch.float64)).tolist()
    return tot / max(n, 1), clock()


def timer():
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0


def default_spec(cfg, info) -> list[dict]:
    spec = build_spec(cfg.arch, info.input_shape, info.num_classes)
    check_spec(spec, cfg.method)
    return spec


def fit_ann(model: Stack, act_for_epoch, cfg, data, epochs: int, progress: bool = False, label: str = "ann",
            history: list | None = None, eval_act=None, stages=None) -> list[dict]:
    """Train ``model`` with cross-entropy on the ANN forward ``model(x, act_for_epoch(e))``.
    Adam and the schedule of ``make_optimizer``. Appends one row per
    epoch to ``history`` (stage, epoch, loss, ann_test_accuracy, seconds). ``stages``
    (spikebridge.models.methods.resume.Stages): resume this stage (``label``) and save it every epoch."""
    _, xtr, ytr, xte, yte = data
    from spikebridge.models import distributed as D

    history = history if history is not None else []
    runner = D.prepare(model)  # DDP (+ --sync-bn) when distributed
    params = model.param_groups(cfg) if hasattr(model, "param_groups") else model.parameters()
    opt, sched = make_optimizer(params, cfg, epochs)
    gen = torch.Generator().manual_seed(cfg.seed)
    start, mine = stages.restore(label, model, opt, sched, gen, epochs) if stages else (0, [])
    history.extend(mine)
    for e in range(start, epochs):
        act = act_for_epoch(e)
        model.train()
        loss_mean, secs = train_epoch(lambda xb, yb: F.cross_entropy(model(xb, act), yb),
                                      opt, sched, xtr, ytr, cfg.batch_size, gen, runner)
        acc = ann_accuracy(model, eval_act(e) if eval_act else act, xte, yte)
        mine.append({"stage": label, "epoch": e + 1, "loss": loss_mean, "ann_test_accuracy": acc,
                     "seconds": secs, "lr": opt.param_groups[0]["lr"]})
        history.append(mine[-1])
        if stages:
            stages.save(label, e + 1, epochs, model, opt, sched, gen, mine)
        if progress:
            print(f"[{label}] epoch {e + 1}/{epochs}: loss {loss_mean:.4f} ANN acc {acc:.4f} {secs:.1f}s",
                  file=sys.stderr, flush=True)
    return history


def relu_act(i, blk, z):
    return F.relu(z)


def fit_snn(model: "SpikingStack", T: int, cfg, data, epochs: int, loss_fn=None, progress: bool = False,
            label: str = "bptt", history: list | None = None, lr: float | None = None, stages=None) -> list[dict]:
    """BPTT (surrogate gradient) over T steps; loss_fn(model, xb, yb) -> loss (default: CE on
    the mean-over-time readout). One row per epoch (stage, epoch, loss, snn_test_accuracy of
    the deployed network, seconds)."""
    from spikebridge.models import distributed as D

    _, xtr, ytr, xte, yte = data
    history = history if history is not None else []
    runner = D.prepare(model)  # DDP (+ --sync-bn) when distributed
    if loss_fn is None:
        loss_fn = lambda m, xb, yb: F.cross_entropy(m.run(xb, T), yb)  # noqa: E731
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr if lr is None else lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1))
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    start, mine = stages.restore(label, model, opt, sched, gen, epochs) if stages else (0, [])
    history.extend(mine)
    for e in range(start, epochs):
        model.train()
        loss_mean, secs = train_epoch(lambda xb, yb: loss_fn(model, xb, yb), opt, sched, xtr, ytr,
                                      cfg.batch_size, gen, runner)
        model.eval()
        acc, spikes = deployed_accuracy(lif_deployed(model, model.decay, model.threshold), xte.cpu(), yte.cpu(), T)
        mine.append({"stage": label, "epoch": e + 1, "loss": loss_mean, "snn_test_accuracy": acc,
                     "spikes_per_sample": spikes, "seconds": secs})
        history.append(mine[-1])
        if stages:
            stages.save(label, e + 1, epochs, model, opt, sched, gen, mine)
        if progress:
            print(f"[{label}] epoch {e + 1}/{epochs}: loss {loss_mean:.4f} SNN acc {acc:.4f} {secs:.1f}s",
                  file=sys.stderr, flush=True)
    return history
