"""Training loop for SNN2ANN (and, through the same loop, later methods).

Per batch: SNN branch without autograd -> spike counts; ANN branch with the SMU ->
loss on the ANN logits (== SNN logits under STSU); backward; optimizer step; ATA.
Adam (lr 1e-3, weight decay 5e-4 as released) with the learning rate x0.1 at 50%, 75%
and 87.5% of the epochs (the released 100/150/175 of 200). Checkpoint every epoch.
"""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from hardware.errors import InputError
from hardware.fileio import atomic_path, atomic_write_text
from models.architectures import build_spec
from models.checkpoint import save_checkpoint
from models.datasets import dataset_info, load_dataset
from models.snn2ann import SNN2ANNNet

METHODS = ("snn2ann",)


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
    smu: str = "stsu"
    ann_dropout: float = 0.2
    membrane_dropout: float = 0.5
    seed: int = 0
    device: str = "auto"
    limit_train: int | None = None
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


def make_model(cfg: TrainConfig, input_shape, num_classes) -> SNN2ANNNet:
    spec = build_spec(cfg.arch, input_shape, num_classes)
    return SNN2ANNNet(spec, input_shape, cfg.timesteps, smu=cfg.smu, ann_dropout=cfg.ann_dropout,
                      membrane_dropout=cfg.membrane_dropout)


@torch.no_grad()
def evaluate(model: SNN2ANNNet, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> dict:
    """SNN test accuracy (the reported one), plain-ANN accuracy, spikes per sample."""
    model.eval()
    snn_ok = ann_ok = 0
    spikes = 0.0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        logits, counts = model.snn_forward(xb)
        snn_ok += int((logits.argmax(1) == yb).sum())
        spikes += float(sum(c.sum() for c in counts))
        ann_logits, _ = model.ann_forward(xb)
        ann_ok += int((ann_logits.argmax(1) == yb).sum())
    n = max(len(x), 1)
    return {"snn_test_accuracy": snn_ok / n, "ann_test_accuracy": ann_ok / n, "spikes_per_sample": spikes / n}


def _milestones(epochs: int) -> list[int]:
    return sorted({max(1, round(epochs * f)) for f in (0.5, 0.75, 0.875)})


def train(cfg: TrainConfig, out_dir, progress: bool = True, resume: bool = False) -> dict:
    """Train; write checkpoint, metrics.jsonl and curves.png into ``out_dir``; return the last metrics."""
    from models import methods as method_registry
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
    info = dataset_info(cfg.dataset)
    xtr, ytr = load_dataset(cfg.dataset, "train")
    xte, yte = load_dataset(cfg.dataset, "test")
    if cfg.limit_train:
        xtr, ytr = xtr[:cfg.limit_train], ytr[:cfg.limit_train]
    xtr_t, ytr_t = torch.from_numpy(xtr).to(device), torch.from_numpy(ytr).to(device)
    xte_t, yte_t = torch.from_numpy(xte).to(device), torch.from_numpy(yte).to(device)

    model = make_model(cfg, info.input_shape, info.num_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, _milestones(cfg.epochs), gamma=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    start_epoch = 0
    if resume and (out / "train_state.pt").is_file():
        start_epoch, history = _resume(out, model, opt, sched, gen, device)

    meta = {"arch": cfg.arch, "method": cfg.method, "timesteps": cfg.timesteps,
            "input_shape": list(info.input_shape), "num_classes": info.num_classes,
            "dataset": cfg.dataset, "layers": model.spec, "smu": cfg.smu,
            "neuron": {"model": "IF", "reset": "zero", "threshold_test": "gt", "v_init": 0.0,
                       "threshold": "per-neuron", "dt": 1.0, "encoding": "direct"},
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
            xb, yb = xtr_t[idx], ytr_t[idx]
            _, counts = model.snn_forward(xb)
            logits, noisy = model.ann_forward(xb, counts)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rhos = model.adapt_thresholds(noisy)
            noisy_acc.append(float(np.mean(rhos)) if rhos else 0.0)
            tot_loss += float(loss.detach()) * len(idx)
            n_seen += len(idx)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{tot_loss / n_seen:.3f}", noisy=f"{noisy_acc[-1]:.3f}")
        sched.step()
        train_seconds = time.perf_counter() - t0
        ev = evaluate(model, xte_t, yte_t)
        row = {"epoch": epoch + 1, "loss": tot_loss / max(n_seen, 1), **ev,
               "noisy_fraction": float(np.mean(noisy_acc)) if noisy_acc else 0.0,
               "seconds": train_seconds, "lr": opt.param_groups[0]["lr"]}
        history.append(row)
        if hasattr(bar, "write"):
            bar.write(f"epoch {epoch + 1}: loss {row['loss']:.4f}  ANN acc {ev['ann_test_accuracy']:.4f}  "
                      f"SNN acc {ev['snn_test_accuracy']:.4f}  noisy {row['noisy_fraction']:.3f}  "
                      f"{train_seconds:.1f}s")
        state = {"epoch": epoch + 1, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "generator": gen.get_state(), "torch_rng": torch.get_rng_state()}
        save_checkpoint(out, model.state_dict(), {**meta, "metrics": row}, train_state=state)
        atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    _plot_curves(history, out / "curves.png")
    return history[-1] if history else {}


def _resume(out: Path, model, opt, sched, gen, device):
    from models.checkpoint import build_model, load_checkpoint  # noqa: F401 (validation)
    from models.checkpoint import load_tensors, load_train_state

    tensors = load_tensors(out)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, strict=False)
    state = load_train_state(out / "train_state.pt", map_location=device, required=("epoch", "optimizer", "scheduler", "generator", "torch_rng"))
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
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
    ax[1].plot(ep, [h["ann_test_accuracy"] for h in history], label="plain ANN (shared weights)")
    ax[1].set_xlabel("epoch"); ax[1].set_ylabel("test accuracy"); ax[1].legend(); ax[1].set_title("accuracy")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
