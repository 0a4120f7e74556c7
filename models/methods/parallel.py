"""Parallel conversion (Hao et al., ICML 2025; official code ParaInfNeuron) with DA-QCFS
calibration, from a QCFS ANN or, training-free, from a plain ReLU ANN.

Windowed (parallel) neuron over a window of T steps, per neuron with threshold theta and
phase phi (1/2 in the paper):

    xbar = mean_t x(t);   o(t) = theta * 1[T * xbar + phi * theta >= t * theta],  t = 1..T

i.e. the paper's 1[(T/t) xbar + (theta/2)/t >= theta] for phi = 1/2. The spikes form an
ordered block of k = clip(floor(T xbar / theta + phi), 0, T) spikes at the start of the
window, so the rate is exactly QCFS with L = T (``window_neuron``; tested). A network of
these neurons therefore computes, layer by layer, the ANN ``proxy``
h = theta / T * clip(floor(T (z + psi) / theta + phi), 0, T) (``ParallelNet.proxy``).

DA-QCFS calibration (``calibrate``): per channel (per neuron for linear layers) an input
bias psi and a phase phi, estimated layer by layer in ONE pass over training data, each
batch updating every layer in order (upstream layers already use their updated values):
  psi <- EMA_0.99 of mean_{batch, space}(z_ref - z_snn)   (pre-activation error),
  phi <- EMA_0.99 of 1/2 + (T / theta) * mean(a_ref - a_snn(phi = 1/2)), clipped to [0, 1]
where ref is the source ANN (QCFS at its L, or ReLU) and snn the proxy at T. Deviations,
named as methods.md asks: (1) the EMAs are bias-corrected (divided by 1 - 0.99^n), so a
short pass (tests, small data) gives the running mean instead of a value shrunk towards
0; (2) the output error is turned into a phase with the slope T/theta of the quantiser
(exact for neurons inside [0, theta] whose fractional parts are uniform).

Training-free path (``--source relu``): theta = per-channel max of the ReLU activation
over the training data (one pass), then calibrate, convert.

Deployment. The neuron is non-causal inside its window (its first spike needs the whole
window's mean), so a sequential IF chip cannot run it step for step. We measure and store
both: ``parallel_test_accuracy`` (windowed neurons, == the proxy ANN) and
``snn_test_accuracy`` / ``sequential_if_test_accuracy``: the exported NIR graph, IF neurons
with the per-channel threshold theta, v(0) = phi * theta, reset by subtraction, ``>=``,
spikes of amplitude theta and the bias b + psi at every step (eventsim runs exactly this).
Not implemented: a count-then-emit lowering for Loihi-style chips (it needs a per-layer
T-step delay and a gate that releases the block only after the window, i.e. a layer-
pipelined schedule with latency T per layer; NIR 1.0.8 has no node for a windowed
release, so it would need a new node type or a CubaLIF-plus-Delay construction we have not
verified).

Options (TrainConfig.extra): ``L`` (QCFS levels of the source ANN, default 4), ``source``
``qcfs`` | ``relu``, ``teacher`` (a checkpoint: qcfs for source qcfs; ann or snn2ann for
relu; without it the source ANN is trained here for ``epochs``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from spikebridge.base.errors import CheckpointError, InputError
from spikebridge.models.methods import MethodSpec, register
from spikebridge.models.methods import common as C
from spikebridge.models.methods import qcfs as Q

MOMENTUM = 0.99


def window_neuron(x: torch.Tensor, theta, phi=0.5) -> torch.Tensor:
    """The parallel neuron: inputs (T, B, ...) -> outputs (T, B, ...), an ordered block."""
    T = x.shape[0]
    xbar = x.mean(0)
    t = torch.arange(1, T + 1, dtype=x.dtype, device=x.device).view(T, *([1] * xbar.dim()))
    theta = torch.as_tensor(theta, dtype=x.dtype)
    phi = torch.as_tensor(phi, dtype=x.dtype)
    return theta * (T * xbar + phi * theta >= t * theta).to(x.dtype)


def _chan(v: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-channel vector (C,) viewed to broadcast against z (B, C[, H, W])."""
    return v.view(1, -1, *([1] * (z.dim() - 2)))


def _chan_mean(a: torch.Tensor) -> torch.Tensor:
    """Per-channel mean over (batch, space). Distributed (inside ``_rank_rows``): the mean over
    the global batch, from the ranks' all-reduced sums and counts."""
    from spikebridge.models import distributed as D

    flat = a.transpose(0, 1).reshape(a.shape[1], -1)
    if not D.current().enabled:
        return flat.mean(1)
    stats = D.all_reduce_sum(torch.cat([flat.double().sum(1), torch.tensor([float(flat.shape[1])], dtype=torch.float64)]))
    return (stats[:-1] / stats[-1]).to(a.dtype)


