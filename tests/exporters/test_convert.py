"""ONNX -> NIR conversion (spikebridge convert): threshold balancing on models exported by
our ONNX exporter, by torch.onnx.export, and built with onnx.helper; accuracy of the
converted SNN in eventsim against the ONNX model in onnxruntime; clear rejections."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from spikebridge.exporters.nir_import import graph_differences, graph_to_torch
from spikebridge.exporters.onnx_export import checkpoint_to_onnx
from spikebridge.exporters.onnx_step import graph_to_onnx_step, run_steps
from spikebridge.exporters.onnx_to_nir import (OnnxModelError, compare_accuracy, convert_onnx, evaluate_layers,
                                   load_onnx_safely, run_onnx)
from spikebridge.base.errors import InputError, UnsupportedError
from spikebridge.hardware.eventsim import simulate
from spikebridge.hardware.graph import load_graph
from spikebridge.models.datasets import load_dataset
from tests._trained import trained_checkpoint
from spikebridge.toolchain.cli import main

F32 = np.float32


@pytest.fixture(scope="module")
def digits():
    xtr, ytr = load_dataset("digits", "train")
    xte, yte = load_dataset("digits", "test")
    return xtr, ytr, xte, yte


def _save(model, path):
    onnx.save(model, str(path))
    return path


# -- models ---------------------------------------------------------------------------

def helper_model(seed=0) -> onnx.ModelProto:
    """Built directly with onnx.helper: Conv (no bias) + Add bias + BatchNormalization,
    Relu, padded AveragePool (count_include_pad), Conv + residual Add, Clip(0, 6),
    standalone BatchNormalization after the Add, GlobalAveragePool, Reshape, MatMul + Add,
    Relu, Gemm (transB = 0, alpha), Softmax."""
    rng = np.random.default_rng(seed)
    inits = []

    def c(name, arr, dtype=F32):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    n = helper.make_node
    nodes = [
        n("Conv", ["x", c("w1", rng.normal(0, 0.5, (8, 1, 3, 3)))], ["z1"], name="conv1", pads=[1, 1, 1, 1]),
        n("Add", ["z1", c("b1", rng.normal(0, 0.1, (1, 8, 1, 1)))], ["z1b"], name="bias1"),
        n("BatchNormalization", ["z1b", c("g1", rng.uniform(0.5, 1.5, 8)), c("be1", rng.normal(0, 0.1, 8)),
                                 c("m1", rng.normal(0, 0.1, 8)), c("v1", rng.uniform(0.5, 2, 8))], ["bn1"],
          name="bn1", epsilon=1e-5),
        n("Relu", ["bn1"], ["r1"], name="relu1"),
        n("AveragePool", ["r1"], ["p1"], name="pool1", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
          count_include_pad=1),
        n("Conv", ["p1", c("w2", rng.normal(0, 0.3, (8, 8, 3, 3))), c("b2", rng.normal(0, 0.1, 8))], ["z2"],
          name="conv2", pads=[1, 1, 1, 1]),
        n("Add", ["z2", "r1"], ["res"], name="residual"),
        n("Clip", ["res", c("lo", 0.0), c("hi", 6.0)], ["r2"], name="clip2"),
        n("BatchNormalization", ["r2", c("g2", rng.uniform(0.5, 1.5, 8)), c("be2", rng.normal(0, 0.1, 8)),
                                 c("m2", rng.normal(0, 0.1, 8)), c("v2", rng.uniform(0.5, 2, 8))], ["bn2"],
          name="bn2"),
        n("Relu", ["bn2"], ["r3"], name="relu3"),
        n("GlobalAveragePool", ["r3"], ["gap"], name="gap"),
        n("Reshape", ["gap", c("shape", [-1, 8], np.int64)], ["flat"], name="flat"),
        n("MatMul", ["flat", c("w3", rng.normal(0, 0.5, (8, 16)))], ["z3"], name="fc1"),
        n("Add", ["z3", c("b3", rng.normal(0, 0.1, 16))], ["z3b"], name="fc1_bias"),
        n("Relu", ["z3b"], ["r4"], name="relu4"),
        n("Gemm", ["r4", c("w4", rng.normal(0, 0.5, (16, 10))), c("b4", rng.normal(0, 0.1, 10))], ["logits"],
          name="fc2", alpha=0.5),
        n("Softmax", ["logits"], ["prob"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(nodes, "helper_net", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 10])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


class _TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.c2 = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8))
        self.head = torch.nn.Sequential(torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(128, 32),
                                        torch.nn.ReLU(), torch.nn.Linear(32, 10))

    def forward(self, x):
        h = self.c1(x)
        return self.head(torch.relu(self.c2(h) + h))  # residual block


def torch_model(digits, path) -> onnx.ModelProto:
    """A small residual CNN trained on digits (seeded, ~a second), exported by torch."""
    xtr, ytr, _, _ = digits
    torch.manual_seed(0)
    net = _TorchNet()
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _ in range(5):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(net, (x[:2],), str(path), dynamo=False, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "N"}}, opset_version=17)
        except Exception as e:  # noqa: BLE001 - an exporter that needs packages missing offline
            pytest.skip(f"torch.onnx.export does not work here ({type(e).__name__}: {e})")
    return onnx.load(str(path))


# -- accuracy ---------------------------------------------------------------------------

def test_our_onnx_export_converts_with_ann_accuracy(digits):
    xtr, _, xte, yte = digits
    model = checkpoint_to_onnx(trained_checkpoint())
    graph, rep = convert_onnx(model, xtr[:1000], timesteps=32)
    assert rep["onnx_check_max_abs_diff"] < 1e-4
    r = compare_accuracy(graph, model, xte, yte)
    print("our ONNX export, T=32:", r)
    assert abs(r["snn_accuracy"] - r["onnx_accuracy"]) <= 0.02
    assert r["agreement"] >= 0.97


def test_torch_exported_residual_cnn_converts(digits, tmp_path):
    xtr, _, xte, yte = digits
    model = torch_model(digits, tmp_path / "t.onnx")
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "Add", "Relu", "AveragePool", "Gemm"} <= ops
    graph, rep = convert_onnx(model, xtr[:1000], timesteps=32)
    r = compare_accuracy(graph, model, xte, yte)
    print("torch.onnx.export residual CNN, T=32:", r)
    assert r["onnx_accuracy"] >= 0.9
    assert r["snn_accuracy"] >= r["onnx_accuracy"] - 0.03
    assert r["agreement"] >= 0.95
    # the residual sum reaches its IF node as two edges (a conv and a Scale of spikes)
    into = {}
    for a, b in graph.edges:
        into.setdefault(b, []).append(a)
    assert any(len(v) == 2 and any(type(graph.nodes[s]).__name__ == "Scale" for s in v)
               for k, v in into.items() if type(graph.nodes[k]).__name__ == "IF")


def test_helper_built_model_converges_to_the_onnx_logits():
    model = helper_model()
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (300, 1, 8, 8)).astype(F32)
    graph, rep = convert_onnx(model, x[:200], timesteps=128, percentile=100.0)
    meta = graph.metadata["spikebridge"]
    assert meta["readout"] == "sum" and meta["timesteps"] == 128 and meta["encoding"] == "direct"
    ifs = [n for n in graph.nodes.values() if type(n).__name__ == "IF"]
    assert len(ifs) == 4
    for n in ifs:
        sb = n.metadata["spikebridge"]
        assert sb["reset"] == "subtract" and np.isclose(sb["v_init"], float(n.v_threshold.flat[0]) / 2)
    # the ANN logits (softmax dropped) vs the SNN's output summed over T, on held-out inputs
    layers_ref = run_onnx(model, x[200:])
    tr = simulate(graph, np.broadcast_to(x[200:][None].astype(np.float64), (128, 100, 1, 8, 8)))
    snn = tr.outputs["output"].sum(0)
    logits = np.log(layers_ref)  # softmax output -> logits up to a per-sample constant
    d_snn = snn - snn.mean(1, keepdims=True)
    d_ann = logits - logits.mean(1, keepdims=True)
    err = np.abs(d_snn - d_ann).max() / np.abs(d_ann).max()
    print("helper model, T=128: relative max error of centred logits", err)
    assert err < 0.1
    assert np.mean(snn.argmax(1) == layers_ref.argmax(1)) >= 0.9


def test_count_readout_and_round_trip(digits, tmp_path):
    xtr, _, xte, yte = digits
    model = checkpoint_to_onnx(trained_checkpoint())
    graph, _ = convert_onnx(model, xtr[:500], timesteps=32, readout="count")
    assert graph.metadata["spikebridge"]["readout"] == "count" and "output_if" in graph.nodes
    r = compare_accuracy(graph, model, xte[:120], yte[:120])
    assert r["snn_accuracy"] >= r["onnx_accuracy"] - 0.05
    from spikebridge.exporters.nir_export import write_nir
    import nir
    write_nir(graph, tmp_path / "g.nir")
    assert graph_differences(graph, nir.read(str(tmp_path / "g.nir"))) == []
    assert graph_differences(graph, graph_to_torch(graph).to_nir()) == []


def test_converted_graph_runs_as_onnx_step(digits):
    """The converted graph (soft reset, v_init = theta/2) through the step exporter and
    onnxruntime agrees with eventsim."""
    xtr, _, xte, _ = digits
    graph, _ = convert_onnx(checkpoint_to_onnx(trained_checkpoint()), xtr[:300], timesteps=16)
    step = graph_to_onnx_step(graph)
    import onnxruntime as ort
    sess = ort.InferenceSession(step.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.broadcast_to(xte[:60][None], (16, 60, 1, 8, 8))
    rec = run_steps(sess, step, x)
    tr = simulate(graph, x.astype(np.float64))
    for n, s in tr.spikes.items():
        assert np.mean((rec[f"s_{n}"] != 0) == s) >= 0.999, n
    assert np.abs(rec["output"].sum(0) - tr.outputs["output"].sum(0)).max() < 1e-3


# -- rejections --------------------------------------------------------------------------

def _tiny(nodes, inits, out="y", shape=("N", 1, 4, 4), out_shape=("N", 4)):
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(out_shape))],
                          initializer=[numpy_helper.from_array(np.asarray(v, F32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_unsupported_ops_are_listed_at_once():
    n = helper.make_node
    m = _tiny([n("MaxPool", ["x"], ["p"], name="mp", kernel_shape=[2, 2], strides=[2, 2]),
               n("Sigmoid", ["p"], ["s"], name="sig"),
               n("Flatten", ["s"], ["f"], name="flat"),
               n("Tanh", ["f"], ["y"], name="th")], {}, out_shape=("N", 4))
    with pytest.raises(UnsupportedError) as ei:
        convert_onnx(m, np.zeros((4, 1, 4, 4), F32), timesteps=8)
    msg = str(ei.value)
    assert "MaxPool" in msg and "AveragePool" in msg and "Sigmoid" in msg and "Tanh" in msg
    assert "\n" not in msg and isinstance(ei.value, InputError)


@pytest.mark.parametrize("case", ["clip_min", "asym_pads", "const_add"])
def test_semantic_rejections(case):
    n = helper.make_node
    if case == "clip_min":
        m = _tiny([n("Flatten", ["x"], ["f"]), n("Clip", ["f", "lo", "hi"], ["y"], name="clip")],
                  {"lo": -1.0, "hi": 1.0}, out_shape=("N", 16))
        want = "min = 0"
    elif case == "asym_pads":
        m = _tiny([n("Conv", ["x", "w"], ["c"], name="conv", pads=[0, 0, 1, 1]), n("Flatten", ["c"], ["y"])],
                  {"w": np.ones((1, 1, 2, 2))}, out_shape=("N", 16))
        want = "asymmetric"
    else:
        m = _tiny([n("Flatten", ["x"], ["f"]), n("Relu", ["f"], ["r"]), n("Add", ["r", "c"], ["y"], name="addc")],
                  {"c": np.ones(16)}, out_shape=("N", 16))
        want = "bias"
    with pytest.raises(UnsupportedError, match=want):
        convert_onnx(m, np.zeros((4, 1, 4, 4), F32), timesteps=8)


def test_unsafe_and_broken_files(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a model")
    with pytest.raises(OnnxModelError, match="not a readable ONNX"):
        load_onnx_safely(tmp_path / "junk.onnx")
    # external data pointing outside the model's directory
    m = _tiny([helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])],
              {"w": np.ones((16, 4))})
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../secret.bin")
    (tmp_path / "d").mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 256)
    onnx.save(m, str(tmp_path / "d" / "ext.onnx"))
    with pytest.raises(OnnxModelError, match="outside the model's directory"):
        load_onnx_safely(tmp_path / "d" / "ext.onnx")
    rc = main(["convert", str(tmp_path / "d" / "ext.onnx"), "--timesteps", "4", "--calibration", "digits",
               "--out", str(tmp_path / "g.nir")])
    assert rc == 3 and not (tmp_path / "g.nir").exists()


def test_cli_convert_with_npy_and_inspect(tmp_path, capsys, digits):
    xtr, *_ = digits
    p = _save(helper_model(), tmp_path / "m.onnx")
    np.save(tmp_path / "cal.npy", np.random.default_rng(0).uniform(0, 1, (64, 1, 8, 8)).astype(F32))
    out = tmp_path / "g.nir"
    assert main(["convert", str(p), "--timesteps", "8", "--calibration", str(tmp_path / "cal.npy"),
                 "--out", str(out)]) == 0
    g = load_graph(out)
    assert g.metadata["spikebridge"]["method"] == "onnx-convert"
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "subtract" in text and "IF" in text and "eventsim: runs this graph" in text
    # wrong calibration shape: exit 3, one line
    np.save(tmp_path / "bad.npy", np.zeros((4, 3, 8, 8), F32))
    assert main(["convert", str(p), "--timesteps", "8", "--calibration", str(tmp_path / "bad.npy"),
                 "--out", str(tmp_path / "h.nir")]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_evaluate_layers_matches_onnxruntime():
    model = helper_model(3)
    from spikebridge.exporters.onnx_to_nir import _Parser
    x = np.random.default_rng(2).uniform(0, 1, (16, 1, 8, 8)).astype(F32)
    layers, out = _Parser(model, None, x.shape[1:]).parse()
    mine = evaluate_layers(layers, x, keep={out})[out]
    ref = run_onnx(model, x)
    assert np.abs(np.exp(mine) / np.exp(mine).sum(1, keepdims=True) - ref).max() < 1e-5
