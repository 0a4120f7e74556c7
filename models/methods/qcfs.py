"""QCFS (Bu et al., ICLR 2022): train an ANN with the quantization-clip-floor-shift
activation, convert it to an IF SNN.

ANN activation, per neuron layer with a trainable threshold lambda (init 8.0):

    a = lambda * clip(floor(z * L / lambda + phi) / L, 0, 1),   phi = 1/2

computed as ``lambda * floor_ste(clip(z / lambda, 0, 1) * L + phi) / L`` (identical values);
the floor has a straight-through gradient, so dz gets 1 inside [0, lambda] and lambda gets
the clip's gradient, as in the official code.

Converted SNN (what ``to_nir`` writes and ``run_deployed`` runs): BN folded from running
statistics, the folded bias injected at every step, IF neurons with threshold theta =
lambda, v(0) = theta/2, reset by subtraction, spikes of amplitude theta, threshold test
``>=`` (so a constant current z gives exactly floor(T z / theta + 1/2) spikes, clipped to
[0, T]); the classifier is an analog readout, logits = sum_t (W s(t) + b) / T.

With T = L and a constant input current the first neuron layer's mean output equals the
ANN activation exactly (tests/models/test_methods.py); deeper layers receive uneven spike trains,
so the equality there holds only in expectation (the paper's claim), not sample by sample.

Options (``TrainConfig.extra``): ``L`` quantization levels (default 4); ``lambda_lr``.
The SNN runs for ``timesteps`` steps, which need not equal L.

Deviation, named as methods.md asks: training uses the toolchain's Adam (lr 1e-3, weight
decay 5e-4, also on lambda) instead of the paper's SGD at lr 0.1 over 300 epochs. Under
Adam a scalar moves about one learning rate per step, so lambda (init 8.0) would stay
near 8 for a short run while BN'd pre-activations are O(1), leaving the quantiser's first
level (lambda / (2L)) above most inputs and the network silent. lambda therefore gets its
own learning rate, ``lambda_lr`` = 200 x lr (0.2) by default.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from spikebridge.base.errors import CheckpointError
from spikebridge.models.methods import MethodSpec, register
from spikebridge.models.methods import common as C

LAMBDA_INIT = 8.0
PHI = 0.5


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.floor(x) - x).detach()


def qcfs(z: torch.Tensor, lam, L: int, phi=PHI) -> torch.Tensor:
    """lambda * clip(floor(z L / lambda + phi) / L, 0, 1), straight-through floor."""
    return lam * floor_ste(torch.clamp(z / lam, 0.0, 1.0) * L + phi) / L


class QCFSNet(C.Stack):
    def __init__(self, spec, input_shape, L: int = 4):
        super().__init__(spec, input_shape)
        self.L = int(L)
        self.lam = nn.ParameterDict({b.spec["name"]: nn.Parameter(torch.tensor(LAMBDA_INIT))
                                     for b in self.neuron_blocks()})

    def param_groups(self, cfg) -> list[dict]:
        """lambda gets its own Adam learning rate (``lambda_lr``, default 200 x lr): see the
        module docstring."""
        lam_ids = {id(p) for p in self.lam.parameters()}
        rest = [p for p in self.parameters() if id(p) not in lam_ids]
        lr = float((cfg.extra or {}).get("lambda_lr", 200 * cfg.lr))
        return [{"params": rest}, {"params": list(self.lam.parameters()), "lr": lr}]

    def act(self, i, blk, z):
        return qcfs(z, self.lam[blk.spec["name"]], self.L)

    def ann(self, x, record: bool = False):
        return self(x, self.act, record)


def deployed(model: QCFSNet) -> list[dict]:
    layers = []
    with torch.no_grad():
        for s, (_, o) in zip(model.spec, C.infer_shapes(model.spec, model.input_shape)):
            if s["type"] == "flatten":
                layers.append({"name": s["name"], "type": "flatten"})
                continue
            blk = model.layers[s["name"]]
            w, b = blk.folded()
            d = {"name": s["name"], "type": s["type"], "w": w.double(), "b": b.double(), "spec": s}
            if blk.neuron:
                lam = float(model.lam[s["name"]])
                d["neuron"] = {"kind": "IF", "threshold": torch.full(o, lam, dtype=torch.float64),
                               "v_init": lam * PHI, "reset": "subtract", "test": "ge", "amplitude": lam}
            layers.append(d)
    return layers


def _L(cfg) -> int:
    L = int((cfg.extra or {}).get("L", 4))
    if L < 1:
        raise C.InputError("--L must be a positive integer")
    return L


def train_qcfs_ann(cfg, data, progress=False, history=None, stages=None) -> QCFSNet:
    info = data[0]
    C.seed_everything(cfg.seed)
    spec = C.default_spec(cfg, info)
    model = QCFSNet(spec, info.input_shape, _L(cfg))
    C.fit_ann(model, lambda e: model.act, cfg, data, cfg.epochs, progress, "qcfs-ann", history, stages=stages)
    return model


def train(cfg, out_dir, progress=True, resume=False) -> dict:
    from spikebridge.models.config import pick_device

    from spikebridge.models.methods.resume import Stages

    C.check_cfg(cfg, resume)
    out = Path(out_dir)
    stages = Stages(out, cfg, resume)
    data = C.load_data(cfg, pick_device(cfg.device))
    info, _, _, xte, yte = data
    history: list[dict] = []
    clock = C.timer()
    model = train_qcfs_ann(cfg, data, progress, history, stages).cpu().eval()
    train_s = clock()
    ann_acc = C.ann_accuracy(model, model.act, xte.cpu(), yte.cpu())
    snn_acc, spikes = C.deployed_accuracy(deployed(model), xte.cpu(), yte.cpu(), cfg.timesteps)
    row = {"epoch": cfg.epochs, "loss": history[-1]["loss"], "ann_test_accuracy": ann_acc,
           "snn_test_accuracy": snn_acc, "spikes_per_sample": spikes, "seconds": train_s, "L": model.L}
    history.append({**row, "stage": "convert"})
    meta = C.base_meta(cfg, info, model.spec, neuron_meta(), L=model.L, metrics=row,
                       lambdas={k: float(v.detach()) for k, v in model.lam.items()})
    C.save_outputs(out, model.state_dict(), meta, history)
    return row


def neuron_meta() -> dict:
    return {"model": "IF", "reset": "subtract", "threshold_test": "ge", "v_init": "theta/2",
            "spike_amplitude": "theta", "threshold": "lambda per layer", "dt": 1.0, "encoding": "direct"}


def build_model(meta, tensors, file=None) -> QCFSNet:
    C.check_spec(C.spec_of(meta), "qcfs")
    L = meta.get("L", 4)
    if not isinstance(L, int) or isinstance(L, bool) or L < 1:
        raise CheckpointError("L must be a positive integer", file=file, place="L")
    model = QCFSNet(meta["layers"], meta["input_shape"], L)
    C.load_weights(model, tensors, file)
    return model.eval()


def deployed_net(meta, tensors, file=None):
    """The converted IF SNN (the module docstring) as a DeployedNet."""
    from spikebridge.models.deployed import from_layers
    return from_layers(deployed(build_model(meta, tensors, file)), meta)


def onnx(meta, tensors, file=None):
    """The QCFS ANN (BN, QCFS activation with the trained lambdas)."""
    from spikebridge.models.deployed import quantised_ann
    model = build_model(meta, tensors, file)
    acts = {}
    for blk in model.neuron_blocks():
        lam = float(model.lam[blk.spec["name"]].detach())
        acts[blk.spec["name"]] = (0.0, model.L / lam, PHI, model.L, lam / model.L)
    return quantised_ann(model, meta, acts)


register(MethodSpec("qcfs", train=train, build_model=build_model, deployed=deployed_net, onnx=onnx,
                    description="QCFS ANN (L levels, trainable lambda) converted to an IF SNN "
                                "(reset by subtraction, v(0) = theta/2)"))
