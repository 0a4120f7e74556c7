"""Training loop for SNN2ANN and the BPTT baseline (other methods: models/methods).

SNN2ANN, per batch: SNN branch without autograd -> spike counts; ANN branch with the
SMU -> loss on the ANN logits (== SNN logits under STSU); backward; optimizer step; ATA.
BPTT, per batch: the multi-step spiking net with surrogate gradients (models/bptt.py),
loss on the mean-over-time logits; backward through all T steps; optimizer step.
Adam (lr 1e-3, weight decay 5e-4 as released) with the schedule of
spikebridge.models.methods.common.make_optimizer: by default x0.1 at 50%, 75% and 87.5% of the epochs
(the released 100/150/175 of 200), or cosine (--schedule). Checkpoint every epoch.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from spikebridge.base.errors import InputError
from spikebridge.base.fileio import atomic_path, atomic_write_text
from spikebridge.models.architectures import build_spec
from spikebridge.models.checkpoint import save_checkpoint
from spikebridge.models.bptt import BPTTNet
from spikebridge.models.snn2ann import SNN2ANNNet

METHODS = ("snn2ann", "bptt")


@dataclass
class TrainConfig:
    method: str = "snn2ann"
    arch: str = "cnn"
    dataset: str = "digits"
    timesteps: int = 4
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 5e-4
    schedule: str = "step"  # step: x0.1 at 50/75/87.5% of the epochs (the released setting) | cosine
    smu: str = "stsu"
    ann_dropout: float = 0.2
    membrane_dropout: float = 0.5
    seed: int = 0
    device: str = "auto"
    limit_train: int | None = None
    limit_test: int | None = None
    neuron: str = "lif"  # bptt: if | lif
    surrogate: str = "atan"  # bptt: rectangular | atan | sigmoid
    tau: float = 2.0  # bptt LIF time constant, in steps
    v_threshold: float = 1.0  # bptt threshold
    augment: bool | None = None  # random crop + flip; None: on for 32x32 / 64x64 datasets
    channels_last: bool | None = None  # bptt: NHWC convolutions; None = on the CPU (measured faster there)
    sync_bn: bool = False  # distributed: BatchNorm statistics over the global batch (models/distributed.py)
    extra: dict = field(default_factory=dict)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda requested but CUDA is not available on this machine")
    if name not in ("cpu", "cuda"):
        raise InputError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_model(cfg: TrainConfig, input_shape, num_classes, device: torch.device | None = None):
    """The method's network, on ``device`` when given. BPTT's convolutions run channels-last
    (NHWC) when ``cfg.channels_last`` says so, by default on the CPU: there its T*B-sample
    convolutions are faster in that layout (per batch of 128 on one core, cnn: T=4 0.33 ->
    0.30 s, T=8 0.82 -> 0.57 s), and the baseline SNN2ANN is compared with must be the
    fastest we have. SNN2ANN stays NCHW (NHWC made its step slower: 0.19 -> 0.22 s at T=4)."""
    model = _make_model(cfg, input_shape, num_classes)
    if device is not None:
        model = model.to(device)
    if isinstance(model, BPTTNet):
        cl = cfg.channels_last if cfg.channels_last is not None else (device is None or device.type == "cpu")
        if cl:
            model.use_channels_last()
    return model


def _make_model(cfg: TrainConfig, input_shape, num_classes):
    spec = build_spec(cfg.arch, input_shape, num_classes)
    if cfg.method == "bptt":
        from spikebridge.models.bptt import NEURONS, SURROGATES
        if cfg.neuron not in NEURONS:
            raise InputError(f"unknown neuron {cfg.neuron!r}; known: {', '.join(NEURONS)}")
        if cfg.surrogate not in SURROGATES:
            raise InputError(f"unknown surrogate {cfg.surrogate!r}; known: {', '.join(SURROGATES)}")
        if not cfg.tau > 1.0 and cfg.neuron == "lif":
            raise InputError("--tau must be > 1 (in steps)")
        return BPTTNet(spec, input_shape, cfg.timesteps, neuron=cfg.neuron, surrogate=cfg.surrogate,
                       tau=cfg.tau, v_threshold=cfg.v_threshold)
    if cfg.smu not in ("stsu", "resu"):
        raise InputError(f"unknown spiking mapping unit {cfg.smu!r}; use stsu or resu")
    return SNN2ANNNet(spec, input_shape, cfg.timesteps, smu=cfg.smu, ann_dropout=cfg.ann_dropout,
                      membrane_dropout=cfg.membrane_dropout)


def neuron_meta(cfg: TrainConfig) -> dict:
    """model.json's ``neuron``: the semantics the exporters write (docs/nir-conventions.md)."""
    if cfg.method == "bptt":
        return {"model": cfg.neuron.upper(), "reset": "zero", "threshold_test": "gt", "v_init": 0.0,
                "threshold": cfg.v_threshold, "tau": cfg.tau if cfg.neuron == "lif" else None,
                "r": 1.0, "v_leak": 0.0, "dt": 1.0, "encoding": "direct", "surrogate": cfg.surrogate}
    return {"model": "IF", "reset": "zero", "threshold_test": "gt", "v_init": 0.0,
            "threshold": "per-neuron", "dt": 1.0, "encoding": "direct"}


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> dict:
    """SNN test accuracy (the reported one), plain-ANN accuracy (SNN2ANN), spikes per sample."""
    model.eval()
    snn_ok = ann_ok = 0
    spikes = 0.0
    is_bptt = isinstance(model, BPTTNet)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        logits, counts = model(xb) if is_bptt else model.snn_forward(xb)
        snn_ok += int((logits.argmax(1) == yb).sum())
        spikes += float(sum(c.sum() for c in counts))
        if not is_bptt:
            ann_logits, _ = model.ann_forward(xb)
            ann_ok += int((ann_logits.argmax(1) == yb).sum())
    n = max(len(x), 1)
    out = {"snn_test_accuracy": snn_ok / n, "spikes_per_sample": spikes / n}
    if not is_bptt:
        out["ann_test_accuracy"] = ann_ok / n
    return out


