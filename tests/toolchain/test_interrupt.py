"""SIGKILL at random moments: every output path is absent, the old version, or a complete
new file that parses; an older version is never destroyed. Training killed mid-run and
resumed with ``--resume`` ends with the same weights as an uninterrupted run (CPU, seed).

Random moments are drawn (seeded) over the measured length of an uninterrupted run, biased
towards its end where the outputs are written.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
KILLS = int(os.environ.get("SPIKEBRIDGE_KILLS", "4"))  # more: SPIKEBRIDGE_KILLS=50


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TQDM_DISABLE="1")


def _start(argv):
    return subprocess.Popen([sys.executable, "-m", "spikebridge", "--no-progress", *map(str, argv)], cwd=REPO,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _run(argv, timeout=900):
    p = _start(argv)
    _, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err.decode()[-2000:]


def _kill_at(argv, delay: float) -> int:
    p = _start(argv)
    try:
        p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    return p.returncode


def _timed(argv) -> float:
    t0 = time.monotonic()
    _run(argv)
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two valid (untrained) checkpoints that export to different graphs."""
    import torch
    from tests.hostile.make_corpus import write_base_checkpoint

    d = tmp_path_factory.mktemp("ckpts")
    write_base_checkpoint(d / "a")
    torch.manual_seed(123)
    from spikebridge.models.architectures import build_spec
    from spikebridge.models.checkpoint import read_meta, save_checkpoint
    from spikebridge.models.snn2ann import SNN2ANNNet
    meta = read_meta(d / "a")
    model = SNN2ANNNet(build_spec("mlp", (1, 8, 8), 10), (1, 8, 8), 4)
    save_checkpoint(d / "b", model.state_dict(), {k: v for k, v in meta.items() if k not in ("format", "format_version")})
    return d / "a", d / "b"


def _parse_nir(p: Path):
    from spikebridge.hardware.graph import analyse, load_graph
    analyse(load_graph(p), file=str(p))


def _parse_onnx(p: Path):
    import onnx
    onnx.checker.check_model(onnx.load(str(p)))


def _parse_npz(p: Path):
    with np.load(p, allow_pickle=False) as z:
        assert "output" in z.files
        _ = [z[k] for k in z.files]


@pytest.mark.parametrize("fmt", ["nir", "onnx"])
def test_export_killed_at_random_moments(tmp_path, ckpts, fmt):
    a, b = ckpts
    out = tmp_path / f"out.{fmt}"
    _run(["export", b, "--format", fmt, "--out", out])  # the older version: another checkpoint
    old = out.read_bytes()
    fresh = tmp_path / f"fresh.{fmt}"
    length = _timed(["export", a, "--format", fmt, "--out", fresh])
    parse = _parse_nir if fmt == "nir" else _parse_onnx
    rng = random.Random(fmt)
    outcomes = set()
    for _ in range(KILLS):
        _kill_at(["export", a, "--format", fmt, "--out", out], length * rng.uniform(0.3, 1.1))
        assert out.exists(), "the older version was destroyed"
        data = out.read_bytes()
        if data == old:
            outcomes.add("old")
            continue
        parse(out)  # complete and parseable
        outcomes.add("new")
        out.write_bytes(old)  # back to the older version for the next kill
    stray = [p.name for p in tmp_path.iterdir() if p.name not in (out.name, fresh.name) and not p.name.endswith(".tmp")]
    assert not stray, stray


def test_simulate_killed_at_random_moments(tmp_path, ckpts):
    a, b = ckpts
    g_old, g_new = tmp_path / "old.nir", tmp_path / "new.nir"
    _run(["export", b, "--out", g_old])
    _run(["export", a, "--out", g_new])
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random((4, 64, 1, 8, 8), dtype=np.float32))
    out = tmp_path / "sim.npz"
    _run(["simulate", g_old, "--input", x, "--out", out])
    old = out.read_bytes()
    length = _timed(["simulate", g_new, "--input", x, "--out", tmp_path / "fresh.npz"])
    rng = random.Random(1)
    for _ in range(KILLS):
        _kill_at(["simulate", g_new, "--input", x, "--out", out], length * rng.uniform(0.3, 1.1))
        assert out.exists(), "the older version was destroyed"
        if out.read_bytes() != old:
            _parse_npz(out)
            out.write_bytes(old)


def _tensors(d: Path) -> dict:
    from safetensors.numpy import load_file
    return load_file(str(d / "weights.safetensors"))


def _check_checkpoint_files(d: Path) -> None:
    """Whatever exists in a killed run's directory parses."""
    from spikebridge.models.checkpoint import load_train_state, read_meta
    if (d / "model.json").exists():
        read_meta(d)
    if (d / "weights.safetensors").exists():
        _tensors(d)
    if (d / "train_state.pt").exists():
        load_train_state(d / "train_state.pt")
    if (d / "metrics.jsonl").exists():
        for line in (d / "metrics.jsonl").read_text().splitlines():
            json.loads(line)


def test_training_killed_and_resumed_matches_an_uninterrupted_run(tmp_path):
    args = ["train", "--method", "snn2ann", "--arch", "mlp", "--dataset", "digits", "--timesteps", "2",
            "--epochs", "3", "--batch-size", "128", "--device", "cpu", "--seed", "3"]
    ref = tmp_path / "ref"
    _run([*args, "--out", ref])
    run = tmp_path / "run"
    p = _start([*args, "--out", run])
    # kill once the first epoch is on disk, at a random moment of the second or third epoch
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and p.poll() is None:
        m = run / "metrics.jsonl"
        if m.exists() and m.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    time.sleep(random.Random(7).uniform(0.0, 2.0))
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    _check_checkpoint_files(run)
    done = json.loads((run / "model.json").read_text())["metrics"]["epoch"]
    _run([*args, "--resume", "--out", run])
    a, b = _tensors(ref), _tensors(run)
    assert sorted(a) == sorted(b)
    diff = {k: float(np.abs(a[k] - b[k]).max()) for k in a if not np.array_equal(a[k], b[k])}
    assert not diff, f"killed after epoch {done}, resumed: weights differ from the uninterrupted run: {diff}"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