def _rank_rows(xb: torch.Tensor) -> torch.Tensor:
    """This rank's slice of a calibration batch (the whole batch with one process)."""
    from spikebridge.models import distributed as D

    ctx = D.current()
    if not ctx.enabled:
        return xb
    off, n = ctx.shard(len(xb))
    return xb[off:off + n]


class ParallelNet(C.Stack):
    """The source ANN's blocks plus per-channel theta, psi, phi buffers per neuron layer."""

    def __init__(self, spec, input_shape, T: int):
        super().__init__(spec, input_shape)
        self.T = int(T)
        for b in self.neuron_blocks():
            n, c = b.spec["name"], b.out_shape[0]
            self.register_buffer(f"theta_{n}", torch.ones(c))
            self.register_buffer(f"psi_{n}", torch.zeros(c))
            self.register_buffer(f"phi_{n}", torch.full((c,), 0.5))

    def cal(self, blk, key):
        return getattr(self, f"{key}_{blk.spec['name']}")

    def proxy_act(self, i, blk, z, phi=None):
        th = _chan(self.cal(blk, "theta"), z)
        ph = _chan(self.cal(blk, "phi") if phi is None else phi, z)
        z = z + _chan(self.cal(blk, "psi"), z)
        return th / self.T * torch.clamp(torch.floor(self.T * z / th + ph), 0, self.T)

    def proxy(self, x):
        return self(x, self.proxy_act)


@torch.no_grad()
def set_max_thresholds(net: ParallelNet, src: C.Stack, act, x, batch_size: int) -> None:
    """theta = per-channel max of the source activation over ``x`` (one pass)."""
    from spikebridge.models import distributed as D

    mx = [None] * len(net.neuron_blocks())
    for i in range(0, len(x), batch_size):  # distributed: each rank takes its slice of every batch
        _, feats = src(_rank_rows(x[i:i + batch_size]), act, record=True)
        for j, f in enumerate(feats):
            flat = f.transpose(0, 1).reshape(f.shape[1], -1)
            m = flat.amax(1) if flat.shape[1] else torch.full((f.shape[1],), -float("inf"), dtype=f.dtype)
            mx[j] = m if mx[j] is None else torch.maximum(mx[j], m)
    for blk, m in zip(net.neuron_blocks(), mx):
        net.cal(blk, "theta").copy_(torch.clamp(D.all_reduce_max(m), min=1e-3))


@torch.no_grad()
def calibrate(net: ParallelNet, src: C.Stack, act, x, batch_size: int, momentum: float = MOMENTUM) -> None:
    """DA-QCFS: one pass over ``x``; see the module docstring for the update rules.
    Distributed: every rank takes its slice of each batch and the per-channel means are
    all-reduced (``_chan_mean``), so every rank holds the 1-process psi and phi."""
    net.eval(); src.eval()
    blocks = net.neuron_blocks()
    ema = {id(b): [torch.zeros_like(net.cal(b, "psi")), torch.zeros_like(net.cal(b, "phi"))] for b in blocks}
    n = 0
    for i in range(0, len(x), batch_size):
        xb = _rank_rows(x[i:i + batch_size])
        n += 1
        corr = 1.0 - momentum ** n
        h_ref, h_snn, j = xb, xb, 0
        for s in net.spec:
            if s["type"] == "flatten":
                h_ref, h_snn = h_ref.flatten(1), h_snn.flatten(1)
                continue
            blk = net.layers[s["name"]]
            if not blk.neuron:
                break
            z_ref = src.layers[s["name"]](h_ref)
            a_ref = act(j, src.layers[s["name"]], z_ref)
            z_raw = blk(h_snn)
            e = ema[id(blk)]
            e[0].mul_(momentum).add_((1 - momentum) * _chan_mean(z_ref - z_raw))
            net.cal(blk, "psi").copy_(e[0] / corr)
            half = torch.full_like(net.cal(blk, "phi"), 0.5)
            a0 = net.proxy_act(j, blk, z_raw, phi=half)
            th = net.cal(blk, "theta")
            target = 0.5 + net.T / th * _chan_mean(a_ref - a0)
            e[1].mul_(momentum).add_((1 - momentum) * target)
            net.cal(blk, "phi").copy_(torch.clamp(e[1] / corr, 0.0, 1.0))
            h_ref, h_snn = a_ref, net.proxy_act(j, blk, z_raw)
            j += 1


