"""The CLI's contract: commands, exit codes, one-line errors, no partial outputs, imports."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests._trained import trained_checkpoint

REPO = Path(__file__).resolve().parents[2]


def run(*args, cwd=None, timeout=600):
    p = subprocess.run([sys.executable, "-m", "spikebridge", "--no-progress", *map(str, args)],
                       capture_output=True, text=True, cwd=cwd or REPO, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def assert_one_line_error(code, err, expected_code=3):
    assert code == expected_code, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err


@pytest.mark.parametrize("cmd", ["demo", "train", "export", "simulate", "report", "inspect", "doctor"])
def test_every_command_has_help_with_example(cmd):
    code, out, _ = run(cmd, "--help")
    assert code == 0 and "example: spikebridge " + cmd in out.replace("\n", " ")


def test_console_script_and_module_agree():
    exe = Path(sys.executable).parent / "spikebridge"
    p = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "simulate" in p.stdout


def test_usage_error_exits_2():
    code, _, err = run("simulate")
    assert code == 2 and "usage:" in err


def test_simulate_non_nir_file_is_rejected(tmp_path):
    out = tmp_path / "o.npz"
    code, _, err = run("simulate", "/etc/hostname", "--dataset", "digits", "--out", out)
    assert_one_line_error(code, err)
    assert "/etc/hostname" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_export_of_missing_or_bad_checkpoint(tmp_path):
    code, _, err = run("export", tmp_path / "nope", "--out", tmp_path / "g.nir")
    assert_one_line_error(code, err)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.json").write_text("{not json")
    code, _, err = run("export", tmp_path / "bad", "--out", tmp_path / "g.nir")
    assert_one_line_error(code, err)
    assert "model.json" in err
    assert not (tmp_path / "g.nir").exists()


def test_train_export_simulate_inspect_end_to_end(tmp_path):
    ckpt = trained_checkpoint()
    code, out, err = run("export", ckpt, "--format", "nir", "--out", tmp_path / "g.nir")
    assert code == 0, err
    code, out, err = run("export", ckpt, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert code == 0, err
    code, out, err = run("simulate", tmp_path / "g.nir", "--dataset", "digits", "--limit", "50",
                         "--out", tmp_path / "sim.npz")
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["samples"] == 50 and 0.8 <= summary["accuracy"] <= 1.0
    with np.load(tmp_path / "sim.npz", allow_pickle=False) as z:
        assert z["output"].shape == (4, 50, 10)
        assert np.array_equal(z["output"], z["output"])  # keyed both by node name and "output"
        assert "counts/conv2/synaptic_ops" in z.files and z["counts/conv2/synaptic_ops"].shape == (4,)
        assert float(z["accuracy"]) == pytest.approx(summary["accuracy"])
    # --input with an array of the wrong shape is an input error, and writes nothing
    np.save(tmp_path / "bad.npy", np.zeros((4, 2, 3), np.float32))
    code, _, err = run("simulate", tmp_path / "g.nir", "--input", tmp_path / "bad.npy", "--out", tmp_path / "x.npz")
    assert_one_line_error(code, err)
    assert not (tmp_path / "x.npz").exists()
    # --input with a good time-major array
    np.save(tmp_path / "x.npy", (np.random.default_rng(0).random((4, 3, 1, 8, 8)) > 0.5))
    code, out, err = run("simulate", tmp_path / "g.nir", "--input", tmp_path / "x.npy", "--out", tmp_path / "y.npz")
    assert code == 0, err
    code, out, err = run("inspect", tmp_path / "g.nir")
    assert code == 0, err
    assert "conv1_if" in out and "IF" in out and "eventsim: runs this graph" in out
    code, out, err = run("inspect", ckpt)
    assert code == 0 and "snn2ann" in out


def test_pickle_npy_is_refused(tmp_path):
    ckpt = trained_checkpoint()
    code, _, err = run("export", ckpt, "--out", tmp_path / "g.nir")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, _, err = run("simulate", tmp_path / "g.nir", "--input", tmp_path / "obj.npy", "--out", tmp_path / "o.npz")
    assert_one_line_error(code, err)


HARDWARE_FORBIDDEN = ("torch", "models", "toolchain", "exporters", "lava")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods.add(node.module.split(".")[0])
    return mods


def test_one_way_imports():
    """hardware never imports torch, models, exporters or toolchain; lava only in the worker;
    models and exporters never import toolchain."""
    bad = []
    for f in (REPO / "hardware").rglob("*.py"):
        allowed_lava = f.name == "worker.py" and f.parent.name == "lava"
        for m in _imports(f) & set(HARDWARE_FORBIDDEN):
            if m == "lava" and allowed_lava:
                continue
            bad.append(f"{f.relative_to(REPO)} imports {m}")
    for pkg in ("models", "exporters"):
        for f in (REPO / pkg).rglob("*.py"):
            if "toolchain" in _imports(f):
                bad.append(f"{f.relative_to(REPO)} imports toolchain")
    assert not bad, bad
    # and at run time: importing the hardware side loads neither torch nor lava
    code = ("import sys, spikebridge.hardware.graph, spikebridge.hardware.eventsim, spikebridge.hardware.lava, spikebridge.hardware.energy, spikebridge.hardware.latency; "
            "bad=[m for m in ('torch','lava','models') if m in sys.modules]; assert not bad, bad")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("method", ["snn2ann", "bptt"])
def test_train_limit_train_and_limit_test_reach_snn2ann_and_bptt(tmp_path, method):
    out = tmp_path / method
    code, stdout, err = run("train", "--method", method, "--arch", "mlp", "--dataset", "digits", "--timesteps", "2",
                            "--epochs", "1", "--limit-train", "64", "--limit-test", "37", "--out", out)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["test_samples"] == 37
    assert json.loads(stdout.strip().splitlines()[-1])["test_samples"] == 37


def test_train_schedule_step_and_cosine_and_resume_refuses_a_switch(tmp_path):
    import math
    lrs = {}
    for schedule in ("step", "cosine"):
        out = tmp_path / schedule
        code, _, err = run("train", "--method", "snn2ann", "--arch", "mlp", "--dataset", "digits", "--timesteps", "2",
                           "--epochs", "4", "--limit-train", "64", "--limit-test", "16", "--schedule", schedule,
                           "--out", out)
        assert code == 0, err
        lrs[schedule] = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the lr in effect after each epoch's scheduler step
    assert lrs["step"] == pytest.approx([1e-3, 1e-4, 1e-5, 1e-6])  # x0.1 at epochs 2, 3, 4 (50/75/87.5% of 4)
    assert lrs["cosine"] == pytest.approx([1e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in (1, 2, 3, 4)])
    code, _, err = run("train", "--method", "snn2ann", "--arch", "mlp", "--dataset", "digits", "--timesteps", "2",
                       "--epochs", "5", "--limit-train", "64", "--limit-test", "16", "--schedule", "cosine",
                       "--resume", "--out", tmp_path / "step")
    assert_one_line_error(code, err)
    assert "--schedule" in err
