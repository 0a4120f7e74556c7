"""Pretraining as a bridge (Lin et al., IEEE TNNLS 2024; code lyh983012/SNN-ANN-Pretrain).

1. Pretrain an ANN written in SNN form (T = 1) with the annealed *sharpened ReLU*
       f(u) = clip((u - a_e) / (b_e - a_e), 0, 1),  a_e = min(s/200, 0.49),  b_e = 1 - s/200,
   backward the rectangular surrogate 1[|u - 0.5| < 0.5], BatchNorm scale initialised at the
   LIF threshold 0.5.
   Rescaling to the run's epoch count (our reading; the paper states the schedule per
   epoch e of its own run): epoch e = 0..E-1 of this run is paper epoch s = 100 e / (E - 1),
   so the first epoch is the clipped ReLU clip(u, 0, 1) (a = 0, b = 1) and the ramp
   narrows linearly to the band [0.49, 0.5] (b_e > a_e needs s < 100.5, which is why the
   schedule cannot run to s = 200). The LAST epoch uses the limit itself, the step
   1[u > 0.5] (``sharpen_schedule`` returns a = b = 0.5): the network trained in that epoch
   is then exactly the T = 1 LIF SNN the weights are transferred into.
2. Transfer the weights one to one (same state-dict keys, no rescaling) into a LIF SNN:
   v(t) = 0.25 v(t-1) (1 - s(t-1)) + I(t), spike v > 0.5, hard reset to 0 (``SpikingStack``).
   BN stays a per-step affine on the current (statistics over T x batch in training) and
   is folded from running statistics at export.
3. Fine-tune with BPTT (rectangular surrogate) at T = ``timesteps`` for
   ``finetune_epochs`` (TrainConfig.extra, default max(1, epochs // 4)), Adam at
   lr / 10 with cosine decay.

Export: Conv2d/Affine (BN folded, bias every step) + NIR LIF with tau = 4/3, r = 4/3 (so
forward Euler with dt = 1 is v <- 0.25 v + I), v_threshold 0.5, v_reset 0, ``>``; the
classifier reads the spikes of the last layer (sum over T of W s / T + b / T).
"""
from __future__ import annotations

from pathlib import Path

import torch

from spikebridge.base.errors import InputError
from spikebridge.models.methods import MethodSpec, register
from spikebridge.models.methods import common as C

DECAY = 0.25
THRESHOLD = 0.5


def sharpen_schedule(e: int, E: int) -> tuple[float, float]:
    """(a_e, b_e) for epoch e (0-based) of E; the last epoch returns the step (0.5, 0.5)."""
    if e >= E - 1:
        return THRESHOLD, THRESHOLD
    s = 100.0 * e / (E - 1)
    return min(s / 200.0, 0.49), 1.0 - s / 200.0


class SharpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, a, b):
        ctx.save_for_backward(u)
        if b - a <= 0:
            return (u > THRESHOLD).to(u.dtype)
        return torch.clamp((u - a) / (b - a), 0.0, 1.0)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        return grad * ((u - THRESHOLD).abs() < 0.5).to(grad.dtype), None, None


def sharp_act(a: float, b: float):
    return lambda i, blk, z: SharpReLU.apply(z, a, b)


