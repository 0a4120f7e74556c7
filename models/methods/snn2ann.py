"""``snn2ann`` (models/snn2ann.py) and the training loop it shares with ``bptt`` (methods/bptt.py).

SNN2ANN, per batch: SNN branch without autograd -> spike counts; ANN branch with the
SMU -> loss on the ANN logits (== SNN logits under STSU); backward; optimizer step; ATA.
BPTT, per batch: the multi-step spiking net with surrogate gradients (models/bptt.py),
loss on the mean-over-time logits; backward through all T steps; optimizer step.
Adam (lr 1e-3, weight decay 5e-4 as released) with the schedule of
spikebridge.models.methods.common.make_optimizer: by default x0.1 at 50%, 75% and 87.5% of the epochs
(the released 100/150/175 of 200), or cosine (--schedule). Checkpoint every epoch.

``--resume``: ``train_state.pt`` holds, with the optimizer, scheduler and generators, the
weights of the same epoch, the run's settings (``SAME`` + the method's own: a resume with
another --lr, --timesteps, --method, neuron... is refused) and every metrics row so far:
metrics.jsonl is only ever written from it, so a kill between the two renames cannot lose a
row. A state written before the settings and rows were stored in it (spikebridge 63bfee2)
is checked against model.json's ``config`` and its rows are read from metrics.jsonl through
the bounded reader (models/methods/resume.py ``read_metrics``).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from spikebridge.base.errors import CheckpointError, InputError
from spikebridge.models.architectures import build_spec
from spikebridge.models.bptt import BPTTNet
from spikebridge.models.checkpoint import load_weights, save_checkpoint
from spikebridge.models.config import pick_device, seed_everything
from spikebridge.models.methods import MethodSpec, register
from spikebridge.models.methods import common as C
from spikebridge.models.methods import resume as R
from spikebridge.models.snn2ann import SNN2ANNNet

# settings beyond resume.SAME that a resumed run must share with the one that wrote the state
OWN_SETTINGS = {"snn2ann": ("smu", "ann_dropout", "membrane_dropout", "augment"),
                "bptt": ("neuron", "surrogate", "tau", "v_threshold", "augment")}


def make_model(cfg, input_shape, num_classes, device: torch.device | None = None):
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


def _make_model(cfg, input_shape, num_classes):
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
                       tau=cfg.tau, v_threshold=cfg.v_threshold, encoding=cfg.encoding, seed=cfg.seed)
    if cfg.smu not in ("stsu", "resu"):
        raise InputError(f"unknown spiking mapping unit {cfg.smu!r}; use stsu or resu")
    own = snn2ann_extra(cfg)
    return SNN2ANNNet(spec, input_shape, cfg.timesteps, smu=cfg.smu, ann_dropout=cfg.ann_dropout,
                      membrane_dropout=cfg.membrane_dropout, ata=own.get("ata", True),
                      ata_noisy=own.get("ata_noisy", "after_dropout"), spike_penalty=own.get("spike_penalty", 0.0),
                      ann_input=own.get("ann_input", "count"))


# SNN2ANN's settings in TrainConfig.extra: ``spike_penalty`` (--spike-penalty LAMBDA, the
# spikes-for-accuracy knob, off by default); ``ata`` (False: no threshold adaptation) and
# ``ata_noisy`` ("before_dropout") and ``ann_input`` ("image": the ANN branch fed x, as the
# released code, instead of T x) are ablations for benchmarks/snn2ann_study.py (Python only)
SNN2ANN_EXTRA = ("spike_penalty", "ata", "ata_noisy", "ann_input")


def snn2ann_extra(cfg) -> dict:
    """SNN2ANN's own settings from ``cfg.extra`` (only the ones given), checked: InputError
    for a negative or non-finite --spike-penalty, or one given to --method bptt."""
    extra = getattr(cfg, "extra", None) or {}
    own = {k: extra[k] for k in SNN2ANN_EXTRA if k in extra and extra[k] is not None}
    if cfg.method != "snn2ann":
        if own.get("spike_penalty"):
            raise InputError(f"--spike-penalty applies to --method snn2ann only (not {cfg.method})")
        return {}
    if "spike_penalty" in own:
        lam = own["spike_penalty"]
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not np.isfinite(lam) or lam < 0:
            raise InputError(f"--spike-penalty must be a finite number >= 0, got {lam!r}")
        own["spike_penalty"] = float(lam)
    if "ata_noisy" in own and own["ata_noisy"] not in ("after_dropout", "before_dropout"):
        raise InputError(f"ata_noisy must be after_dropout or before_dropout, got {own['ata_noisy']!r}")
    if "ann_input" in own and own["ann_input"] not in ("count", "image"):
        raise InputError(f"ann_input must be count or image, got {own['ann_input']!r}")
    return own


def neuron_meta(cfg) -> dict:
    """model.json's ``neuron``: the semantics the exporters write (docs/nir-conventions.md).
    ``encoding``: direct, or events (binned event frames, models/event_data.py)."""
    from spikebridge.models.event_data import is_event_dataset

    enc = "events" if is_event_dataset(cfg.dataset) else cfg.encoding
    if cfg.method == "bptt":
        return {"model": cfg.neuron.upper(), "reset": "zero", "threshold_test": "gt", "v_init": 0.0,
                "threshold": cfg.v_threshold, "tau": cfg.tau if cfg.neuron == "lif" else None,
                "r": 1.0, "v_leak": 0.0, "dt": 1.0, "encoding": enc, "surrogate": cfg.surrogate}
    return {"model": "IF", "reset": "zero", "threshold_test": "gt", "v_init": 0.0,
            "threshold": "per-neuron", "dt": 1.0, "encoding": enc}


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
    activity = [] if model.spike_penalty > 0 else None
    logits, noisy = model.ann_forward(xb, counts, activity)
    del counts
    loss = F.cross_entropy(logits, yb)
    if activity is not None:  # --spike-penalty: + lambda x the mapped firing rate
        loss = loss + model.activity_penalty(activity, len(xb))
        del activity
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
            activity = [] if model.spike_penalty > 0 else None
            logits, noisy = runner(lambda net: net.ann_forward(xb, counts, activity))
            del counts
            loss = F.cross_entropy(logits, yb)
            if activity is not None:  # per-sample mean over this rank's slice, as the cross-entropy
                loss = loss + model.activity_penalty(activity, n_local)
                del activity
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


def run_settings(cfg) -> dict:
    """The settings a --resume must share (JSON-normalised)."""
    keys = R.SAME + OWN_SETTINGS.get(cfg.method, ())
    out = {k: getattr(cfg, k, None) for k in keys}
    if cfg.method == "snn2ann":  # only when given: a state written before these existed still matches
        out.update(snn2ann_extra(cfg))
    return json.loads(json.dumps(out, default=str))


def train(cfg, out_dir, progress: bool = True, resume: bool = False) -> dict:
    """Train SNN2ANN or BPTT (``cfg.method``); write checkpoint, metrics.jsonl and curves.png
    into ``out_dir``; return the last metrics row."""
    from spikebridge.models import distributed as D

    C.check_cfg(cfg, resume)
    snn2ann_extra(cfg)  # --spike-penalty checked before anything is read or written
    out = Path(out_dir)
    device = pick_device(cfg.device)
    sp = out / "train_state.pt"
    state = _read_state(out, cfg) if resume and (sp.exists() or sp.is_symlink()) else None
    seed_everything(cfg.seed)
    info, xtr_t, ytr_t, xte_t, yte_t = C.load_data(cfg, device)  # --limit-train / --limit-test applied
    use_aug = info.augment if cfg.augment is None else bool(cfg.augment)

    model = make_model(cfg, info.input_shape, info.num_classes, device)
    opt, sched = C.make_optimizer(model.parameters(), cfg, cfg.epochs)
    gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    history: list[dict] = []
    start_epoch = 0
    if state is not None:
        start_epoch, history = _restore(out, state, model, opt, sched, gen, aug_gen, device)
    ctx = D.current()
    runner = D.prepare(model) if ctx.enabled else None  # DDP (+ --sync-bn) across the processes

    meta = {"arch": cfg.arch, "method": cfg.method, "timesteps": cfg.timesteps,
            "input_shape": list(info.input_shape), "num_classes": info.num_classes,
            "dataset": cfg.dataset, "layers": model.spec, "neuron": neuron_meta(cfg),
            **({"smu": cfg.smu} if cfg.method == "snn2ann" else {}),
            **({"spike_penalty": model.spike_penalty}
               if cfg.method == "snn2ann" and model.spike_penalty > 0 else {}),
            "seed": cfg.seed, "config": asdict(cfg),
            **({"events": C.event_record(cfg, info)} if info.events else {})}
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
                 "torch_rng": torch.get_rng_state(), "config": json.dumps(run_settings(cfg)),
                 "history": json.dumps(history)}
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        if ctx.is_main:  # rank 0 alone writes (every file atomically; the rows are in the state too)
            save_checkpoint(out, model.state_dict(), {**meta, "metrics": row}, train_state=state)
            C.write_history(out, history, plot=False)
    if ctx.is_main:
        if history and start_epoch == cfg.epochs:  # resumed a finished run (maybe killed before model.json
            # and metrics.jsonl of its last epoch were renamed): make the checkpoint and the rows agree
            save_checkpoint(out, model.state_dict(), {**meta, "metrics": history[-1]})
            C.write_history(out, history, plot=False)
        C.plot_curves(history, out / "curves.png")
    D.barrier()
    return history[-1] if history else {}


def _read_state(out: Path, cfg) -> dict:
    """train_state.pt, checked against this run's settings before anything is trained."""
    from spikebridge.models.checkpoint import load_train_state, read_meta

    path = out / "train_state.pt"
    state = load_train_state(path, map_location="cpu",
                             required=("epoch", "optimizer", "scheduler", "generator", "torch_rng"))
    mine = run_settings(cfg)
    if "config" in state:
        try:
            theirs = json.loads(state["config"])
        except (TypeError, ValueError):
            theirs = None
        if not isinstance(theirs, dict):
            raise CheckpointError("unreadable run settings", file=str(path), place="config")
    else:  # a state written before the settings were stored in it: model.json has them
        theirs = read_meta(out).get("config")
        if not isinstance(theirs, dict):
            raise CheckpointError("model.json has no 'config' to check --resume against", file=str(out / "model.json"),
                                  place="config")
        theirs = json.loads(json.dumps({k: theirs.get(k) for k in mine}, default=str))
    R.check_settings(theirs, mine, str(path))
    try:
        epoch = int(state["epoch"])
    except (TypeError, ValueError):
        raise CheckpointError("epoch is not an integer", file=str(path), place="epoch") from None
    if not 0 <= epoch <= cfg.epochs:
        raise CheckpointError(f"recorded epoch {epoch} is not within this run's 0..{cfg.epochs}", file=str(path),
                              place="epoch")
    if "history" in state:
        try:
            rows = json.loads(state["history"])
        except (TypeError, ValueError):
            raise CheckpointError("unreadable metrics rows", file=str(path), place="history") from None
        history = R.check_rows(rows, str(path), "history")
    else:
        history = R.read_metrics(out / "metrics.jsonl")
    if len(history) < epoch:
        raise CheckpointError(f"{len(history)} metrics rows for {epoch} recorded epochs",
                              file=str(path if "history" in state else out / "metrics.jsonl"), place="rows")
    state["_history"] = history[:epoch]
    state["epoch"] = epoch
    return state


