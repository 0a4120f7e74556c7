"""`spikebridge report --compare RUN RUN [RUN ...]`: N-way tables, CSV, the accuracy-versus-
energy/latency Pareto plot (SVG + 200-dpi PNG), and one-line refusals (exit 3)."""
from __future__ import annotations

import csv
import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spikebridge.base.errors import InputError
from spikebridge.hardware.trace import Trace
from spikebridge.toolchain.compare import (COMPARE_SECTIONS, compare_runs, headline_accuracy, pareto_figure,
                                           pareto_front)
from spikebridge.toolchain.report import make_report
from tests.toolchain.test_report import EVIL, graph, strict_load
from tests.toolchain.test_report_features import check_page

REPO = Path(__file__).resolve().parents[2]


def scaled_trace(k: int) -> Trace:
    """test_report's trace with k times the synaptic ops of fc2 (more energy for larger k)."""
    a = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    s = np.zeros((2, 2, 2), dtype=bool)
    s[0] = True
    return Trace(timesteps=2, batch=2, outputs={"output": s.astype(float)},
                 counts={"fc1": {"macs": a(10, 8)}, "if1": {"neuron_updates": a(4, 4), "spikes": a(4, 0)},
                         "fc2": {"synaptic_ops": a(8 * k, 0)}, "if2": {"neuron_updates": a(4, 4), "spikes": a(4, 0)}},
                 spikes={"if1": s, "if2": s})


def three_runs(tmp_path):
    """a: 50% at the lowest energy; b: 90% at more energy; c: 40% at the most (dominated)."""
    runs = []
    for name, acc, k in (("a", 0.5, 1), ("b", 0.9, 3), ("c", 0.4, 5)):
        d = tmp_path / name
        make_report(d, graph(), scaled_trace(k), accuracy={"torch": 0.95, "eventsim": acc})
        runs.append(d)
    return runs


def png_dpi(data: bytes) -> float:
    """Pixels per inch from a PNG's pHYs chunk."""
    i = data.index(b"pHYs")
    ppm_x = struct.unpack(">I", data[i + 4:i + 8])[0]
    return ppm_x * 0.0254


def test_pareto_front():
    pts = [(0.5, 1.0), (0.9, 3.0), (0.4, 5.0), (0.9, 3.0), (None, 0.1), (0.95, None)]
    assert pareto_front(pts) == [True, True, False, True, False, False]
    assert pareto_front([(0.5, 2.0), (0.5, 1.0)]) == [False, True]


def test_headline_accuracy_prefers_the_reports_backend():
    assert headline_accuracy({"backend": "lava", "accuracy": {"eventsim": 0.5, "lava": 0.4}}) == ("lava", 0.4)
    assert headline_accuracy({"accuracy": {"torch": 0.9, "eventsim": 0.5}}) == ("eventsim", 0.5)
    assert headline_accuracy({"accuracy": {"onnx_ann": 0.7}}) == (None, None)
    assert headline_accuracy({"accuracy": {}}) == (None, None)


def test_three_run_comparison(tmp_path):
    runs = three_runs(tmp_path)
    out = tmp_path / "cmp"
    cmp = compare_runs([runs[0], runs[1], runs[2] / "report.json"], out)
    data = strict_load(out / "compare.json")
    assert data == json.loads(json.dumps(cmp))
    assert [r["label"] for r in data["runs"]] == ["a", "b", "c"]
    assert data["accuracy"]["eventsim"]["values"] == [0.5, 0.9, 0.4]
    assert data["accuracy"]["eventsim"]["over_first"] == pytest.approx([1.0, 1.8, 0.8])
    assert data["totals"]["synaptic_ops_per_sample"]["values"] == [4.0, 12.0, 20.0]
    e = data["energy"]["loihi"]["values"]
    assert e[0] < e[1] < e[2]
    p = data["pareto"]
    assert p["energy_model"] == "loihi" and p["latency_chip"] == "loihi"
    assert [q["on_energy_front"] for q in p["points"]] == [True, True, False]
    assert [q["accuracy_backend"] for q in p["points"]] == ["eventsim"] * 3
    assert [q["energy_pj_per_sample"] for q in p["points"]] == e
    assert set(data["neurobench"]) >= {"footprint_bytes", "synaptic_operations.Effective_ACs"}
    rows = list(csv.DictReader(io.StringIO((out / "compare.csv").read_text())))
    assert [r["label"] for r in rows] == ["a", "b", "c"] and float(rows[1]["accuracy"]) == 0.9
    svg = (out / "compare_pareto.svg").read_text()
    assert "<svg" in svg and "Loihi" in svg and "Pareto front" in svg
    png = (out / "compare_pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png_dpi(png) == pytest.approx(200, abs=1)
    check_page((out / "compare.html").read_text(), COMPARE_SECTIONS)


def test_labels_escaped_and_disambiguated(tmp_path):
    a, b = tmp_path / "x" / EVIL, tmp_path / "y" / EVIL  # same folder name twice
    make_report(a, graph(EVIL), scaled_trace(1), accuracy={"eventsim": 0.5, EVIL: 0.25})
    make_report(b, graph(), scaled_trace(2), accuracy={"eventsim": 0.6}, first_layer="once",
                measured={"latency_seconds_per_sample": 2.5e-5, "throughput_samples_per_second": 4e4})
    cmp = compare_runs([a, b], tmp_path / "cmp")
    assert [r["label"] for r in cmp["runs"]] == [str(a), str(b)]
    assert cmp["accuracy"][EVIL]["values"] == [0.25, None] and cmp["accuracy"][EVIL]["over_first"] == [1.0, None]
    assert cmp["energy"]["horowitz-45nm"]["first_layer"] == ["per_step", "once"]
    onnx = cmp["latency"]["onnxruntime (ANN, this CPU)"]
    assert onnx["kind"] == "measured" and onnx["seconds_per_sample"]["values"] == [None, 2.5e-5]
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert EVIL not in page
    check_page(page, COMPARE_SECTIONS)


def test_pareto_figure_without_costs_or_accuracy():
    axes = [("energy_pj_per_sample", "Loihi"), ("latency_seconds_per_sample", "Loihi")]
    assert pareto_figure([{"label": "a", "accuracy": None, "energy_pj_per_sample": 1.0}], axes) is None
    svg, png = pareto_figure([{"label": "a", "accuracy": 0.5, "energy_pj_per_sample": 2e6}], axes)
    assert b"<svg" in svg and png[:4] == b"\x89PNG"


def test_refusals(tmp_path):
    runs = three_runs(tmp_path)
    with pytest.raises(InputError, match="at least two"):
        compare_runs([runs[0]], tmp_path / "o")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError) as e:
        compare_runs([runs[0], empty], tmp_path / "o")
    assert "report.json" in str(e.value) and "--out DIR" in str(e.value)  # advice that leads somewhere
    bad = tmp_path / "bad.json"
    bad.write_text('{"x": 1}')
    with pytest.raises(InputError, match="not a spikebridge report.json"):
        compare_runs([runs[0], bad], tmp_path / "o")
    assert not (tmp_path / "o" / "compare.json").exists()