DEPLOYS = ("sequential", "window")


def deployed(net: ParallelNet, kind: str = "IF") -> list[dict]:
    """Deployed layers: ``IF`` (sequential IF, exported by default), ``PAR`` (the windowed
    neuron, torch only) or ``WINDOW`` (count-then-emit IF, reset 'window': exported with
    ``deploy = window``; the same outputs as PAR summed over the window, emitted at once)."""
    layers = []
    with torch.no_grad():
        for s, (_, o) in zip(net.spec, C.infer_shapes(net.spec, net.input_shape)):
            if s["type"] == "flatten":
                layers.append({"name": s["name"], "type": "flatten"})
                continue
            blk = net.layers[s["name"]]
            w, b = blk.folded()
            d = {"name": s["name"], "type": s["type"], "w": w.double(), "b": b.double(), "spec": s}
            if blk.neuron:
                view = (-1,) + (1,) * (len(o) - 1)
                th = net.cal(blk, "theta").double().view(view).expand(o)
                phi = net.cal(blk, "phi").double().view(view).expand(o)
                d["b"] = d["b"] + net.cal(blk, "psi").double()
                d["neuron"] = {"kind": "IF" if kind == "WINDOW" else kind, "threshold": th, "v_init": th * phi,
                               "phi": phi, "reset": "window" if kind == "WINDOW" else "subtract", "test": "ge",
                               "amplitude": th}
            layers.append(d)
    return layers


def run_parallel(layers, x, T: int):
    """Windowed-neuron SNN over T steps (direct encoding); returns (logits, spikes per sample).
    The layer walk is common.run_deployed's (the "PAR" kind is registered below)."""
    return C.run_deployed(layers, x, T)


C.WINDOW_NEURONS["PAR"] = lambda cur, n: window_neuron(cur, n["threshold"], n["phi"])


def _source(cfg, data, progress, history, stages=None):
    ex = cfg.extra or {}
    source = ex.get("source", "qcfs")
    if source not in ("qcfs", "relu"):
        raise InputError(f"--source must be qcfs or relu, not {source!r}")
    teacher = ex.get("teacher")
    if teacher:
        from spikebridge.models.methods.ann import load_teacher
        src, act, tmeta = load_teacher(teacher)
        if tmeta["method"] == "qcfs" and source != "qcfs":
            source = "qcfs"
        if tmeta["method"] != "qcfs" and source == "qcfs":
            raise InputError(f"--source qcfs needs a qcfs teacher, {teacher} is {tmeta['method']!r} (use --source relu)")
        if tuple(tmeta["input_shape"]) != tuple(data[0].input_shape):
            raise InputError(f"teacher {teacher} was trained on input shape {tmeta['input_shape']}, "
                             f"dataset {cfg.dataset} has {list(data[0].input_shape)}")
        return src, act, source, tmeta
    if source == "qcfs":
        src = Q.train_qcfs_ann(cfg, data, progress, history, stages).cpu().eval()
        return src, src.act, source, None
    from spikebridge.models.methods.ann import train_relu_ann
    src = train_relu_ann(cfg, data, progress, history, stages)
    return src, C.relu_act, source, None


def convert(src: C.Stack, act, source: str, x_cal, T: int, batch_size: int) -> ParallelNet:
    net = ParallelNet(src.spec, src.input_shape, T)
    net.load_state_dict({k: v for k, v in src.state_dict().items() if k.startswith("layers.")}, strict=False)
    net.eval()
    if source == "qcfs":
        for blk in net.neuron_blocks():
            net.cal(blk, "theta").fill_(float(src.lam[blk.spec["name"]].detach()))
    else:
        set_max_thresholds(net, src, act, x_cal, batch_size)
    calibrate(net, src, act, x_cal, batch_size)
    return net


def evaluate(net: ParallelNet, x, y, T: int, deploy: str = "sequential") -> dict:
    """Accuracies of the three forms; ``snn_test_accuracy`` / ``spikes_per_sample`` are the
    exported (``deploy``) form's."""
    par_acc, par_spikes = _par_acc(net, x, y, T)
    seq_acc, seq_spikes = C.deployed_accuracy(deployed(net, "IF"), x, y, T)
    win_acc, win_spikes = C.deployed_accuracy(deployed(net, "WINDOW"), x, y, T)
    dep = (win_acc, win_spikes) if deploy == "window" else (seq_acc, seq_spikes)
    return {"parallel_test_accuracy": par_acc, "parallel_spikes_per_sample": par_spikes,
            "sequential_if_test_accuracy": seq_acc, "count_then_emit_test_accuracy": win_acc,
            "count_then_emit_spikes_per_sample": win_spikes, "deploy": deploy,
            "snn_test_accuracy": dep[0], "spikes_per_sample": dep[1]}


