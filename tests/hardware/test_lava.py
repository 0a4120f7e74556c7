"""The Lava backend against an independent numpy reference, with real Lava processes.

Tolerance (documented): Lava float runs in float64 like the reference, but the folded
weights (row-scaled by r/theta) sum in another order, so values can differ in the last
bits. Outputs must agree to rtol = atol = 1e-9; a spike may differ only where the
reference membrane is within 1e-9 * max(1, theta) of the threshold at the first differing
step (the sample is not compared after that step, its states have diverged).
"""
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

import spikebridge.hardware.lava as hl
from spikebridge.base.errors import BackendError, UnsupportedError
from spikebridge.hardware.lava import lava_status, run_lava
from spikebridge.hardware.loihi import runner
from spikebridge.hardware.loihi.plan import conv2d_coo, lower
from spikebridge.hardware.lava.supervisor import _group_pids, _shm_of, run_job

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-9


# ----------------------------------------------------------------------------- reference


def conv_ref(x, w, b, stride, pad, groups=1):
    """Direct loop cross-correlation, x (B, C, H, W)."""
    B, C, H, W = x.shape
    co, cig, kh, kw = w.shape
    xp = np.zeros((B, C, H + 2 * pad, W + 2 * pad))
    xp[:, :, pad:pad + H, pad:pad + W] = x
    ho = (H + 2 * pad - kh) // stride + 1
    wo = (W + 2 * pad - kw) // stride + 1
    y = np.zeros((B, co, ho, wo))
    opg = co // groups
    for o in range(co):
        g = o // opg
        for i in range(ho):
            for j in range(wo):
                patch = xp[:, g * cig:(g + 1) * cig, i * stride:i * stride + kh, j * stride:j * stride + kw]
                y[:, o, i, j] = (patch * w[o]).sum(axis=(1, 2, 3)) + b[o]
    return y


def run_ref(layers, x):
    """x (T, B, *shape). layers: list of (kind, params). Returns outputs, spikes, membranes."""
    T, B = x.shape[:2]
    spikes, vmem, out = {}, {}, []
    state = {}
    for t in range(T):
        h = x[t]
        for li, (kind, p) in enumerate(layers):
            if kind == "affine":
                h = h.reshape(B, -1) @ p["w"].T + p["b"]
            elif kind == "conv":
                h = conv_ref(h, p["w"], p["b"], p["stride"], p["pad"], p.get("groups", 1))
            elif kind == "sumpool":
                k = p["k"]
                h = h.reshape(B, h.shape[1], h.shape[2] // k, k, h.shape[3] // k, k).sum(axis=(3, 5))
            elif kind == "flatten":
                h = h.reshape(B, -1)
            elif kind in ("if", "lif"):
                v = state.get(li)
                if v is None:
                    v = np.broadcast_to(p.get("v_init", 0.0), h.shape).astype(float).copy()
                if kind == "if":
                    v = v + h
                else:
                    v = v + p["dv"] * (p.get("v_leak", 0.0) - v + h)
                vmem.setdefault(li, []).append(v.copy())
                s = v > p["theta"]
                v = np.where(s, 0.0, v)
                state[li] = v
                spikes.setdefault(li, []).append(s)
                h = s.astype(float)
        out.append(h)
    return (np.array(out), {k: np.array(v) for k, v in spikes.items()},
            {k: np.array(v) for k, v in vmem.items()})


def assert_close_to_ref(trace, ref_out, ref_spk, ref_v, layers, names, out_name="output"):
    """Spikes equal except at near-threshold membranes; outputs close where spikes agree."""
    B = trace.batch
    good = np.ones(B, bool)
    first_bad = np.full(B, trace.timesteps)
    for li, name in names.items():
        got = trace.spikes[name]
        want = ref_spk[li]
        assert got.shape == want.shape, (name, got.shape, want.shape)
        theta = np.broadcast_to(layers[li][1]["theta"], want.shape[2:])
        diff = got != want
        for b in range(B):
            ts = np.nonzero(diff[:, b].reshape(diff.shape[0], -1).any(axis=1))[0]
            if ts.size == 0:
                continue
            t = ts[0]
            near = np.abs(ref_v[li][t, b] - theta) <= TOL * np.maximum(1, np.abs(theta))
            assert np.all(near[diff[t, b]]), f"{name}: spike mismatch away from threshold (t={t}, b={b})"
            good[b] = False
            first_bad[b] = min(first_bad[b], t)
    got = trace.outputs[out_name]
    assert got.shape == ref_out.shape
    for b in range(B):
        t = first_bad[b]
        np.testing.assert_allclose(got[:t, b], ref_out[:t, b], rtol=TOL, atol=TOL)
    return good


# ----------------------------------------------------------------------------- graphs


def dense_if_graph(rng, nin=12, nh=10, no=4, lif=False):
    w1 = rng.normal(size=(nh, nin)) * 0.6
    b1 = rng.normal(size=nh) * 0.1
    th = rng.uniform(0.5, 1.5, size=nh)
    w2 = rng.normal(size=(no, nh))
    b2 = rng.normal(size=no) * 0.1
    neuron = nir.IF(r=np.ones(nh), v_threshold=th)
    layers = [("affine", {"w": w1, "b": b1}), ("if", {"theta": th}), ("affine", {"w": w2, "b": b2})]
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([nin])), "fc1": nir.Affine(w1, b1),
                            "if1": neuron, "fc2": nir.Affine(w2, b2), "output": nir.Output(np.array([no]))},
                     edges=[("input", "fc1"), ("fc1", "if1"), ("if1", "fc2"), ("fc2", "output")])
    return g, layers