def run_cli(*args):
    p = subprocess.run([sys.executable, "-m", "spikebridge", "--no-progress", *map(str, args)],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    return p.returncode, p.stdout, p.stderr


def one_line_error(err: str) -> bool:
    lines = [line for line in err.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("error: ")


def test_cli_three_runs_and_bad_inputs(tmp_path):
    runs = three_runs(tmp_path)
    rc, out, err = run_cli("report", "--compare", *runs, "--out", tmp_path / "cmp")
    assert rc == 0, err
    assert "compare_pareto.svg" in out
    assert len(strict_load(tmp_path / "cmp" / "compare.json")["runs"]) == 3
    for bad in ([runs[0]], [runs[0], tmp_path / "missing"], [runs[0], tmp_path]):
        rc, _, err = run_cli("report", "--compare", *bad, "--out", tmp_path / "cmp2")
        assert rc == 3 and one_line_error(err), (bad, rc, err)
    assert not (tmp_path / "cmp2").exists() or not any((tmp_path / "cmp2").iterdir())
    rc, _, err = run_cli("report", "--compare", *runs)  # no --out: usage
    assert rc == 2 and one_line_error(err)


# ------------------------------------------------------------------ bench methods' plot

def bench_rows(with_energy=True):
    rows = []
    for m, T, acc, e in (("snn2ann", 1, 0.80, 2e6), ("snn2ann", 4, 0.90, 8e6), ("qcfs", 4, 0.85, 9e6)):
        r = {"method": m, "T": T, "snn_test_accuracy": acc, "synaptic_ops_per_sample": e / 20}
        if with_energy:
            r.update(loihi_energy_pj_per_sample=e, loihi_latency_seconds_per_sample=T * 1e-5)
        rows.append(r)
    return rows


def test_bench_methods_pareto_plot(tmp_path):
    from spikebridge.benchmarks.bench_methods import pareto_plot
    assert pareto_plot(bench_rows(), tmp_path)
    svg = (tmp_path / "pareto.svg").read_text()
    assert "Loihi" in svg and "qcfs T=4" in svg and "Pareto front" in svg
    assert png_dpi((tmp_path / "pareto.png").read_bytes()) == pytest.approx(200, abs=1)
    old = tmp_path / "old"
    old.mkdir()
    assert pareto_plot(bench_rows(with_energy=False), old)  # a JSON from before energy was recorded
    assert "synaptic ops per inference" in (old / "pareto.svg").read_text()
    assert not pareto_plot([], tmp_path / "none")


def test_bench_methods_replot_cli(tmp_path):
    f = tmp_path / "bench.json"
    f.write_text(json.dumps({"rows": bench_rows()}))
    rc, out, err = run_cli("bench", "methods", "--replot", f, "--out", tmp_path / "plots")
    assert rc == 0, err
    assert json.loads(out)["pareto"].endswith("pareto.svg") and (tmp_path / "plots" / "pareto.png").is_file()
    f.write_text("[1, 2]")
    rc, _, err = run_cli("bench", "methods", "--replot", f, "--out", tmp_path / "plots2")
    assert rc == 3 and one_line_error(err)


def test_bench_methods_row_has_modelled_energy(tmp_path):
    """bench methods' eventsim step records the Loihi energy and latency the plot uses."""
    import shutil

    from spikebridge.benchmarks.bench_methods import _eventsim
    from spikebridge.hardware.backends import run_graph
    from spikebridge.hardware.energy import estimate
    ckpt = tmp_path / "ckpt"
    shutil.copytree(REPO / "tests" / "data" / "exports" / "bptt-lif-cnn", ckpt)
    rng = np.random.default_rng(0)
    x, y = rng.random((6, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 6)
    row = _eventsim(ckpt, x, y)
    tr = run_graph(ckpt / "graph.nir", np.broadcast_to(x[None], (4, *x.shape)))
    from spikebridge.hardware.graph import load_graph
    want = estimate(tr, load_graph(ckpt / "graph.nir"), "loihi")["total_pj_per_sample"]
    assert row["loihi_energy_pj_per_sample"] == pytest.approx(want, rel=1e-12)
    assert row["loihi_latency_seconds_per_sample"] > 0
