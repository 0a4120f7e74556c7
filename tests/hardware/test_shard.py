"""Sharded simulation: `simulate --workers N` (local processes) and `--cluster ADDRESS` (a Dask
LocalCluster of 2 worker processes, as CI runs it) give results identical to one process;
a killed worker is retried, or the run fails with exit code 4 and leaves no output."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # starts processes and trains small models


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    from spikebridge.exporters.nir_export import checkpoint_to_nir, write_nir
    from spikebridge.models.train import TrainConfig, train
    d = tmp_path_factory.mktemp("shard")
    train(TrainConfig(arch="mlp", dataset="digits", epochs=2, timesteps=4, limit_train=384, limit_test=10,
                      device="cpu"), d / "ckpt", progress=False)
    write_nir(checkpoint_to_nir(d / "ckpt"), d / "graph.nir")
    return d / "graph.nir"


def _simulate(graph, out, *extra, capsys=None):
    from spikebridge.toolchain.cli import main
    code = main(["--no-progress", "simulate", str(graph), "--dataset", "digits", "--limit", "150",
                 "--batch-size", "32", "--out", str(out), *extra])
    cap = capsys.readouterr() if capsys else None
    return code, (json.loads(cap.out.strip().splitlines()[-1]) if cap and code == 0 else cap)


def _same_npz(a, b):
    with np.load(a) as za, np.load(b) as zb:
        assert sorted(za.files) == sorted(zb.files)
        for k in za.files:
            assert np.array_equal(za[k], zb[k]), k


KEYS = ("accuracy", "samples", "synaptic_ops_per_sample", "spikes_per_sample", "macs_per_sample")


@pytest.fixture(scope="module")
def reference(graph, tmp_path_factory):
    from spikebridge.toolchain.cli import main
    out = tmp_path_factory.mktemp("ref") / "one.npz"
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["--no-progress", "simulate", str(graph), "--dataset", "digits", "--limit", "150",
                     "--batch-size", "32", "--out", str(out)]) == 0
    return out, json.loads(buf.getvalue().strip().splitlines()[-1])


def test_workers_give_identical_results_even_when_a_worker_is_killed(graph, reference, tmp_path, capsys,
                                                                     monkeypatch):
    ref_npz, ref = reference
    code, s = _simulate(graph, tmp_path / "w2.npz", "--workers", "2", capsys=capsys)
    assert code == 0 and s["workers"] == 2 and s["shards"] == 2
    assert {k: s[k] for k in KEYS} == {k: ref[k] for k in KEYS}
    _same_npz(ref_npz, tmp_path / "w2.npz")
    # shard 1's worker is SIGKILLed once: the shard is rerun, nothing is lost or counted twice
    kills = tmp_path / "kills"
    kills.mkdir()
    monkeypatch.setenv("SPIKEBRIDGE_TEST_KILL_SHARD", f"1:1:{kills}")
    code, s = _simulate(graph, tmp_path / "killed.npz", "--workers", "2", capsys=capsys)
    assert code == 0 and len(list(kills.iterdir())) == 1
    assert {k: s[k] for k in KEYS} == {k: ref[k] for k in KEYS}
    _same_npz(ref_npz, tmp_path / "killed.npz")


def test_a_worker_that_keeps_dying_is_exit_4_and_no_output(graph, tmp_path, capsys, monkeypatch):
    kills = tmp_path / "kills"
    kills.mkdir()
    monkeypatch.setenv("SPIKEBRIDGE_TEST_KILL_SHARD", f"0:99:{kills}")
    code, cap = _simulate(graph, tmp_path / "x.npz", "--workers", "3", "--retries", "1", capsys=capsys)
    assert code == 4
    line = cap.err.strip().splitlines()
    assert len(line) == 1 and line[0].startswith("error: simulate worker for shard 0 (samples 0..") \
        and "SIGKILL" in line[0] and "2 attempts" in line[0], cap.err
    assert len(list(kills.iterdir())) == 2  # first try + one retry
    assert not (tmp_path / "x.npz").exists() and not list(tmp_path.glob(".*tmp"))


def test_bad_sharding_options_are_input_errors(graph, tmp_path, capsys):
    assert _simulate(graph, tmp_path / "x.npz", "--workers", "0", capsys=capsys)[0] == 3
    assert _simulate(graph, tmp_path / "x.npz", "--workers", "2", "--backend", "lava", capsys=capsys)[0] == 3
    assert _simulate(graph, tmp_path / "x.npz", "--batch-size", "0", capsys=capsys)[0] == 3
    # an unreachable scheduler is a backend failure, reported in one line
    import os
    os.environ["SPIKEBRIDGE_CLUSTER_TIMEOUT"] = "3"
    try:
        code, cap = _simulate(graph, tmp_path / "x.npz", "--cluster", "tcp://127.0.0.1:9", capsys=capsys)
    finally:
        del os.environ["SPIKEBRIDGE_CLUSTER_TIMEOUT"]
    assert code == 4 and cap.err.startswith("error: cannot connect to the Dask scheduler"), cap.err
    assert not (tmp_path / "x.npz").exists()


def test_dask_local_cluster_of_two_workers_matches_one_process(graph, reference, tmp_path, capsys, monkeypatch):
    """The `cluster` extra is part of the test extra: CI runs this (no skip)."""
    from dask.distributed import LocalCluster

    ref_npz, ref = reference
    kills = tmp_path / "kills"
    kills.mkdir()
    # set before the cluster starts: its worker processes inherit it; shard 2's worker dies once
    monkeypatch.setenv("SPIKEBRIDGE_TEST_KILL_SHARD", f"2:1:{kills}")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=50) as cluster:
        code, s = _simulate(graph, tmp_path / "dask.npz", "--cluster", cluster.scheduler_address,
                            "--workers", "3", capsys=capsys)
    assert code == 0, s
    assert s["shards"] == 3 and len(list(kills.iterdir())) == 1
    assert {k: s[k] for k in KEYS} == {k: ref[k] for k in KEYS}
    _same_npz(ref_npz, tmp_path / "dask.npz")


def test_the_shard_worker_does_not_import_torch():
    code = ("import sys, spikebridge.hardware.shard, spikebridge.hardware.backends, spikebridge.hardware.eventsim; "
            "bad = [m for m in ('torch', 'models') if m in sys.modules]; assert not bad, bad")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
