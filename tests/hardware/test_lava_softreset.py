"""Soft (subtractive) reset on Lava: refused unless --allow-reset-to-zero, and then the CLI
states the approximation and the accuracy it costs against the exact soft reset (eventsim)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nir
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.lava


def soft_reset_graph(path):
    rng = np.random.default_rng(4)
    th = rng.uniform(0.5, 1.5, size=24)
    w1 = rng.normal(size=(24, 64)) * 0.3
    nodes = {"input": nir.Input(np.array([1, 8, 8])),
             "flat": nir.Flatten(input_type={"input": np.array([1, 8, 8])}, start_dim=0, end_dim=-1),
             "fc1": nir.Affine(w1, rng.normal(size=24) * 0.05),
             "if1": nir.IF(r=np.ones(24), v_threshold=th,
                           metadata={"spikebridge": {"reset": "subtract", "v_init": th / 2}}),
             "fc2": nir.Affine(rng.normal(size=(10, 24)), np.zeros(10)), "output": nir.Output(np.array([10]))}
    g = nir.NIRGraph(nodes=nodes, edges=[("input", "flat"), ("flat", "fc1"), ("fc1", "if1"), ("if1", "fc2"), ("fc2", "output")],
                     metadata={"spikebridge": {"format_version": 1, "dt": 1.0, "timesteps": 8,
                                               "encoding": "direct", "readout": "sum"}}, type_check=False)
    nir.write(str(path), g)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "spikebridge", "--no-progress", *args], cwd=str(REPO),
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))


def test_soft_reset_needs_flag_and_reports_its_cost(tmp_path):
    g = tmp_path / "soft.nir"
    soft_reset_graph(g)
    common = ["simulate", str(g), "--dataset", "digits", "--limit", "60", "--backend", "lava"]
    r = _cli(*common, "--out", str(tmp_path / "a.npz"))
    assert r.returncode == 3 and "subtractive" in r.stderr and "allow" in r.stderr, r.stderr
    assert not (tmp_path / "a.npz").exists()
    for precision in ("float", "fixed"):
        out = tmp_path / f"{precision}.npz"
        r = _cli(*common, "--allow-reset-to-zero", "--precision", precision, "--out", str(out))
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout.strip().splitlines()[-1])
        rz = s["reset_to_zero"]
        assert "reset to zero" in rz["approximation"]
        assert rz["accuracy_cost"] == pytest.approx(rz["eventsim_soft_reset_accuracy"] - s["accuracy"])
        assert s["lava"]["precision"] == precision and s["lava"]["delay_steps_raw"] == {"if1": 1, "output": 2}
        assert out.exists()
