"""The conformance cases: one list of graphs every registered backend runs (ONNX backend-test
style). Each case gives a graph, an input (T, batch, *shape), the run options its reading
needs, and a reference output; every backend that does not run a case says why, beside the
case (``excluded``), and the suite checks that the backend really refuses it.

Sources of cases and of their references:
  peer/<lib>/<case>   the 15 graphs snnTorch 1.0, Norse 1.1, sinabs 3.1, SpikingJelly 2.0
                      exported (tests/data/peers); reference: the library's own output
  export/<method>     our exports of every training method (tiny models trained here);
                      reference: spikebridge.exporters.nir_import (torch, float64), an
                      independent implementation of the spikebridge reading
  random/<kind>       random feed-forward dense, conv, CubaLIF, soft-reset, per-neuron
                      thresholds, and a recurrent graph; reference: nir_import as above

An exclusion is ``(reason, refuses)``: ``refuses`` True means the backend must reject the case
with a one-line input error (checked); False means it runs but is not comparable, and the
reason says why.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nir
import numpy as np

PEERS = Path(__file__).resolve().parents[1] / "data" / "peers"
LOIHI = ("loihi-fixed", "lava-float", "lava-fixed")


@dataclass
class Case:
    name: str
    build: Callable[[], tuple]           # () -> (graph, x_tb, reference) ; reference see below
    profile: str | None = None            # the reading (RunOptions.profile) for backends that read profiles
    excluded: dict = field(default_factory=dict)  # backend name -> (reason, refuses)
    lava: bool = False                    # small enough to run on the Lava backends
    # reference: {"outputs": {name: (T, B, ...)}, "spikes": {node: bool (T, B, ...)}} ; peer
    # cases give {"expected": array} compared with the first Output node reshaped


def _meta(T, readout="sum"):
    return {"spikebridge": {"format_version": 1, "dt": 1.0, "timesteps": T, "encoding": "direct",
                            "readout": readout}}


def _torch_reference(graph, x_tb):
    """nir_import's torch module in float64: outputs and every spiking node's spikes."""
    import torch

    from spikebridge.exporters.nir_import import SPIKING, graph_to_torch
    from spikebridge.hardware.graph import analyse

    info = analyse(graph)
    mod = graph_to_torch(graph).double()
    with torch.no_grad():
        out, rec = mod(torch.from_numpy(np.asarray(x_tb, dtype=np.float64)), record=True)
    spikes = {n: rec[n].numpy() != 0 for n in info.order if info.types[n] in SPIKING}
    return {"outputs": {k: v.numpy() for k, v in out.items()}, "spikes": spikes}


# ------------------------------------------------------------------------- peer graphs


def peer_meta(case: str) -> dict:
    """tests/data/peers/LIB/CASE/meta.json: how the library made the case; ``profile`` is the
    reading that reproduces it (absent: the library's default profile)."""
    return json.loads((PEERS / case / "meta.json").read_text())


def peer_profile(case: str) -> str:
    return peer_meta(case).get("profile") or case.split("/")[0]


def membrane_tolerance(graph, y: np.ndarray) -> float:
    """A membrane readout (meta "output": "membrane"): the library's float32 membrane vs our
    float64 one, the spikes feeding it being identical. Each step computes the readout's
    input (fan_in products and the bias) and v = a*v + c*I in float32, each operation off by
    at most eps32 * (the magnitude it handles), and the error carries over T steps (|a| <= 1).
    Bound: eps32 * T * (fan_in + 3) * S, with S = max|y| + max row sum |W| + max|b|."""
    aff = [n for n in graph.nodes.values() if type(n).__name__ == "Affine"][-1]
    W, b = np.abs(np.asarray(aff.weight)), np.abs(np.asarray(aff.bias))
    S = float(np.abs(y).max() + W.sum(axis=1).max() + b.max())
    return float(np.finfo(np.float32).eps) * y.shape[0] * (W.shape[1] + 3) * S


def fixed_membrane_bound(trace, T: int) -> float:
    """|v_fixed - v_float| of a membrane readout (LI) on the Loihi fixed-point plan whose input
    spikes are the float reading's: per step each of fan_in weights is off by at most
    weight_abs_err_max and the bias by bias_abs_err_max (in the readout's units v_units),
    summed over the steps the decay remembers, min(T, 1/dv); the decay's shift truncates at
    most one unit of v_units / (vth << 6) per step; dv is off by dv_err on |v| < v_units / 2."""
    L = next(L for L in trace.meta["fixed_point"]["layers"] if "v_units" in L)
    S, dv = L["v_units"], L["dv_float"]
    per_step = S * (L["fan_in"] * L["weight_abs_err_max"] + L["bias_abs_err_max"])
    return (per_step * min(T, 1.0 / dv if dv > 0 else T) + T * S / (L["vth"] << 6)
            + T * L["dv_err"] * S / 2)


def _peer(case):
    def build():
        from spikebridge.hardware.graph import load_graph
        d = PEERS / case
        graph, y = load_graph(d / "graph.nir"), np.load(d / "expected.npy")
        ref = {"expected": y}
        if peer_meta(case).get("output") == "membrane":
            ref["membrane_atol"] = membrane_tolerance(graph, y)
        return graph, np.load(d / "input.npy"), ref
    return build


PEER_CASES = sorted(f"{p.parent.name}/{p.name}" for p in PEERS.glob("*/*") if (p / "graph.nir").is_file())

# How each peer case runs on the Loihi backends (hardware/loihi/plan.py lowers the profile's
# reading; docs/lava.md has the agreement of every case, scripts/lava_peer_agreement.py).
# Lowered exactly: Norse (LIF, CubaLIF with its current jump, IF, LI readout, both export
# conventions, batch axes dropped), SpikingJelly (>= as vth = nextafter(1, 0) in float,
# v_reset folded), snnTorch reset=zero Leaky. The others need --allow-reset-to-zero (run
# as Lava's neuron: one spike, reset to 0 in the spiking step, no floor) and are refused
# without it: the suite checks the refusal.
_WHY = {
    "subtract": "subtract reset cannot be expressed by Lava's LIF (reset to zero only); runs only with "
                "--allow-reset-to-zero (approximation, agreement in docs/lava.md)",
    "multi": "sinabs MultiSpike (several spikes per step) cannot be expressed by Lava's LIF; runs only with "
             "--allow-reset-to-zero as a single spike (approximation, agreement in docs/lava.md)",
    "late": "snnTorch's reset to zero one step late (the whole next step zeroed) cannot be expressed by "
            "Lava's LIF; runs only with --allow-reset-to-zero (approximation, agreement in docs/lava.md)",
    "floor": "sinabs' membrane floor (min_v_mem) has no Lava equivalent; runs only with --allow-reset-to-zero "
             "(floor dropped; agreement in docs/lava.md)",
}
LOIHI_REFUSED = {
    "sinabs/conv_iaf": "multi", "sinabs/dense_iaf_expleak_readout": "multi", "sinabs/dense_iaf_lif": "multi",
    "sinabs/dense_membrane_reset": "multi", "sinabs/dense_min_v_mem": "multi",
    "sinabs/dense_single_reset_floor": "floor", "sinabs/dense_single_spike": "subtract", "sinabs/ties_iaf": "multi",
    "snntorch/conv_leaky": "subtract", "snntorch/dense_leaky": "subtract", "snntorch/dense_leaky_samestep": "subtract",
    "snntorch/dense_synaptic": "subtract", "snntorch/dense_synaptic_zero": "late", "snntorch/rleaky_bias": "subtract",
    "snntorch/rleaky_samestep": "subtract", "snntorch/rleaky_zero": "late", "snntorch/rsynaptic": "subtract",
    "snntorch/rsynaptic_zero": "late", "snntorch/ties_leaky": "subtract",
}


def _loihi_exclusions(case: str) -> dict:
    if case in LOIHI_REFUSED:
        return {b: (_WHY[LOIHI_REFUSED[case]], True) for b in LOIHI}
    return {}


CASES: list[Case] = [
    Case(f"peer/{c}", _peer(c), profile=peer_profile(c), excluded=_loihi_exclusions(c),
         lava=c not in LOIHI_REFUSED)
    for c in PEER_CASES
]
for c in CASES:
    assert peer_meta(c.name[5:])["library"] == c.profile.split(":")[0]

# ------------------------------------------------------------------------- random graphs

RNG_SEED = 20261205


def _spikes(rng, T, B, shape, p=0.3):
    return rng.random((T, B, *shape)) < p


def dense_lif(tau_per_neuron: bool = False):
    rng = np.random.default_rng(RNG_SEED)
    T, B = 6, 4
    tau = rng.uniform(2, 5, 24) if tau_per_neuron else np.full(24, 3.0)
    nodes = {"input": nir.Input(np.array([16])),
             "fc1": nir.Affine(rng.normal(size=(24, 16)) * 0.8, rng.normal(size=24) * 0.1),
             "lif1": nir.LIF(tau=tau, r=np.ones(24), v_leak=np.zeros(24),
                             v_threshold=np.ones(24), metadata={"spikebridge": {"reset": "zero"}}),
             "fc2": nir.Affine(rng.normal(size=(5, 24)), rng.normal(size=5) * 0.1),
             "output": nir.Output(np.array([5]))}
    edges = [("input", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "output")]
    g = nir.NIRGraph(nodes=nodes, edges=edges, metadata=_meta(T), type_check=False)
    x = _spikes(rng, T, B, (16,))
    return g, x, _torch_reference(g, x)


def dense_if_thresholds():
    """IF with per-neuron thresholds, v_init and an analog (direct-encoded) input."""
    rng = np.random.default_rng(RNG_SEED + 1)
    T, B = 5, 4
    th = rng.uniform(0.5, 2.0, 20)
    nodes = {"input": nir.Input(np.array([12])),
             "fc1": nir.Affine(rng.normal(size=(20, 12)) * 0.7, rng.normal(size=20) * 0.1),
             "if1": nir.IF(r=np.ones(20), v_threshold=th,
                           metadata={"spikebridge": {"reset": "zero", "v_init": th / 3}}),
             "fc2": nir.Affine(rng.normal(size=(20, 20)) * 0.8, np.zeros(20)),
             "if2": nir.IF(r=np.ones(20), v_threshold=np.ones(20), metadata={"spikebridge": {"reset": "zero"}}),
             "fc3": nir.Affine(rng.normal(size=(4, 20)), rng.normal(size=4) * 0.1),
             "output": nir.Output(np.array([4]))}
    edges = [("input", "fc1"), ("fc1", "if1"), ("if1", "fc2"), ("fc2", "if2"), ("if2", "fc3"), ("fc3", "output")]
    g = nir.NIRGraph(nodes=nodes, edges=edges, metadata=_meta(T), type_check=False)
    x = np.broadcast_to(rng.uniform(0, 1, (1, B, 12)), (T, B, 12)).copy()
    return g, x, _torch_reference(g, x)


def conv_if():
    rng = np.random.default_rng(RNG_SEED + 2)
    T, B = 4, 3
    nodes = {"input": nir.Input(np.array([2, 6, 6])),
             "conv1": nir.Conv2d(input_shape=(6, 6), weight=rng.normal(size=(4, 2, 3, 3)) * 0.6, stride=1,
                                 padding=1, dilation=1, groups=1, bias=rng.normal(size=4) * 0.1),
             "if1": nir.IF(r=np.ones((4, 6, 6)), v_threshold=np.ones((4, 6, 6)),
                           metadata={"spikebridge": {"reset": "zero"}}),
             "flat": nir.Flatten(input_type={"input": np.array([4, 6, 6])}, start_dim=0, end_dim=-1),
             "fc": nir.Affine(rng.normal(size=(3, 144)) * 0.3, np.zeros(3)),
             "output": nir.Output(np.array([3]))}
    edges = [("input", "conv1"), ("conv1", "if1"), ("if1", "flat"), ("flat", "fc"), ("fc", "output")]
    g = nir.NIRGraph(nodes=nodes, edges=edges, metadata=_meta(T), type_check=False)
    x = _spikes(rng, T, B, (2, 6, 6), 0.4)
    return g, x, _torch_reference(g, x)


def dense_cubalif():
    rng = np.random.default_rng(RNG_SEED + 3)
    T, B = 6, 4
    n = 16
    nodes = {"input": nir.Input(np.array([10])),
             "fc1": nir.Affine(rng.normal(size=(n, 10)), np.zeros(n)),
             "cuba": nir.CubaLIF(tau_syn=np.full(n, 2.5), tau_mem=np.full(n, 4.0), r=np.ones(n),
                                 v_leak=np.zeros(n), v_threshold=np.full(n, 0.5), w_in=np.ones(n),
                                 metadata={"spikebridge": {"reset": "zero"}}),
             "fc2": nir.Affine(rng.normal(size=(3, n)), np.zeros(3)),
             "output": nir.Output(np.array([3]))}
    edges = [("input", "fc1"), ("fc1", "cuba"), ("cuba", "fc2"), ("fc2", "output")]
    g = nir.NIRGraph(nodes=nodes, edges=edges, metadata=_meta(T), type_check=False)
    x = _spikes(rng, T, B, (10,), 0.5)
    return g, x, _torch_reference(g, x)


def dense_soft_reset():
    """Subtractive reset and v(0) = theta/2 (what ANN conversion needs; not in the NIR spec)."""
    rng = np.random.default_rng(RNG_SEED + 4)
    T, B = 6, 4
    th = rng.uniform(0.5, 1.5, 16)
    nodes = {"input": nir.Input(np.array([8])),
             "fc1": nir.Affine(rng.normal(size=(16, 8)), rng.normal(size=16) * 0.05),
             "if1": nir.IF(r=np.ones(16), v_threshold=th,
                           metadata={"spikebridge": {"reset": "subtract", "v_init": th / 2}}),
             "fc2": nir.Affine(rng.normal(size=(4, 16)), np.zeros(4)),
             "output": nir.Output(np.array([4]))}
    edges = [("input", "fc1"), ("fc1", "if1"), ("if1", "fc2"), ("fc2", "output")]
    g = nir.NIRGraph(nodes=nodes, edges=edges, metadata=_meta(T), type_check=False)
    x = np.broadcast_to(rng.uniform(0, 1, (1, B, 8)), (T, B, 8)).copy()
    return g, x, _torch_reference(g, x)


def recurrent_lif():
    """A recurrent LIF layer: the back edge rec -> lif1 carries the previous step's value."""
    rng = np.random.default_rng(RNG_SEED + 5)
    T, B = 8, 3
    n = 12
    nodes = {"input": nir.Input(np.array([6])),
             "fc1": nir.Affine(rng.normal(size=(n, 6)), np.zeros(n)),
             "lif1": nir.LIF(tau=np.full(n, 3.0), r=np.ones(n), v_leak=np.zeros(n), v_threshold=np.ones(n),
                             metadata={"spikebridge": {"reset": "zero"}}),
             "rec": nir.Affine(rng.normal(size=(n, n)) * 0.5, np.zeros(n)),
             "fc2": nir.Affine(rng.normal(size=(2, n)), np.zeros(2)),
             "output": nir.Output(np.array([2]))}
    edges = [("input", "fc1"), ("fc1", "lif1"), ("lif1", "rec"), ("rec", "lif1"), ("lif1", "fc2"),
             ("fc2", "output")]
    g = nir.NIRGraph(nodes=nodes, edges=edges, metadata=_meta(T), type_check=False)
    x = _spikes(rng, T, B, (6,), 0.5)
    return g, x, _torch_reference(g, x)


_SOFT = ("soft (subtractive) reset is not expressible on Loihi (reset to zero only); refused unless "
         "--allow-reset-to-zero, which is an approximation", True)
_TAU = ("Lava's decays dv, du are one scalar per population: a per-neuron tau is not expressible", True)

CASES += [
    Case("random/dense_lif", dense_lif, lava=True),
    Case("random/dense_lif_tau_per_neuron", lambda: dense_lif(tau_per_neuron=True),
         excluded={b: _TAU for b in LOIHI}),
    Case("random/dense_if_thresholds", dense_if_thresholds, lava=True),
    Case("random/conv_if", conv_if, lava=True),
    Case("random/dense_cubalif", dense_cubalif, lava=True),
    Case("random/dense_soft_reset", dense_soft_reset, excluded={b: _SOFT for b in LOIHI}),
    Case("random/recurrent_lif", recurrent_lif, lava=True),
]

# ------------------------------------------------------------------------- our exports

N_EXPORT_SAMPLES, EXPORT_T = 6, 4
_CKPTS: dict[str, Path] = {}


def _checkpoint(method: str) -> Path:
    """A tiny model of ``method`` (MLP on digits, 1 epoch on 128 samples), trained once per session."""
    if method not in _CKPTS:
        import tempfile

        from spikebridge.models.train import TrainConfig, train
        out = Path(tempfile.mkdtemp(prefix=f"sb-conf-{method}-")) / "ckpt"
        extra = {"limit_test": 16}
        if method == "bridge":
            extra["finetune_epochs"] = 1
        if method == "lasnn":
            extra["teacher_epochs"] = 1
        train(TrainConfig(method=method, arch="mlp", dataset="digits", timesteps=EXPORT_T, epochs=1,
                          limit_train=128, seed=0, device="cpu", extra=extra), out, progress=False)
        _CKPTS[method] = out
    return _CKPTS[method]


def _export(method):
    def build():
        from spikebridge.exporters.nir_export import checkpoint_to_nir
        from spikebridge.models.datasets import load_dataset
        g = checkpoint_to_nir(_checkpoint(method))
        x, _ = load_dataset("digits", "test")
        T = int(np.asarray(g.metadata["spikebridge"]["timesteps"]))
        x_tb = np.broadcast_to(x[None, :N_EXPORT_SAMPLES], (T, N_EXPORT_SAMPLES, *x.shape[1:])).copy()
        return g, x_tb, _torch_reference(g, x_tb)
    return build


def _snn2ann_cnn():
    from spikebridge.exporters.nir_export import checkpoint_to_nir
    from spikebridge.models.datasets import load_dataset
    from tests._trained import trained_checkpoint
    g = checkpoint_to_nir(trained_checkpoint())
    x, _ = load_dataset("digits", "test")
    T = int(np.asarray(g.metadata["spikebridge"]["timesteps"]))
    x_tb = np.broadcast_to(x[None, :N_EXPORT_SAMPLES], (T, N_EXPORT_SAMPLES, *x.shape[1:])).copy()
    return g, x_tb, _torch_reference(g, x_tb)


# methods whose IF neurons reset by subtraction (ANN conversion): not expressible on Loihi
_SOFT_METHODS = ("qcfs", "parallel")
CASES += [Case("export/snn2ann-cnn", _snn2ann_cnn, lava=True)]
CASES += [Case(f"export/{m}", _export(m), lava=m not in _SOFT_METHODS,
               excluded={b: _SOFT for b in LOIHI} if m in _SOFT_METHODS else {})
          for m in ("snn2ann", "bptt", "qcfs", "parallel", "bridge", "lasnn")]

CASE_BY_NAME = {c.name: c for c in CASES}