def train(cfg, out_dir, progress=True, resume=False) -> dict:
    from spikebridge.models.methods.resume import Stages
    from spikebridge.models.config import pick_device

    C.check_cfg(cfg, resume)
    ft = int((cfg.extra or {}).get("finetune_epochs", max(1, cfg.epochs // 4)))
    if ft < 0:
        raise InputError("--finetune-epochs must be >= 0")
    out = Path(out_dir)
    stages = Stages(out, cfg, resume)
    device = pick_device(cfg.device)
    data = C.load_data(cfg, device)
    info = data[0]
    C.seed_everything(cfg.seed)
    spec = C.default_spec(cfg, info)
    history: list[dict] = []
    clock = C.timer()
    init = (cfg.extra or {}).get("init")
    if init:  # reuse the pretraining of an earlier bridge run (benchmarks: one pretraining for every T)
        from spikebridge.models.checkpoint import load_checkpoint
        imeta, itensors = load_checkpoint(init)
        if imeta["method"] != "bridge" or imeta["layers"] != spec:
            raise InputError(f"--init {init} is not a bridge checkpoint of this architecture")
        ann = C.Stack(spec, info.input_shape, bn_init=THRESHOLD)
        C.load_weights(ann, itensors, str(init))
        ann = ann.to(device)
        pre_seconds = float(imeta.get("metrics", {}).get("pretrain_seconds", 0.0))
        ann_acc = imeta.get("metrics", {}).get("ann_test_accuracy")
    else:
        ann = C.Stack(spec, info.input_shape, bn_init=THRESHOLD).to(device)
        act_for = lambda e: sharp_act(*sharpen_schedule(e, cfg.epochs))  # noqa: E731
        C.fit_ann(ann, act_for, cfg, data, cfg.epochs, progress, "bridge-ann", history, stages=stages)
        pre_seconds = clock()
        ann_acc = history[-1]["ann_test_accuracy"]  # the step-activation ANN == the T=1 SNN
    snn = C.SpikingStack(spec, info.input_shape, DECAY, THRESHOLD).to(device)
    snn.load_state_dict(ann.state_dict())  # one to one, no rescaling
    snn.eval()
    acc0, _ = C.deployed_accuracy(C.lif_deployed(snn, DECAY, THRESHOLD), data[3].cpu(), data[4].cpu(), cfg.timesteps)
    clock = C.timer()
    if ft:
        C.fit_snn(snn, cfg.timesteps, cfg, data, ft, progress=progress, label="bridge-bptt", history=history,
                  lr=cfg.lr / 10, stages=stages)
    ft_seconds = clock()
    snn = snn.cpu().eval()
    acc, spikes = C.deployed_accuracy(C.lif_deployed(snn, DECAY, THRESHOLD), data[3].cpu(), data[4].cpu(),
                                      cfg.timesteps)
    row = {"epoch": (0 if init else cfg.epochs) + ft, "loss": history[-1]["loss"] if history else None, "ann_test_accuracy": ann_acc,
           "snn_test_accuracy": acc, "snn_test_accuracy_before_finetune": acc0, "spikes_per_sample": spikes,
           "seconds": pre_seconds + ft_seconds, "pretrain_seconds": pre_seconds, "finetune_seconds": ft_seconds,
           "finetune_epochs": ft}
    history.append({**row, "stage": "final"})
    meta = C.base_meta(cfg, info, spec, neuron_meta(), metrics=row, decay=DECAY, threshold=THRESHOLD)
    C.save_outputs(out, snn.state_dict(), meta, history)
    return row


def neuron_meta() -> dict:
    return {"model": "LIF", "decay": DECAY, "reset": "zero", "threshold_test": "gt", "v_init": 0.0,
            "threshold": THRESHOLD, "dt": 1.0, "encoding": "direct"}


def build_lif_stack(meta, tensors, file=None, method: str = "bridge") -> C.SpikingStack:
    """The LIF SNN (decay 0.25, threshold 0.5, hard reset) of a bridge or lasnn checkpoint."""
    C.check_spec(C.spec_of(meta), method)
    model = C.SpikingStack(meta["layers"], meta["input_shape"], DECAY, THRESHOLD)
    C.load_weights(model, tensors, file)
    return model.eval()


def lif_stack_deployed(meta, tensors, file=None, method: str = "bridge"):
    """The deployed LIF SNN of a bridge or lasnn checkpoint: its DeployedNet is both the NIR
    export and (unrolled over T) the ONNX export: these methods have no ANN equal to their SNN."""
    from spikebridge.models.deployed import from_layers
    return from_layers(C.lif_deployed(build_lif_stack(meta, tensors, file, method), DECAY, THRESHOLD), meta)


def build_model(meta, tensors, file=None) -> C.SpikingStack:
    return build_lif_stack(meta, tensors, file, "bridge")


def deployed(meta, tensors, file=None):
    return lif_stack_deployed(meta, tensors, file, "bridge")


register(MethodSpec("bridge", train=train, build_model=build_model, deployed=deployed, onnx=deployed,
                    description="ANN pretraining with the annealed sharpened ReLU, one-to-one transfer into a "
                                "LIF SNN (decay 0.25, threshold 0.5, hard reset), short BPTT fine-tune"))