def conv_graph(rng):
    w1 = rng.normal(size=(4, 1, 3, 3)) * 0.7
    b1 = rng.normal(size=4) * 0.05
    th1 = rng.uniform(0.5, 1.2, size=(4, 4, 4))
    w2 = rng.normal(size=(4, 2, 3, 3)) * 0.8  # groups=2
    b2 = rng.normal(size=4) * 0.05
    th2 = rng.uniform(0.4, 1.0, size=(4, 4, 4))
    w3 = rng.normal(size=(5, 16))
    b3 = rng.normal(size=5) * 0.1
    nodes = {
        "input": nir.Input(np.array([1, 8, 8])),
        "conv1": nir.Conv2d(input_shape=(8, 8), weight=w1, stride=2, padding=1, dilation=1, groups=1, bias=b1),
        "if1": nir.IF(r=np.ones((4, 4, 4)), v_threshold=th1),
        "conv2": nir.Conv2d(input_shape=(4, 4), weight=w2, stride=1, padding=1, dilation=1, groups=2, bias=b2),
        "if2": nir.IF(r=np.ones((4, 4, 4)), v_threshold=th2),
        "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([4, 2, 2])}, start_dim=0, end_dim=-1),
        "fc": nir.Affine(w3, b3),
        "output": nir.Output(np.array([5])),
    }
    order = list(nodes)
    g = nir.NIRGraph(nodes=nodes, edges=list(zip(order[:-1], order[1:])), type_check=False)
    layers = [("conv", {"w": w1, "b": b1, "stride": 2, "pad": 1}), ("if", {"theta": th1}),
              ("conv", {"w": w2, "b": b2, "stride": 1, "pad": 1, "groups": 2}), ("if", {"theta": th2}),
              ("sumpool", {"k": 2}), ("flatten", {}), ("affine", {"w": w3, "b": b3})]
    return g, layers


def lif_vinit_graph(rng, nin=6, nh=7, no=3):
    w1 = rng.normal(size=(nh, nin))
    b1 = rng.normal(size=nh) * 0.2
    th = rng.uniform(0.5, 1.5, size=nh)
    v0 = th * 0.5
    w2 = rng.normal(size=(nh, nh)) * 0.7
    th2 = rng.uniform(0.5, 1.0, size=nh)
    w3 = rng.normal(size=(no, nh))
    tau, leak = 4.0, 0.1
    lif = nir.LIF(tau=np.full(nh, tau), r=np.ones(nh), v_leak=np.full(nh, leak), v_threshold=th,
                  metadata={"spikebridge": {"v_init": v0}})
    if2 = nir.IF(r=np.ones(nh), v_threshold=th2, metadata={"spikebridge": {"v_init": 0.5 * th2}})
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([nin])), "fc1": nir.Affine(w1, b1), "lif1": lif,
                            "fc2": nir.Linear(w2), "if2": if2, "fc3": nir.Linear(w3),
                            "output": nir.Output(np.array([no]))},
                     edges=[("input", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "if2"),
                            ("if2", "fc3"), ("fc3", "output")])
    layers = [("affine", {"w": w1, "b": b1}), ("lif", {"theta": th, "dv": 1 / tau, "v_leak": leak, "v_init": v0}),
              ("affine", {"w": w2, "b": np.zeros(nh)}), ("if", {"theta": th2, "v_init": 0.5 * th2}),
              ("affine", {"w": w3, "b": np.zeros(no)})]
    return g, layers


