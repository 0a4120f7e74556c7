"""Each new method end to end on digits through the CLI: train (tiny) -> export NIR ->
simulate on eventsim; the eventsim accuracy equals the torch accuracy the checkpoint reports
(the same first test samples), and the graph carries the method's neuron semantics."""
from __future__ import annotations

import json

import numpy as np
import pytest

from spikebridge.toolchain.cli import main

pytestmark = pytest.mark.slow

N_TEST = 60
COMMON = ["--dataset", "digits", "--arch", "cnn", "--limit-train", "256", "--limit-test", str(N_TEST),
          "--batch-size", "64", "--device", "cpu"]


def _train(tmp, name, *args):
    out = tmp / name
    assert main(["--no-progress", "train", "--out", str(out), *COMMON, *args]) == 0
    return out


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("methods")
    return {"tmp": tmp,
            "ann": _train(tmp, "ann", "--method", "ann", "--epochs", "2"),
            "qcfs": _train(tmp, "qcfs", "--method", "qcfs", "--epochs", "2", "--timesteps", "4", "--L", "4")}


def _export_and_simulate(ckpt, T):
    graph = ckpt / "graph.nir"
    assert main(["--no-progress", "export", str(ckpt), "--format", "nir", "--out", str(graph)]) == 0
    sim = ckpt / "sim.npz"
    assert main(["--no-progress", "simulate", str(graph), "--dataset", "digits", "--limit", str(N_TEST),
                 "--out", str(sim)]) == 0
    with np.load(sim, allow_pickle=False) as z:
        acc = float(z["accuracy"])
        assert z["output"].shape[0] == T
    meta = json.loads((ckpt / "model.json").read_text())
    return acc, meta, graph


def _neuron_meta(graph):
    from spikebridge.hardware.graph import load_graph, neuron_semantics, node_type
    g = load_graph(graph)
    return {n: (node_type(v), neuron_semantics(v)) for n, v in g.nodes.items()
            if node_type(v) in ("IF", "LIF")}, g


def test_qcfs_end_to_end(ckpts):
    acc, meta, graph = _export_and_simulate(ckpts["qcfs"], 4)
    assert meta["method"] == "qcfs" and meta["L"] == 4
    assert abs(acc - meta["metrics"]["snn_test_accuracy"]) <= 1.0 / N_TEST
    neurons, g = _neuron_meta(graph)
    assert neurons and all(t == "IF" for t, _ in neurons.values())
    for name, (_, sem) in neurons.items():
        thr = np.asarray(g.nodes[name].v_threshold)
        assert sem["reset"] == "subtract" and sem["threshold_test"] == "ge"
        np.testing.assert_allclose(np.broadcast_to(sem["v_init"], thr.shape), thr / 2, rtol=1e-6)
        np.testing.assert_allclose(np.broadcast_to(sem["spike_amplitude"], thr.shape), thr, rtol=1e-6)


@pytest.mark.parametrize("source", ["qcfs", "relu"])
def test_parallel_end_to_end(ckpts, source):
    teacher = ckpts["qcfs"] if source == "qcfs" else ckpts["ann"]
    ck = _train(ckpts["tmp"], f"par-{source}", "--method", "parallel", "--source", source, "--teacher",
                str(teacher), "--timesteps", "4", "--epochs", "1")
    acc, meta, _ = _export_and_simulate(ck, 4)
    m = meta["metrics"]
    assert {"parallel_test_accuracy", "sequential_if_test_accuracy", "snn_test_accuracy"} <= set(m)
    assert m["snn_test_accuracy"] == m["sequential_if_test_accuracy"]
    assert abs(acc - m["sequential_if_test_accuracy"]) <= 1.0 / N_TEST
    if source == "qcfs":  # L == T: the windowed network is the QCFS ANN exactly
        assert m["parallel_test_accuracy"] == m["ann_test_accuracy"]


def test_bridge_end_to_end(ckpts):
    ck = _train(ckpts["tmp"], "bridge", "--method", "bridge", "--epochs", "2", "--finetune-epochs", "1",
                "--timesteps", "2")
    acc, meta, graph = _export_and_simulate(ck, 2)
    assert abs(acc - meta["metrics"]["snn_test_accuracy"]) <= 1.0 / N_TEST
    neurons, g = _neuron_meta(graph)
    for name, (t, sem) in neurons.items():
        assert t == "LIF" and sem["reset"] == "zero" and sem["threshold_test"] == "gt"
        np.testing.assert_allclose(np.asarray(g.nodes[name].v_threshold), 0.5)


def test_lasnn_end_to_end(ckpts):
    ck = _train(ckpts["tmp"], "lasnn", "--method", "lasnn", "--teacher", str(ckpts["ann"]), "--epochs", "1",
                "--timesteps", "2", "--width", "0.5")
    acc, meta, _ = _export_and_simulate(ck, 2)
    assert abs(acc - meta["metrics"]["snn_test_accuracy"]) <= 1.0 / N_TEST
    assert meta["layers"][0]["out_channels"] == 8  # half of the teacher's 16


def test_method_option_errors_exit_3(ckpts, capsys):
    out = ckpts["tmp"] / "bad"
    assert main(["--no-progress", "train", "--out", str(out), *COMMON, "--method", "parallel", "--source", "nope",
                 "--epochs", "1"]) == 3
    assert main(["--no-progress", "train", "--out", str(out), *COMMON, "--method", "lasnn", "--teacher",
                 str(out / "missing"), "--epochs", "1"]) == 3
    assert main(["--no-progress", "export", str(ckpts["ann"]), "--format", "nir",
                 "--out", str(out / "g.nir")]) == 3
    assert main(["--no-progress", "train", "--out", str(out), *COMMON, "--method", "lasnn", "--teacher",
                 str(ckpts["ann"]), "--student-lr", "0", "--epochs", "1"]) == 3
    err = capsys.readouterr().err
    assert err.count("error:") == 4 and "Traceback" not in err


def test_onnx_export_of_the_anns_matches_torch(ckpts):
    import onnxruntime as ort
    import torch

    from spikebridge.models.checkpoint import build_model, load_checkpoint
    from spikebridge.models.datasets import load_dataset
    from spikebridge.models.methods import common as C

    x, _ = load_dataset("digits", "test")
    x = x[:32]
    for name in ("qcfs", "ann"):
        out = ckpts["tmp"] / f"{name}.onnx"
        assert main(["--no-progress", "export", str(ckpts[name]), "--format", "onnx", "--out", str(out)]) == 0
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        y = sess.run(None, {"input": x})[0]
        meta, t = load_checkpoint(ckpts[name])
        net = build_model(meta, t)
        with torch.no_grad():
            ref = net.ann(torch.from_numpy(x)) if name == "qcfs" else net(torch.from_numpy(x), C.relu_act)
        np.testing.assert_allclose(y, ref.numpy(), rtol=1e-4, atol=1e-4)
