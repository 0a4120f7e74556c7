"""Process hygiene of the Lava backend: signals to the CLI / a parent with an idle
persistent worker, worker crashes, and leaks over many runs in one process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nir
import numpy as np
import pytest

from spikebridge.hardware.lava import run_lava
from spikebridge.hardware.lava import supervisor as sv
from spikebridge.hardware.lava.supervisor import _group_pids, _shm_of
from test_lava import _live, _worker_pids_under, dense_if_graph

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.lava


def _graph_files(tmp_path):
    g, _ = dense_if_graph(np.random.default_rng(0))
    g.metadata = {"spikebridge": {"format_version": 1, "dt": 1.0, "timesteps": 3, "encoding": "direct",
                                  "readout": "sum"}}
    path = tmp_path / "g.nir"
    nir.write(str(path), g)
    np.save(tmp_path / "x.npy", np.zeros((3, 2, 12)))
    return path, tmp_path / "x.npy"


def _wait_for_runtime(parent, deadline_s=90.0):
    """The worker pid and the shm it holds, once Lava's runtime processes are up."""
    shm: set[str] = set()
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        ws = _worker_pids_under(parent.pid)
        if ws:
            group = _group_pids(ws[0])
            shm |= _shm_of(group)
            if len(group) >= 3 and shm:
                time.sleep(0.3)
                return ws[0], shm | _shm_of(_group_pids(ws[0]))
        assert parent.poll() is None, parent.communicate()
        time.sleep(0.2)
    raise AssertionError("the Lava worker never started its runtime")


def _assert_clean(worker, shm_seen):
    end = time.monotonic() + 15
    while _live(_group_pids(worker)) and time.monotonic() < end:
        time.sleep(0.1)
    assert _live(_group_pids(worker)) == [], "Lava worker processes survived"
    assert all(not os.path.exists(p) for p in shm_seen), "shared memory of the worker leaked"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_signal_to_cli_mid_job_cleans_up(tmp_path, sig):
    """The CLI killed while its Lava job runs: SIGINT/SIGTERM unwind (exit 130, "interrupted"),
    SIGKILL leaves the cleanup to the worker's parent watchdog; never a process, a segment
    or a partial output file left."""
    g, x = _graph_files(tmp_path)
    out = tmp_path / "out.npz"
    env = dict(os.environ, SPIKEBRIDGE_LAVA_TEST_HANG_S="60")
    parent = subprocess.Popen([sys.executable, "-m", "spikebridge", "--no-progress", "simulate", str(g), "--input",
                               str(x), "--backend", "lava", "--out", str(out)], env=env, cwd=str(REPO),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, text=True)
    try:
        worker, shm = _wait_for_runtime(parent)
        parent.send_signal(sig)
        _, err = parent.communicate(timeout=30)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
    if sig == signal.SIGKILL:
        assert parent.returncode == -signal.SIGKILL
    else:
        assert parent.returncode == 130, err
        assert err.strip().splitlines()[-1] == "error: interrupted", err
    assert not out.exists() and not list(tmp_path.glob("out*"))
    _assert_clean(worker, shm)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_signal_to_parent_with_idle_persistent_worker(sig):
    """After a job the persistent worker waits for the next one; whatever kills the parent
    (SIGINT -> atexit, SIGTERM default action / SIGKILL -> the worker's parent watchdog),
    no worker process and no shared-memory segment remains."""
    script = textwrap.dedent(f"""
        import sys, time, numpy as np
        sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_lava import dense_if_graph
        from spikebridge.hardware.lava import run_lava
        from spikebridge.hardware.lava.supervisor import persistent_worker_pid
        g, _ = dense_if_graph(np.random.default_rng(0))
        run_lava(g, np.zeros((3, 2, 12)), timeout_s=120)
        print("idle", persistent_worker_pid(), flush=True)
        time.sleep(120)
    """)
    env = {k: v for k, v in os.environ.items() if k != "SPIKEBRIDGE_LAVA_PERSISTENT"}
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, start_new_session=True, text=True)
    try:
        line = parent.stdout.readline().split()
        assert line and line[0] == "idle", parent.communicate(timeout=5)
        worker = int(line[1])
        assert worker in _worker_pids_under(parent.pid)
        group = _group_pids(worker)
        shm = _shm_of(group)
        parent.send_signal(sig)
        parent.wait(timeout=30)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
    _assert_clean(worker, shm)


def test_worker_crash_is_exit_4_with_last_error_line(tmp_path):
    g, x = _graph_files(tmp_path)
    for persistent in ("1", "0"):
        env = dict(os.environ, SPIKEBRIDGE_LAVA_TEST_FAIL="crash", SPIKEBRIDGE_LAVA_PERSISTENT=persistent)
        r = subprocess.run([sys.executable, "-m", "spikebridge", "--no-progress", "simulate", str(g), "--input",
                            str(x), "--backend", "lava", "--out", str(tmp_path / "o.npz")], env=env,
                           cwd=str(REPO), capture_output=True, text=True, timeout=300)
        assert r.returncode == 4, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error: Lava worker failed") and "injected crash" in last, last
        assert not (tmp_path / "o.npz").exists()


def _fds():
    return len(os.listdir("/proc/self/fd"))


def test_fifty_runs_leak_nothing(monkeypatch):
    """50 consecutive Lava runs in one process (the persistent worker, which keeps the
    compiled network running between jobs of the same plan), then 6 runs alternating two
    plans (each one stops the kept network and builds another): no growth in this
    process's file descriptors or in the worker group's live processes; every shared-memory
    segment seen is either held by the kept network or gone; nothing is left at shutdown."""
    monkeypatch.delenv("SPIKEBRIDGE_LAVA_PERSISTENT", raising=False)
    g, _ = dense_if_graph(np.random.default_rng(5))
    g2, _ = dense_if_graph(np.random.default_rng(8), nh=9)
    x = np.random.default_rng(6).uniform(0, 1, size=(2, 12))
    first = run_lava(g, x, timesteps=3)
    worker = sv.persistent_worker_pid()
    fds0 = _fds()
    group0 = len(_live(_group_pids(worker)))
    t0 = time.perf_counter()
    for _ in range(50):
        tr = run_lava(g, x, timesteps=3)
        np.testing.assert_array_equal(tr.spikes["if1"], first.spikes["if1"])
        np.testing.assert_array_equal(tr.outputs["output"], first.outputs["output"])
    per_job = (time.perf_counter() - t0) / 50
    worker_s = tr.meta["worker"]["chunks"][0]
    for i in range(6):
        run_lava(g2 if i % 2 == 0 else g, x, timesteps=3)
    assert sv.persistent_worker_pid() == worker  # one worker took all 57 jobs
    assert _fds() <= fds0
    assert len(_live(_group_pids(worker))) <= group0
    held = _shm_of(_group_pids(worker))
    seen = set(sv._POOL.shm)  # segments the worker's group mapped while running jobs
    assert seen, "the test never saw Lava's shared memory"
    assert [p for p in seen - held if os.path.exists(p)] == [], "shared memory left behind by stopped networks"
    print(f"persistent worker, same plan: {per_job * 1e3:.1f} ms per run_lava call "
          f"(worker: run {worker_s['run_s'] * 1e3:.1f} ms for {worker_s['steps']} steps)")
    sv.shutdown_worker()
    assert _live(_group_pids(worker)) == []
    assert [p for p in seen | held if os.path.exists(p)] == []