def _restore(out: Path, state: dict, model, opt, sched, gen, aug_gen, device):
    from spikebridge.models.checkpoint import load_tensors

    file = str(out / "train_state.pt")
    try:
        tensors = load_tensors(out)
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, strict=False)
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
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"training state does not fit this model ({msg})", file=file,
                              place="model/optimizer") from None
    return state["epoch"], state["_history"]


def _bar_factory(progress: bool):
    if not progress:
        return lambda it, desc: it
    from tqdm.auto import tqdm
    return lambda it, desc: tqdm(it, desc=desc, leave=False, unit="batch", dynamic_ncols=True)


def build_model(meta: dict, tensors: dict, file: str | None = None) -> SNN2ANNNet:
    """Rebuild an SNN2ANN checkpoint's model with its weights (names and shapes checked)."""
    model = SNN2ANNNet(meta["layers"], meta["input_shape"], meta["timesteps"], smu=meta.get("smu", "stsu"))
    load_weights(model, tensors, file)
    model.eval()
    return model


def deployed_from_model(model: SNN2ANNNet, meta: dict):
    """The SNN branch as a DeployedNet: BN folded, bias / T, IF with the per-neuron thresholds,
    hard reset to 0, ``>``; avg-pool and residual blocks as in models/snn2ann.py."""
    from spikebridge.models.deployed import from_spec_model

    T = int(meta["timesteps"])
    return from_spec_model(model, meta, "if", folded=lambda layer: layer.folded(T),
                           threshold=lambda module, shape: module.threshold)


def deployed(meta: dict, tensors: dict, file: str | None = None):
    return deployed_from_model(build_model(meta, tensors, file), meta)


def onnx(meta: dict, tensors: dict, file: str | None = None):
    """The ReLU ANN branch (shares the SNN's weights; fed x, first weights x T, classifier / T)."""
    from spikebridge.models.deployed import ann_branch

    build_model(meta, tensors, file)  # validates names and shapes against the spec
    return ann_branch(meta, tensors)


register(MethodSpec("snn2ann", train=train, build_model=build_model, deployed=deployed, onnx=onnx,
                    description="SNN2ANN: an ANN branch and an IF SNN branch sharing weights (STSU/ReSU, ATA), "
                                "per-neuron thresholds, hard reset"))