def train_step(model, opt, xb, yb) -> tuple[torch.Tensor, float | None]:
    """One optimisation step; returns (loss, mean noisy-spike fraction or None)."""
    if isinstance(model, BPTTNet):
        logits, _ = model(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach(), None
    _, counts = model.snn_forward(xb)
    logits, noisy = model.ann_forward(xb, counts)
    del counts
    loss = F.cross_entropy(logits, yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    rhos = model.adapt_thresholds(noisy)
    return loss.detach(), (float(np.mean(rhos)) if rhos else 0.0)


def dist_train_step(runner, model, opt, xb, yb, offset: int, global_batch: int):
    """``train_step`` on this rank's slice (rows offset.. of a global batch): dropout masks drawn
    for the global batch, the forward through DDP, the loss scaled for DDP's average
    (models/distributed.py), and ATA's noisy-spike fraction all-reduced so that every rank
    takes the same threshold decision. Returns (slice's mean loss, global mean noisy fraction)."""
    from spikebridge.models import distributed as D

    n_local = len(xb)
    with D.rows(offset, global_batch):
        if isinstance(model, BPTTNet):
            loss = runner(lambda net: F.cross_entropy(net(xb)[0], yb))
            noisy_counts = None
        else:
            _, counts = model.snn_forward(xb)
            logits, noisy = runner(lambda net: net.ann_forward(xb, counts))
            del counts
            loss = F.cross_entropy(logits, yb)
    opt.zero_grad(set_to_none=True)
    D.sliced_loss(loss, n_local, global_batch).backward()
    opt.step()
    if isinstance(model, BPTTNet):
        return loss.detach(), None
    # noisy counts (exact integers) summed over ranks, then the fraction as one process computes
    # it: float32(count) / float32(global batch x neurons)
    per = [float(layer.threshold.numel()) for _, layer in model.neuron_units()]
    noisy_counts = torch.tensor([float(r) * n_local * k for r, k in zip(noisy, per)], dtype=torch.float64).round()
    noisy_counts = D.all_reduce_sum(noisy_counts)
    rho = noisy_counts.float() / torch.tensor([global_batch * k for k in per], dtype=torch.float32)
    rhos = model.adapt_thresholds(list(rho))
    return loss.detach(), (float(np.mean(rhos)) if rhos else 0.0)


def train(cfg: TrainConfig, out_dir, progress: bool = True, resume: bool = False) -> dict:
    """Train; write checkpoint, metrics.jsonl and curves.png into ``out_dir``; return the last metrics.

    Under torchrun (WORLD_SIZE > 1) every method trains data-parallel with DDP; rank 0 alone
    writes the outputs (models/distributed.py states the rules)."""
    from spikebridge.models import distributed as D
    from spikebridge.models.checkpoint import check_checkpoint_files

    check_checkpoint_files(out_dir)  # a directory or /proc link named train_state.pt is refused, not skipped
    with D.session(cfg) as ctx:
        return _train(cfg, out_dir, progress and ctx.is_main, resume)


def _train(cfg: TrainConfig, out_dir, progress: bool, resume: bool) -> dict:
    from spikebridge.models import distributed as D
    from spikebridge.models import methods as method_registry
    other = method_registry.get(cfg.method)
    if other is not None:
        return other.train(cfg, out_dir, progress, resume)
    if cfg.method not in METHODS:
        known = list(METHODS) + method_registry.names()
        raise InputError(f"unknown method {cfg.method!r}; known: {', '.join(known)}")
    if cfg.timesteps < 1 or cfg.epochs < 1 or cfg.batch_size < 1:
        raise InputError("--timesteps, --epochs and --batch-size must be positive")
    out = Path(out_dir)
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    from spikebridge.models.methods.common import load_data, make_optimizer
    info, xtr_t, ytr_t, xte_t, yte_t = load_data(cfg, device)  # --limit-train / --limit-test applied
    use_aug = info.augment if cfg.augment is None else bool(cfg.augment)

    model = make_model(cfg, info.input_shape, info.num_classes, device)
    opt, sched = make_optimizer(model.parameters(), cfg, cfg.epochs)
    gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    history: list[dict] = []
    start_epoch = 0
    if resume and (out / "train_state.pt").is_file():
        start_epoch, history = _resume(out, model, opt, sched, gen, aug_gen, device)
    ctx = D.current()
    runner = D.prepare(model) if ctx.enabled else None  # DDP (+ --sync-bn) across the processes

    meta = {"arch": cfg.arch, "method": cfg.method, "timesteps": cfg.timesteps,
            "input_shape": list(info.input_shape), "num_classes": info.num_classes,
            "dataset": cfg.dataset, "layers": model.spec, "neuron": neuron_meta(cfg),
            **({"smu": cfg.smu} if cfg.method == "snn2ann" else {}),
            "seed": cfg.seed, "config": asdict(cfg)}
    bar_factory = _bar_factory(progress)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(xtr_t), generator=gen).to(device)
        tot_loss, n_seen, noisy_acc = 0.0, 0, []
        bar = bar_factory(range(0, len(perm), cfg.batch_size), f"epoch {epoch + 1}/{cfg.epochs}")
        for i in bar:
            idx = perm[i:i + cfg.batch_size]
            if ctx.enabled and len(idx) < ctx.world_size:
                continue  # fewer samples than processes: skipped by every rank (models/distributed.py)
            xb, yb = xtr_t[idx], ytr_t[idx]
            if use_aug:
                from spikebridge.models.augment import crop_flip
                xb = crop_flip(xb, aug_gen, padding=4)
            if ctx.enabled:
                off, n_local = ctx.shard(len(idx))
                loss, noisy = dist_train_step(runner, model, opt, xb[off:off + n_local], yb[off:off + n_local],
                                              off, len(idx))
                tot_loss += float(loss) * n_local
                n_seen += n_local
            else:
                loss, noisy = train_step(model, opt, xb, yb)
                tot_loss += float(loss) * len(idx)
                n_seen += len(idx)
            if noisy is not None:
                noisy_acc.append(noisy)
            if hasattr(bar, "set_postfix"):
                post = {"loss": f"{tot_loss / n_seen:.3f}"}
                if noisy is not None:
                    post["noisy"] = f"{noisy:.3f}"
                bar.set_postfix(**post)
        sched.step()
        if ctx.enabled:  # the global batch's loss for the log
            tot_loss, n_seen = D.all_reduce_sum(torch.tensor([tot_loss, n_seen], dtype=torch.float64)).tolist()
        train_seconds = time.perf_counter() - t0
        ev = evaluate(model, xte_t, yte_t)
        row = {"epoch": epoch + 1, "loss": tot_loss / max(n_seen, 1), **ev,
               **({"noisy_fraction": float(np.mean(noisy_acc)) if noisy_acc else 0.0}
                  if cfg.method == "snn2ann" else {}),
               "seconds": train_seconds, "lr": opt.param_groups[0]["lr"], "test_samples": len(xte_t),
               **({"processes": ctx.world_size, "samples": int(n_seen)} if ctx.enabled else {})}
        history.append(row)
        if hasattr(bar, "write"):
            ann = f"ANN acc {ev['ann_test_accuracy']:.4f}  " if "ann_test_accuracy" in ev else ""
            noisy_s = f"noisy {row['noisy_fraction']:.3f}  " if "noisy_fraction" in row else ""
            bar.write(f"epoch {epoch + 1}: loss {row['loss']:.4f}  {ann}"
                      f"SNN acc {ev['snn_test_accuracy']:.4f}  {noisy_s}{train_seconds:.1f}s")
        state = {"epoch": epoch + 1, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "generator": gen.get_state(), "aug_generator": aug_gen.get_state(),
                 "torch_rng": torch.get_rng_state()}
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        if ctx.is_main:  # rank 0 alone writes (every file atomically)
            save_checkpoint(out, model.state_dict(), {**meta, "metrics": row}, train_state=state)
            atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    if ctx.is_main:
        _plot_curves(history, out / "curves.png")
    D.barrier()
    return history[-1] if history else {}


def _resume(out: Path, model, opt, sched, gen, aug_gen, device):
    from spikebridge.models.checkpoint import build_model, load_checkpoint  # noqa: F401 (validation)
    from spikebridge.models.checkpoint import load_tensors, load_train_state

    tensors = load_tensors(out)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, strict=False)
    state = load_train_state(out / "train_state.pt", map_location="cpu", required=("epoch", "optimizer", "scheduler", "generator", "torch_rng"))
    if isinstance(state.get("model"), dict):  # the weights saved with this optimizer state (same epoch)
        model.load_state_dict(state["model"], strict=False)
    if not isinstance(state["scheduler"], dict) or \
            ("milestones" in state["scheduler"]) != isinstance(sched, torch.optim.lr_scheduler.MultiStepLR):
        raise InputError(f"--resume: {out} was trained with a different --schedule")
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    if "aug_generator" in state:
        aug_gen.set_state(state["aug_generator"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return int(state["epoch"]), history[: int(state["epoch"])]


def _bar_factory(progress: bool):
    if not progress:
        return lambda it, desc: it
    from tqdm.auto import tqdm
    return lambda it, desc: tqdm(it, desc=desc, leave=False, unit="batch", dynamic_ncols=True)


def _plot_curves(history: list[dict], path: Path) -> None:
    if not history:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(ep, [h["loss"] for h in history])
    ax[0].set_xlabel("epoch"); ax[0].set_ylabel("loss"); ax[0].set_title("training loss")
    ax[1].plot(ep, [h["snn_test_accuracy"] for h in history], label="SNN (reported)")
    if all("ann_test_accuracy" in h for h in history):
        ax[1].plot(ep, [h["ann_test_accuracy"] for h in history], label="plain ANN (shared weights)")
    ax[1].set_xlabel("epoch"); ax[1].set_ylabel("test accuracy"); ax[1].legend(); ax[1].set_title("accuracy")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