# ----------------------------------------------------------------------------- numpy-only tests


def test_conv_unrolling_matches_loop_reference():
    rng = np.random.default_rng(1)
    for stride, pad, groups in [(2, 1, 1), (1, 0, 1), (1, 1, 2), (3, 2, 2)]:
        w = rng.normal(size=(4, 4 // groups, 3, 3))
        x = rng.normal(size=(2, 4, 7, 6))
        m, out = conv2d_coo(w, (4, 7, 6), stride, pad, 1, groups)
        want = conv_ref(x, w, np.zeros(4), stride, pad, groups)
        assert out == want.shape[1:]
        got = m.matvec(x.reshape(2, -1).T).T.reshape(want.shape)
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_subtract_reset_is_unsupported_unless_allowed():
    rng = np.random.default_rng(2)
    g, _ = dense_if_graph(rng)
    g.nodes["if1"].metadata = {"spikebridge": {"reset": "subtract"}}
    with pytest.raises(UnsupportedError, match="subtractive"):
        run_lava(g, np.zeros((3, 2, 12)))
    plan = lower(g, 3, allow_reset_to_zero=True)
    assert plan.meta["populations"][0]["reset"] == "subtract"


def test_all_problems_listed_at_once():
    nh = 4
    g = nir.NIRGraph(nodes={
        "input": nir.Input(np.array([3])), "fc": nir.Affine(np.ones((nh, 3)), np.zeros(nh)),
        "a": nir.IF(r=np.ones(nh), v_threshold=np.ones(nh),
                    metadata={"spikebridge": {"reset": "subtract", "threshold_test": "ge"}}),
        "fc2": nir.Linear(np.ones((nh, nh))),
        "c": nir.CubaLIF(tau_syn=np.array([2.0, 3.0, 2.0, 2.0]), tau_mem=np.ones(nh) * 2, r=np.ones(nh),
                         v_leak=np.zeros(nh), v_threshold=np.ones(nh)),  # Lava's du is a scalar
        "output": nir.Output(np.array([nh])),
        "fc3": nir.Linear(np.ones((nh, 3))), "output3": nir.Output(np.array([nh]))},
        edges=[("input", "fc"), ("fc", "a"), ("a", "fc2"), ("fc2", "output"),
               ("input", "fc3"), ("fc3", "c"), ("c", "output3")], type_check=False)
    with pytest.raises(UnsupportedError) as e:
        lower(g, 4)
    msg = str(e.value)
    assert "c: tau_syn must be positive and the same for every neuron" in msg
    assert "subtractive" in msg and "\n" not in msg
    for k in ("c", "fc3", "output3"):
        g.nodes.pop(k)
    g.nodes["output2"] = nir.Output(np.array([nh]))
    g2 = nir.NIRGraph(nodes={k: v for k, v in g.nodes.items() if k != "output"},
                      edges=[("input", "fc"), ("fc", "a"), ("a", "fc2"), ("fc2", "output2")], type_check=False)
    with pytest.raises(UnsupportedError) as e:
        lower(g2, 4)
    assert "subtractive" in str(e.value) and "'ge'" in str(e.value)


def test_missing_venv_is_backend_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SPIKEBRIDGE_LAVA_VENV", str(tmp_path / "nope"))
    rng = np.random.default_rng(3)
    g, _ = dense_if_graph(rng)
    with pytest.raises(BackendError, match="make setup"):
        run_lava(g, np.zeros((2, 1, 12)))
    st = lava_status()
    assert st["lava_importable"] is False and "make setup" in st["fix"]


# ----------------------------------------------------------------------------- Lava


@pytest.mark.lava
def test_lava_status():
    st = lava_status()
    assert st["lava_importable"], st
    assert st["lava_version"] == "0.10.0"
    assert st["python_version"].startswith("3.10")


@pytest.mark.lava
def test_dense_if_matches_reference():
    rng = np.random.default_rng(10)
    g, layers = dense_if_graph(rng)
    T, B = 12, 6
    x = rng.uniform(0, 1, size=(B, 12))
    tr = run_lava(g, x, timesteps=T)
    out, spk, v = run_ref(layers, np.broadcast_to(x, (T, B, 12)))
    good = assert_close_to_ref(tr, out, spk, v, layers, {1: "if1"})
    assert good.sum() >= B - 1
    assert tr.backend == "lava" and tr.meta["lava_delay_steps"] == {"if1": 1, "output": 2}
    assert spk[1].sum() > 0  # the test means something
    # counts: same definition as the simulator (closed form here)
    fan1 = (np.asarray(g.nodes["fc1"].weight) != 0).sum(axis=0)
    assert tr.counts["fc1"]["macs"].sum() == int(((x != 0) * fan1).sum() * T)
    assert tr.counts["if1"]["spikes"].sum() == int(tr.spikes["if1"].sum())


@pytest.mark.lava
def test_dense_if_matches_eventsim_when_present():
    sim = pytest.importorskip("spikebridge.hardware.eventsim")
    rng = np.random.default_rng(11)
    g, layers = dense_if_graph(rng)
    T, B = 10, 4
    x = np.broadcast_to(rng.uniform(0, 1, size=(B, 12)), (T, B, 12)).copy()
    tr = run_lava(g, x)
    ref = sim.simulate(g, x)
    out, spk, v = run_ref(layers, x)
    np.testing.assert_allclose(ref.outputs["output"], out, atol=1e-12)  # reference sanity
    if np.array_equal(ref.spikes["if1"], tr.spikes["if1"]):
        np.testing.assert_allclose(tr.outputs["output"], ref.outputs["output"], rtol=TOL, atol=TOL)
        for n in ref.counts:
            for k in ref.counts[n]:
                np.testing.assert_array_equal(tr.counts[n][k], ref.counts[n][k], err_msg=f"{n}/{k}")


@pytest.mark.lava
def test_conv_graph_matches_reference(monkeypatch):
    monkeypatch.setattr(runner, "DENSE_MAX_ELEMENTS", 0)  # unrolled convs go through lava Sparse
    rng = np.random.default_rng(12)
    g, layers = conv_graph(rng)
    T, B = 8, 4
    x = rng.uniform(0, 1, size=(B, 1, 8, 8))
    tr = run_lava(g, x, timesteps=T)
    chunks = tr.meta["worker"]["chunks"]
    assert chunks[0]["sparse"] >= 2
    out, spk, v = run_ref(layers, np.broadcast_to(x, (T,) + x.shape))
    good = assert_close_to_ref(tr, out, spk, v, layers, {1: "if1", 3: "if2"})
    assert good.sum() >= B - 1
    assert spk[3].sum() > 0
    assert tr.meta["lava_delay_steps"] == {"if1": 1, "if2": 2, "output": 3}


@pytest.mark.lava
def test_batch_equals_single_runs_and_chunks(monkeypatch):
    rng = np.random.default_rng(13)
    g, layers = lif_vinit_graph(rng)
    T, B = 6, 4
    x = rng.uniform(-1, 1.5, size=(T, B, 6))
    tr = run_lava(g, x)
    out, spk, v = run_ref(layers, x)
    assert_close_to_ref(tr, out, spk, v, layers, {1: "lif1", 3: "if2"})
    for b in (0, 3):
        one = run_lava(g, x[:, b:b + 1])
        np.testing.assert_array_equal(one.outputs["output"][:, 0], tr.outputs["output"][:, b])
        np.testing.assert_array_equal(one.spikes["lif1"][:, 0], tr.spikes["lif1"][:, b])
        np.testing.assert_array_equal(one.spikes["if2"][:, 0], tr.spikes["if2"][:, b])
    monkeypatch.setattr(hl, "MAX_RECORDED_VALUES", 1)  # one sample per Lava run
    seen = []
    chunked = run_lava(g, x, progress=lambda done, total: seen.append((done, total)))
    assert len(chunked.meta["worker"]["chunks"]) == B
    assert seen and seen[-1] == (B, B)
    np.testing.assert_array_equal(chunked.outputs["output"], tr.outputs["output"])


@pytest.mark.lava
def test_worker_failure_is_one_line_backend_error(monkeypatch):
    rng = np.random.default_rng(14)
    g, _ = dense_if_graph(rng)
    monkeypatch.setenv("SPIKEBRIDGE_LAVA_TEST_FAIL", "build")
    with pytest.raises(BackendError) as e:
        run_lava(g, np.zeros((2, 1, 12)))
    assert "injected failure" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.delenv("SPIKEBRIDGE_LAVA_TEST_FAIL")
    plan = lower(g, 2)
    meta = dict(plan.meta)
    del meta["populations"]  # a corrupt plan
    with pytest.raises(BackendError, match="KeyError") as e:
        run_job(meta, plan.arrays, np.zeros((2, 1, 12)))
    assert "\n" not in str(e.value)


@pytest.mark.lava
def test_timeout_kills_worker_group(monkeypatch):
    rng = np.random.default_rng(15)
    g, _ = dense_if_graph(rng)
    monkeypatch.setenv("SPIKEBRIDGE_LAVA_TEST_HANG_S", "60")
    t = time.monotonic()
    with pytest.raises(BackendError, match="timed out"):
        run_lava(g, np.zeros((2, 1, 12)), timeout_s=5)
    assert time.monotonic() - t < 20
    assert not _worker_pids_under(os.getpid())


def _children(pid):
    out = []
    for p in _all_pids():
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                out.append(p)
        except (OSError, ValueError):
            pass
    return out


def _live(pids):
    """Pids that are not zombies (a zombie is dead, waiting for init to reap it)."""
    out = []
    for p in pids:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] != "Z":
            out.append(p)
    return out


def _all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _cmdline(pid) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:  # the process exited between the listing and the read
        return ""


def _worker_pids_under(pid):
    return [c for c in _children(pid) if "worker.py" in _cmdline(c)]


@pytest.mark.lava
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_parent_leaves_no_worker_and_no_shm(tmp_path, sig):
    """SIGTERM: the supervisor kills the worker group; SIGKILL (no cleanup possible in the
    parent): the worker's parent watchdog kills its own group."""
    shm_before = set(os.listdir("/dev/shm"))
    script = textwrap.dedent(f"""
        import sys, numpy as np
        sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_lava import dense_if_graph
        from spikebridge.hardware.lava import run_lava
        g, _ = dense_if_graph(np.random.default_rng(0))
        print("start", flush=True)
        run_lava(g, np.zeros((3, 2, 12)), timeout_s=120)
        print("finished", flush=True)
    """)
    env = dict(os.environ, SPIKEBRIDGE_LAVA_TEST_HANG_S="60")
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, start_new_session=True, text=True)
    try:
        worker = None
        group: list[int] = []
        shm_seen: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ws = _worker_pids_under(parent.pid)
            if ws:
                worker = ws[0]
                group = _group_pids(worker)
                shm_seen |= _shm_of(group)
                if len(group) >= 3 and shm_seen:  # Lava's runtime processes are up
                    break
            assert parent.poll() is None, parent.communicate()
            time.sleep(0.2)
        assert worker is not None and len(group) >= 3, "the Lava worker never started its runtime"
        time.sleep(0.5)
        shm_seen |= _shm_of(_group_pids(worker))
        parent.send_signal(sig)
        parent.wait(timeout=30)
        end = time.monotonic() + 10
        while _live(_group_pids(worker)) and time.monotonic() < end:
            time.sleep(0.1)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
    assert parent.returncode != 0
    assert _live(_group_pids(worker)) == [], "Lava worker processes survived"
    assert all(not os.path.exists(p) for p in shm_seen), "shared memory of the worker leaked"
    new = {p for p in set(os.listdir("/dev/shm")) - shm_before}
    leaked = {p for p in new if "/dev/shm/" + p in shm_seen}
    assert not leaked
