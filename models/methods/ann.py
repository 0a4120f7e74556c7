"""``ann``: a plain ReLU ANN (conv/linear + BN + ReLU) in the common checkpoint format.

Not a spiking method: it is the teacher for ``lasnn`` and the source of the training-free
path of ``parallel`` (``--teacher CKPT``). Its checkpoint has no SNN, so NIR export is
refused with a pointer to ``--method parallel --teacher CKPT``.

``load_teacher(path)`` returns a callable ``f(x) -> (logits, [feature maps])`` for any
checkpoint whose ANN we can run: ``ann``, ``qcfs`` (QCFS activation), ``snn2ann`` (its plain
ReLU branch, fed T * x with the classifier on h / T, as models/snn2ann.py defines it).
"""
from __future__ import annotations

from pathlib import Path

import torch

from spikebridge.base.errors import CheckpointError
from spikebridge.models.methods import MethodSpec, register
from spikebridge.models.methods import common as C


def train_relu_ann(cfg, data, progress=False, history=None, stages=None) -> C.Stack:
    info = data[0]
    C.seed_everything(cfg.seed)
    spec = C.default_spec(cfg, info)
    model = C.Stack(spec, info.input_shape)
    C.fit_ann(model, lambda e: C.relu_act, cfg, data, cfg.epochs, progress, "relu-ann", history, stages=stages)
    return model.cpu().eval()


def train(cfg, out_dir, progress=True, resume=False) -> dict:
    from spikebridge.models.config import pick_device

    from spikebridge.models.methods.resume import Stages

    C.check_cfg(cfg, resume)
    stages = Stages(out_dir, cfg, resume)
    data = C.load_data(cfg, pick_device(cfg.device))
    history: list[dict] = []
    clock = C.timer()
    model = train_relu_ann(cfg, data, progress, history, stages)
    secs = clock()
    acc = C.ann_accuracy(model, C.relu_act, data[3].cpu(), data[4].cpu())
    row = {"epoch": cfg.epochs, "loss": history[-1]["loss"], "ann_test_accuracy": acc, "seconds": secs}
    # timesteps = 1: the SNN2ANN ONNX path (first weights x T, classifier / T) is then exactly
    # this ReLU ANN, so `export --format onnx` works unchanged.
    meta = {**C.base_meta(cfg, data[0], model.spec, {"model": "none (ANN)"}, metrics=row), "timesteps": 1}
    C.save_outputs(Path(out_dir), model.state_dict(), meta, history)
    return row


def build_model(meta, tensors, file=None) -> C.Stack:
    C.check_spec(C.spec_of(meta), "ann")
    model = C.Stack(meta["layers"], meta["input_shape"])
    C.load_weights(model, tensors, file)
    return model.eval()


def onnx(meta, tensors, file=None):
    """The ReLU network: SNN2ANN's ANN-branch form with timesteps = 1 is exactly it."""
    from spikebridge.models.deployed import ann_branch
    build_model(meta, tensors, file)  # validates names and shapes against the spec
    return ann_branch(meta, tensors)


def load_teacher(path):
    """(model: Stack, act, meta) for an ANN checkpoint: ``model(x, act, record=True)`` gives
    (logits, feature map of every neuron layer).

    - ``ann``: the ReLU network as trained.
    - ``qcfs``: the QCFS ANN (its own activation, L, lambdas).
    - ``snn2ann``: its plain ReLU ANN branch (h = ReLU(BN(op(.))) fed T*x, classifier on
      h/T), rewritten as a Stack fed x: first layer's weight x T, classifier weight / T.
      Its features are then the branch's h (spike-count scale, [0, T]).
    """
    from spikebridge.models.checkpoint import build_model as build_any
    from spikebridge.models.checkpoint import load_checkpoint

    meta, tensors = load_checkpoint(path)
    method = meta["method"]
    file = str(path)
    if method == "ann":
        return build_model(meta, tensors, file), C.relu_act, meta
    if method == "qcfs":
        net = build_any(meta, tensors, file)
        return net, net.act, meta
    if method == "snn2ann":
        C.check_spec(C.spec_of(meta), "snn2ann teacher")
        net = C.Stack(meta["layers"], meta["input_shape"])
        C.load_weights(net, tensors, file, ignore=("layers.",))
        T = float(meta["timesteps"])
        with torch.no_grad():
            blocks = list(net.layers.values())
            blocks[0].op.weight.mul_(T)
            blocks[-1].op.weight.div_(T)
        return net.eval(), C.relu_act, meta
    raise CheckpointError(f"a teacher must be an ann, qcfs or snn2ann checkpoint, not {method!r}", file=file)


register(MethodSpec("ann", train=train, build_model=build_model, deployed=None, onnx=onnx,
                    no_snn="an 'ann' checkpoint has no SNN; convert it with "
                           "`spikebridge train --method parallel --teacher CKPT`",
                    description="plain ReLU ANN (teacher / training-free conversion source; no SNN)"))
