"""Kernel choices of the event-driven simulator never change results: the event-gather
dense product against BLAS, and batch slicing under the memory budget."""
import nir
import numpy as np
import pytest

from hardware.eventsim import kernels, simulate
from hardware.eventsim import simulator as sim
from hardware.eventsim.kernels import event_matmul


@pytest.mark.parametrize("density", [0.0, 0.002, 0.01, 0.2, 1.0])
def test_event_matmul_is_exact_on_integer_data(density):
    rng = np.random.default_rng(int(density * 1000))
    x = (rng.random((257, 60)) < density) * rng.integers(-3, 4, size=(257, 60))
    w = rng.integers(-7, 8, size=(60, 33)).astype(np.float64)
    np.testing.assert_array_equal(event_matmul(x.astype(np.float64), w), x @ w)
    xs = (rng.random((257, 60)) < density).astype(np.float64)  # binary spikes, float weights
    wf = rng.normal(size=(60, 33))
    np.testing.assert_allclose(event_matmul(xs, wf), xs @ wf, rtol=0, atol=1e-12)


def _layer_graph(n_in, n_out, W):
    return nir.NIRGraph(nodes={
        "input": nir.Input(np.array([n_in])),
        "fc": nir.Linear(W),
        "if": nir.IF(r=np.ones(n_out), v_threshold=np.full(n_out, 3.0)),
        "output": nir.Output(np.array([n_out]))},
        edges=[("input", "fc"), ("fc", "if"), ("if", "output")], type_check=False)


def test_sparse_layer_takes_the_event_path_with_identical_results(monkeypatch):
    rng = np.random.default_rng(0)
    W = rng.integers(-2, 3, size=(40, 300)).astype(np.float64)
    g = _layer_graph(300, 40, W)
    x = (rng.random((20, 16, 300)) < 0.005).astype(np.float32)  # 0.5 % activity
    calls = []
    orig = kernels.event_matmul
    monkeypatch.setattr(kernels, "event_matmul", lambda *a: calls.append(1) or orig(*a))
    a = simulate(g, x)
    assert calls, "0.5 % activity must use the event path"
    monkeypatch.setattr(kernels, "EVENT_MAX_DENSITY", 0.0)  # force BLAS
    calls.clear()
    b = simulate(g, x)
    assert not calls
    np.testing.assert_array_equal(a.outputs["output"], b.outputs["output"])
    for n in a.counts:
        for k in a.counts[n]:
            np.testing.assert_array_equal(a.counts[n][k], b.counts[n][k])
    assert a.total("macs") == int(((x != 0).reshape(-1, 300) @ (W != 0).sum(0)).sum())


def test_auto_max_batch_bounds_memory_and_keeps_results(monkeypatch):
    rng = np.random.default_rng(1)
    W = rng.normal(size=(8, 10))
    g = _layer_graph(10, 8, W)
    x = (rng.random((5, 37, 10)) < 0.3).astype(np.float64)
    a = simulate(g, x)
    info = sim.analyse(g)
    per_sample = 8 * 5 * sum(int(np.prod(s)) for s in info.shapes.values())
    assert sim.auto_max_batch(info, 5, budget=per_sample * 4) == 4
    monkeypatch.setattr(sim, "MEMORY_BUDGET_BYTES", per_sample * 4)  # slices of 4 samples
    seen = []
    orig = sim.run
    monkeypatch.setattr(sim, "run", lambda g_, x_, *r, **k: seen.append(x_.shape[1]) or orig(g_, x_, *r, **k))
    b = simulate(g, x)
    assert max(seen) <= 4 and sum(seen) == 37 and b.batch == 37
    np.testing.assert_array_equal(a.outputs["output"], b.outputs["output"])
    np.testing.assert_array_equal(a.spikes["if"], b.spikes["if"])
    for n in a.counts:
        for k in a.counts[n]:
            np.testing.assert_array_equal(a.counts[n][k], b.counts[n][k])


def test_bench_simulate_quick_prints_json(capsys):
    """The benchmark stays runnable (tiny sizes, no Lava; snnTorch only if installed)."""
    import json

    from toolchain.cli import main
    assert main(["--no-progress", "bench", "simulate", "--quick", "--no-lava"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["summary"]["all_equal_dense_ref"] is True
    assert {r["graph"] for r in res["activity"]} == {"dense", "conv"}
    assert res["lava"] == {"skipped": "--no-lava"} and "png" not in res
