"""Own data: --labels, static inputs repeated over T, input-layer costing rule, encodings
(toolchain/pipeline.py load_samples, spikebridge/base/encoding.py, hardware/eventsim/counts.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nir
import numpy as np
import pytest

from spikebridge.exporters.nir_export import write_nir
from spikebridge.toolchain.cli import main

REPO = Path(__file__).resolve().parents[2]
T = 4
RNG = np.random.default_rng(1)
W1 = RNG.normal(0, 1, (5, 4)).astype(np.float32)
W1[0, 1] = 0.0  # a zero weight: not a synaptic event
W2 = RNG.normal(0, 1, (3, 5)).astype(np.float32)


def tiny_graph(path, encoding="direct"):
    """input(4) -> Affine(5x4) -> IF(theta 0.5, reset to 0) -> Affine(3x5) -> output, T = 4."""
    g = nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([4])}),
        "fc1": nir.Affine(weight=W1, bias=np.zeros(5, np.float32)),
        "if1": nir.IF(r=np.ones(5), v_threshold=np.full(5, 0.5), v_reset=np.zeros(5)),
        "fc2": nir.Affine(weight=W2, bias=np.zeros(3, np.float32)),
        "output": nir.Output(output_type={"output": np.array([3])})},
        edges=[("input", "fc1"), ("fc1", "if1"), ("if1", "fc2"), ("fc2", "output")],
        metadata={"spikebridge": {"format_version": 1, "dt": 1.0, "timesteps": T, "encoding": encoding,
                                  "readout": "sum"}})
    write_nir(g, path)
    return path


def hand_run(x_tb):
    """The tiny graph by hand: v += W1 x(t); s = v > 0.5; v = 0 where s; logits = sum_t W2 s."""
    x_tb = np.asarray(x_tb, dtype=np.float64)
    v = np.zeros((x_tb.shape[1], 5))
    out = np.zeros((x_tb.shape[1], 3))
    spikes = []
    for t in range(x_tb.shape[0]):
        v = v + x_tb[t] @ W1.T.astype(np.float64)
        s = v > 0.5
        v = np.where(s, 0.0, v)
        out += s @ W2.T.astype(np.float64)
        spikes.append(s)
    return out.argmax(1), np.stack(spikes)


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    xs = rng.random((12, 4)).astype(np.float32)
    np.save(tmp_path / "xs.npy", xs)
    np.save(tmp_path / "xt.npy", np.broadcast_to(xs[None], (T, 12, 4)).copy())
    y = rng.integers(0, 3, 12)
    np.save(tmp_path / "y.npy", y)
    return {"graph": tiny_graph(tmp_path / "g.nir"), "xs": xs, "y": y, "dir": tmp_path}


def _sim(capsys, *args):
    code = main(["--no-progress", "simulate", *map(str, args)])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


# ---------------------------------------------------------------- 1. --labels

def test_labels_accuracy_equals_hand_computation(files, capsys):
    d = files["dir"]
    code, summary, _ = _sim(capsys, files["graph"], "--input", d / "xs.npy", "--labels", d / "y.npy",
                            "--out", d / "o.npz")
    assert code == 0
    preds, _ = hand_run(np.broadcast_to(files["xs"][None], (T, 12, 4)))
    hand = float(np.mean(preds == files["y"]))
    assert summary["accuracy"] == pytest.approx(hand, abs=0)
    z = np.load(d / "o.npz")
    assert np.array_equal(z["predictions"], preds) and np.array_equal(z["labels"], files["y"])
    # --limit keeps the first samples of X.npy and y.npy alike
    code, summary, _ = _sim(capsys, files["graph"], "--input", d / "xs.npy", "--labels", d / "y.npy",
                            "--limit", 5, "--out", d / "o5.npz")
    assert summary["accuracy"] == pytest.approx(float(np.mean(preds[:5] == files["y"][:5])), abs=0)


def test_labels_in_report(files, tmp_path):
    from spikebridge.toolchain.report import report_graph

    d = files["dir"]
    rep = report_graph(files["graph"], tmp_path / "rep", input_npy=d / "xs.npy", progress=False,
                       samples={"labels_npy": d / "y.npy"})
    preds, _ = hand_run(np.broadcast_to(files["xs"][None], (T, 12, 4)))
    assert rep["accuracy"]["eventsim"] == pytest.approx(float(np.mean(preds == files["y"])), abs=0)
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["inputs"]["labels"] == str(d / "y.npy") and saved["inputs"]["encoding"] == "direct"


@pytest.mark.parametrize("label, why", [
    (np.zeros(12), "must be integers"),                       # float dtype
    (np.zeros((12, 1), np.int64), "shape (12, 1)"),            # not (batch,)
    (np.zeros(11, np.int64), "shape (11,)"),                   # wrong length
    (np.array([0] * 11 + [3]), "3 classes"),                   # out of range
    (np.array([0] * 11 + [-1]), "3 classes"),                  # negative
    (np.array(["a"] * 12), "must be integers"),                # strings
    ("pickle", "not a readable .npy"),                         # an object array: never unpickled
    ("garbage", "not a readable .npy"),
])
def test_bad_label_files_exit_3_one_line(files, label, why):
    d = files["dir"]
    bad = d / "bad.npy"
    if isinstance(label, str) and label == "pickle":
        np.save(bad, np.array([{"a": 1}] * 12, dtype=object), allow_pickle=True)
    elif isinstance(label, str) and label == "garbage":
        bad.write_bytes(b"\x93NUMPY garbage")
    else:
        np.save(bad, label)
    p = subprocess.run([sys.executable, "-m", "spikebridge", "--no-progress", "simulate", str(files["graph"]),
                        "--input", str(d / "xs.npy"), "--labels", str(bad), "--out", str(d / "o.npz")],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 3 and len(lines) == 1 and lines[0].startswith("error: ") and why in lines[0], p.stderr
    assert "Traceback" not in p.stderr and not (d / "o.npz").exists()


def test_labels_refused_with_dataset(files, capsys):
    code, _, err = _sim(capsys, files["graph"], "--dataset", "digits", "--labels", files["dir"] / "y.npy",
                        "--out", files["dir"] / "o.npz")
    assert code == 3 and "--labels is for --input" in err


# ---------------------------------------------------------------- 2. static inputs

def test_static_input_equals_time_major_repeat_bit_for_bit(files, capsys):
    d = files["dir"]
    assert _sim(capsys, files["graph"], "--input", d / "xs.npy", "--out", d / "s.npz")[0] == 0
    assert _sim(capsys, files["graph"], "--input", d / "xt.npy", "--out", d / "t.npz")[0] == 0
    s, t = np.load(d / "s.npz"), np.load(d / "t.npz")
    assert sorted(s.files) == sorted(t.files)
    for k in s.files:
        assert s[k].dtype == t[k].dtype and s[k].tobytes() == t[k].tobytes(), k
    # --timesteps repeats a static input over another T
    code, summary, _ = _sim(capsys, files["graph"], "--input", d / "xs.npy", "--timesteps", 7, "--out", d / "7.npz")
    assert code == 0 and summary["timesteps"] == 7


def test_static_input_python_api(files):
    from spikebridge.hardware.backends import prepare
    from spikebridge.toolchain.pipeline import load_samples

    prep = prepare(files["graph"])
    x, labels, desc = load_samples(prep, input_npy=files["dir"] / "xs.npy", timesteps=3)
    assert x.shape == (3, 12, 4) and labels is None and desc["input_layout"].startswith("static")
    assert np.array_equal(x, np.broadcast_to(files["xs"][None], (3, 12, 4)))


def test_time_major_input_refuses_encoding_and_other_T(files, capsys):
    d = files["dir"]
    code, _, err = _sim(capsys, files["graph"], "--input", d / "xt.npy", "--encoding", "rate", "--out", d / "o.npz")
    assert code == 3 and "time-major" in err
    code, _, err = _sim(capsys, files["graph"], "--input", d / "xt.npy", "--timesteps", 3, "--out", d / "o.npz")
    assert code == 3 and "T = 4" in err
    np.save(d / "odd.npy", np.zeros((2, 3, 4, 4), np.float32))  # neither (N, 4) nor (T, N, 4)
    code, _, err = _sim(capsys, files["graph"], "--input", d / "odd.npy", "--out", d / "o.npz")
    assert code == 3 and "(batch, *(4,))" in err


# ---------------------------------------------------------------- 3. input-layer costing

def _hand_counts(x_tb):
    """Synaptic events by hand: each nonzero input through each nonzero weight of its column."""
    fan1 = (W1 != 0).sum(axis=0)  # per input element (one weight is zero)
    fan2 = (W2 != 0).sum(axis=0)
    _, spikes = hand_run(x_tb)
    return int(((np.asarray(x_tb) != 0) * fan1).sum()), int((spikes * fan2).sum())


@pytest.mark.parametrize("dtype", [bool, np.float32, np.int8])
def test_binary_input_counts_accumulates_not_macs(files, capsys, dtype):
    d = files["dir"]
    xb = (np.random.default_rng(3).random((T, 12, 4)) < 0.5).astype(dtype)  # 0/1 in any dtype is binary
    np.save(d / "xb.npy", xb)
    code, summary, _ = _sim(capsys, files["graph"], "--input", d / "xb.npy", "--out", d / "b.npz")
    assert code == 0
    in_ops, hidden_ops = _hand_counts(xb)
    assert summary["macs_per_sample"] == 0
    assert summary["synaptic_ops_per_sample"] * 12 == in_ops + hidden_ops
    assert summary["input_layer"]["input"] == "binary" and summary["input_layer"]["nodes"] == ["fc1"]
    z = np.load(d / "b.npz")
    assert int(z["counts/fc1/synaptic_ops"].sum()) == in_ops and int(z["counts/fc1/macs"].sum()) == 0


def test_analog_input_counts_macs_and_energy_states_rule(files, capsys, tmp_path):
    from spikebridge.hardware import energy
    from spikebridge.hardware.backends import run_graph

    xt = np.broadcast_to(files["xs"][None], (T, 12, 4))
    in_ops, hidden_ops = _hand_counts(xt)
    g = nir.read(files["graph"])
    tr = run_graph(g, xt)
    assert tr.total("macs") == in_ops and tr.total("synaptic_ops") == hidden_ops
    assert tr.meta["input_layer"]["input"] == "analog"
    e = energy.estimate(tr, g, "horowitz-45nm")
    assert e["input_layer"]["input"] == "analog"
    assert e["total_pj_per_sample"] == pytest.approx((4.6 * in_ops + 0.9 * hidden_ops) / 12, rel=1e-12)
    xb = xt > 0.5  # the same network on a binary input: E_AC for the input layer too
    tr = run_graph(g, xb)
    in_b, hid_b = _hand_counts(xb)
    e = energy.estimate(tr, g, "horowitz-45nm")
    assert e["input_layer"]["input"] == "binary" and "synaptic operation" in e["input_layer"]["rule"]
    assert e["total_pj_per_sample"] == pytest.approx(0.9 * (in_b + hid_b) / 12, rel=1e-12)
    # report.json and the page state the rule
    from spikebridge.toolchain.report import report_graph
    np.save(tmp_path / "xb.npy", xb)
    rep = report_graph(files["graph"], tmp_path / "rep", input_npy=tmp_path / "xb.npy", progress=False)
    assert rep["input_layer"]["input"] == "binary"
    assert "Input-layer rule used: <b>binary input" in (tmp_path / "rep" / "report.html").read_text()


def test_input_rule_told_from_counts_of_a_saved_trace(files, capsys):
    """A trace read back from OUT.npz has no meta: the rule is told from its counts."""
    from spikebridge.hardware import energy
    from spikebridge.toolchain.pipeline import load_trace_npz

    d = files["dir"]
    np.save(d / "xb.npy", np.random.default_rng(4).random((T, 12, 4)) < 0.5)
    for x, kind in (("xs.npy", "analog"), ("xb.npy", "binary")):
        assert _sim(capsys, files["graph"], "--input", d / x, "--out", d / "r.npz")[0] == 0
        rule = energy.input_layer_rule(nir.read(files["graph"]), load_trace_npz(d / "r.npz", "eventsim"))
        assert rule["input"] == kind and rule["told_from"] == "counts"


def test_is_binary():
    from spikebridge.hardware.eventsim.counts import is_binary

    assert is_binary(np.array([True, False])) and is_binary(np.array([0.0, 1.0, 1.0]))
    assert is_binary(np.broadcast_to(np.array([0, 1], np.uint8)[None], (5, 2)))
    assert not is_binary(np.array([0.0, 0.999])) and not is_binary(np.array([0, 2]))
    assert not is_binary(np.broadcast_to(np.array([0.5, 1.0])[None], (3, 2)))


# ---------------------------------------------------------------- 4. encodings end to end

def test_rate_training_recorded_and_picked_up_by_simulate_and_report(tmp_path, capsys):
    """train --encoding rate (bptt, digits, 1 epoch, 150 samples) -> model.json -> NIR metadata
    -> simulate and report encode the dataset with rate unless told otherwise."""
    ck = tmp_path / "ck"
    assert main(["--no-progress", "train", "--method", "bptt", "--arch", "mlp", "--dataset", "digits", "--epochs",
                 "1", "--limit-train", "150", "--limit-test", "50", "--timesteps", "3", "--encoding", "rate",
                 "--out", str(ck)]) == 0
    meta = json.loads((ck / "model.json").read_text())
    assert meta["config"]["encoding"] == "rate" and meta["neuron"]["encoding"] == "rate"
    assert main(["--no-progress", "export", str(ck)]) == 0
    g = nir.read(ck / "graph.nir")
    assert str(g.metadata["spikebridge"]["encoding"]) == "rate"
    capsys.readouterr()
    code, summary, err = _sim(capsys, ck / "graph.nir", "--dataset", "digits", "--limit", 20, "--out", tmp_path / "s.npz")
    assert code == 0 and summary["inputs"]["encoding"] == "rate"
    assert summary["inputs"]["encoding_source"] == "graph metadata" and "warning" not in err
    assert summary["macs_per_sample"] == 0 and summary["input_layer"]["input"] == "binary"
    # the same run by hand: rate-encode the dataset with seed 0, time-major, through run_graph
    from spikebridge.base.encoding import encode
    from spikebridge.hardware.backends import run_graph
    from spikebridge.models.datasets import load_dataset
    x, _ = load_dataset("digits", "test")
    tr = run_graph(g, encode(x[:20], "rate", 3, seed=0))
    assert np.array_equal(np.load(tmp_path / "s.npz")["output"], tr.outputs["output"])
    # a different encoding on the command line: run, with a one-line warning
    code, summary, err = _sim(capsys, ck / "graph.nir", "--dataset", "digits", "--limit", 20, "--encoding", "direct",
                              "--out", tmp_path / "d.npz")
    assert code == 0 and summary["inputs"]["encoding"] == "direct" and summary["input_layer"]["input"] == "analog"
    assert [ln for ln in err.splitlines() if ln.startswith("warning:")] == [
        "warning: --encoding direct: the graph was trained with rate encoding"]
    # report states how inputs were made
    assert main(["--no-progress", "report", str(ck / "graph.nir"), "--dataset", "digits", "--limit", "20",
                 "--out", str(tmp_path / "rep")]) == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["inputs"]["encoding"] == "rate" and rep["input_layer"]["input"] == "binary"
    # the accuracy-vs-T sweep repeats one frame: refused for an encoded run rather than wrong
    assert main(["--no-progress", "report", str(ck / "graph.nir"), "--dataset", "digits", "--limit", "20",
                 "--sweep-timesteps", "1,2", "--out", str(tmp_path / "rep2")]) == 3
    assert "--sweep-timesteps re-runs with direct encoding" in capsys.readouterr().err


def test_unknown_recorded_encoding_refused_unless_overridden(files, capsys):
    d = files["dir"]
    g = tiny_graph(d / "odd.nir", encoding="poisson")
    code, _, err = _sim(capsys, g, "--input", d / "xs.npy", "--out", d / "o.npz")
    assert code == 3 and "encoding 'poisson' is not one of" in err and "--encoding" in err
    code, summary, err = _sim(capsys, g, "--input", d / "xs.npy", "--encoding", "latency", "--out", d / "o.npz")
    assert code == 0 and summary["inputs"]["encoding"] == "latency" and "trained with poisson" in err
    code, summary, _ = _sim(capsys, g, "--input", d / "xt.npy", "--out", d / "o.npz")  # time-major: not encoded
    assert code == 0 and summary["inputs"]["encoding"].startswith("none")


def test_a_dataset_of_frames_passes_through_unencoded(files, capsys, monkeypatch):
    """A dataset yielding (batch, T, ...) frames (event data) is run as given, time-major."""
    from spikebridge.toolchain import pipeline

    frames = (np.random.default_rng(5).random((12, T, 4)) < 0.3)
    monkeypatch.setattr(pipeline, "dataset_samples", lambda *a, **k: (frames, files["y"]))
    d = files["dir"]
    code, summary, _ = _sim(capsys, files["graph"], "--dataset", "events", "--out", d / "f.npz")
    assert code == 0 and summary["inputs"]["encoding"].startswith("none") and summary["timesteps"] == T
    preds, _ = hand_run(np.moveaxis(frames, 1, 0))
    assert summary["accuracy"] == pytest.approx(float(np.mean(preds == files["y"])), abs=0)
    assert summary["input_layer"]["input"] == "binary"
    code, _, err = _sim(capsys, files["graph"], "--dataset", "events", "--encoding", "rate", "--out", d / "f.npz")
    assert code == 3 and "already a sequence of frames" in err


def test_events_trained_graph_refuses_static_samples_without_encoding():
    """A graph trained on event frames records encoding=events: static samples are refused in
    one line (give frames or the event dataset), unless --encoding says how to make spikes."""
    import warnings

    from spikebridge.base.errors import InputError
    from spikebridge.toolchain.pipeline import choose_encoding

    with pytest.raises(InputError, match="event frames"):
        choose_encoding("events", None, "g.nir")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert choose_encoding("events", "rate", "g.nir") == ("rate", "command line")
    assert any("trained with events" in str(x.message) for x in w)
