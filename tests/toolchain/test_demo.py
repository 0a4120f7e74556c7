"""The demo pipeline end to end, Lava included: the issue's acceptance criteria as a test."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.lava
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    p = subprocess.run([sys.executable, "-m", "spikebridge", "--no-progress", "demo", "--out", str(out)],
                       capture_output=True, text=True, cwd=REPO, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    for name in ("checkpoint/weights.safetensors", "checkpoint/model.json", "graph.nir", "model.onnx",
                 "report.json", "report.html", "eventsim.npz", "lava.npz"):
        assert (out / name).is_file(), name
    rep = json.loads((out / "report.json").read_text())
    acc = rep["accuracy"]
    assert set(acc) >= {"torch", "eventsim", "lava"}
    assert acc["torch"] >= 0.93
    assert abs(acc["eventsim"] - acc["torch"]) <= 0.02
    assert abs(acc["lava"] - acc["torch"]) <= 0.02
    assert rep["synaptic_ops_per_sample"] > 0 and rep["spikes_per_sample"] > 0
    assert {"horowitz-45nm", "loihi", "truenorth"} <= set(rep["energy"])
    assert all(e["total_pj_per_sample"] > 0 and e["source"] for e in rep["energy"].values())
    assert rep["versions"]["torch"] and rep["seed"] == 0
    html = (out / "report.html").read_text()
    assert "data:image/svg+xml;base64," in html and "<script" not in html
    assert html.index('<section id="summary" class="card">') < html.index('<section id="accuracy">')
    assert p.stdout.splitlines()[0].startswith("summary: snn2ann cnn, T = 4, digits (360 samples)")
    # the two simulators agree sample for sample
    with np.load(out / "eventsim.npz") as e, np.load(out / "lava.npz") as l:
        assert np.mean(e["predictions"] == l["predictions"]) >= 0.98
    # `report` rebuilds the same report from the run directory
    before = json.loads((out / "report.json").read_text())
    p = subprocess.run([sys.executable, "-m", "spikebridge", "report", str(out)], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr
    after = json.loads((out / "report.json").read_text())
    assert after["accuracy"] == before["accuracy"] and after["energy"] == before["energy"]