def _par_acc(net, x, y, T):
    return C.deployed_accuracy(deployed(net, "PAR"), x, y, T)


def train(cfg, out_dir, progress=True, resume=False) -> dict:
    from spikebridge.models.config import pick_device

    C.check_cfg(cfg, resume)
    deploy = (cfg.extra or {}).get("deploy", "sequential")
    if deploy not in DEPLOYS:
        raise InputError(f"--deploy must be sequential or window, not {deploy!r}")
    out = Path(out_dir)
    data = C.load_data(cfg, pick_device(cfg.device))
    info, xtr, _, xte, yte = data
    history: list[dict] = []
    clock = C.timer()
    from spikebridge.models.methods.resume import Stages
    src, act, source, tmeta = _source(cfg, data, progress, history, Stages(out, cfg, resume))
    src_seconds = clock()
    clock = C.timer()
    net = convert(src, act, source, xtr.cpu(), cfg.timesteps, cfg.batch_size)
    cal_seconds = clock()
    xte, yte = xte.cpu(), yte.cpu()
    row = {"epoch": cfg.epochs if tmeta is None else 0,
           "loss": history[-1]["loss"] if history else None,
           "ann_test_accuracy": C.ann_accuracy(src, act, xte, yte), **evaluate(net, xte, yte, cfg.timesteps, deploy),
           "seconds": src_seconds + cal_seconds, "source_seconds": src_seconds, "calibration_seconds": cal_seconds,
           "source": source}
    history.append({**row, "stage": "convert"})
    L = int(getattr(src, "L", 0)) or None
    meta = C.base_meta(cfg, info, net.spec, neuron_meta(deploy), source=source, L=L, metrics=row, deploy=deploy,
                       teacher=str((cfg.extra or {}).get("teacher")) if tmeta else None)
    C.save_outputs(out, net.state_dict(), meta, history)
    return row


def neuron_meta(deploy: str = "sequential") -> dict:
    if deploy == "window":
        return {"model": "IF, count-then-emit (reset 'window': integrate T steps, emit the count as one graded "
                         "spike)", "reset": "window", "threshold_test": "ge", "v_init": "phi * theta per channel",
                "spike_amplitude": "theta per channel (times the count)", "threshold": "per channel", "dt": 1.0,
                "encoding": "direct"}
    return {"model": "IF (deployed form of the windowed neuron)", "reset": "subtract", "threshold_test": "ge",
            "v_init": "phi * theta per channel", "spike_amplitude": "theta per channel",
            "threshold": "per channel", "dt": 1.0, "encoding": "direct"}


def build_model(meta, tensors, file=None) -> ParallelNet:
    C.check_spec(C.spec_of(meta), "parallel")
    net = ParallelNet(meta["layers"], meta["input_shape"], meta["timesteps"])
    C.load_weights(net, tensors, file)
    for blk in net.neuron_blocks():
        if not bool((net.cal(blk, "theta") > 0).all()):
            raise CheckpointError("thresholds must be positive", file=file, place=f"theta_{blk.spec['name']}")
    return net.eval()


def deployed_net(meta, tensors, file=None):
    """The exported form (``deploy``: sequential IF, or count-then-emit IF) as a DeployedNet."""
    from spikebridge.models.deployed import from_layers
    deploy = meta.get("deploy", "sequential")
    if deploy not in DEPLOYS:
        raise CheckpointError(f"deploy must be one of {DEPLOYS}", file=file, place="deploy")
    return from_layers(deployed(build_model(meta, tensors, file), "WINDOW" if deploy == "window" else "IF"), meta)


def onnx(meta, tensors, file=None):
    """The calibrated proxy ANN (== the windowed-neuron SNN's rates)."""
    from spikebridge.models.deployed import quantised_ann
    net = build_model(meta, tensors, file)
    T = net.T
    acts = {}
    for blk in net.neuron_blocks():
        th = net.cal(blk, "theta").numpy()
        acts[blk.spec["name"]] = (net.cal(blk, "psi").numpy(), T / th, net.cal(blk, "phi").numpy(), T, th / T)
    return quantised_ann(net, meta, acts)


register(MethodSpec("parallel", train=train, build_model=build_model, deployed=deployed_net, onnx=onnx,
                    description="parallel conversion (windowed neuron, DA-QCFS calibration) from a QCFS or "
                                "ReLU ANN; exported as sequential IF"))
