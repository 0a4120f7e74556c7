"""Benchmark: the bit-exact Loihi integer model (eventsim's `loihi-fixed` profile) against
Lava fixed_pt on the same graphs and inputs (prints one JSON object; not a test).

Graphs: the digits CNN (`train --method snn2ann --arch cnn --dataset digits --timesteps 4`,
then `export`; trained into a temporary folder unless --cnn names a graph.nir) on the
first N digits test samples, and a 784-512-10 dense IF graph (benchmarks/bench_simulate's
dense net with IF neurons) on random input spike trains (--dense-rate) and on
direct-encoded analog inputs (one random sample repeated over the steps, as
`simulate --dataset` feeds a graph).

Per graph and engine: samples/s of one call over N samples, best of --repeat calls after
a first (cold) call whose time is reported too; for the integer model also per CPU second
of this process (it runs on one thread; on a shared machine preemption inflates the wall
time of a 10 ms call far more than that of Lava's 1 s call) (cold: lowering + quantisation, Lava's worker
start; warm: both reuse the cached lowering, Lava its persistent worker). `identical_samples`
counts the samples whose spikes (every population, every step) and outputs are equal
between Lava fixed_pt and the integer model: the model is bit-exact, so it must be N.

    spikebridge bench loihi [--samples 100] [--repeat 3] [--cnn GRAPH] [--no-lava] [--reference]
    python -m spikebridge.benchmarks.bench_loihi ...

The machine may be shared: compare the ratios of one run (the JSON records the CPU model
and the load average before and after).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from spikebridge.benchmarks import cpu_model

from spikebridge.benchmarks.bench_simulate import dense_spec, spec_to_nir, spikes
from spikebridge.hardware.eventsim import simulate
from spikebridge.hardware.graph import load_graph
from spikebridge.hardware.loihi import fixed_trace


def load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def train_cnn(folder: Path) -> Path:
    """The digits CNN of the issue, trained and exported with the CLI."""
    py = [sys.executable, "-m", "spikebridge"]
    subprocess.run(py + ["train", "--method", "snn2ann", "--arch", "cnn", "--dataset", "digits", "--timesteps", "4",
                         "--epochs", "3", "--out", str(folder)], check=True, capture_output=True)
    subprocess.run(py + ["export", str(folder)], check=True, capture_output=True)
    return folder / "graph.nir"


def timed(fn, repeat: int):
    """(cold wall seconds, best warm wall seconds, best warm CPU seconds of this process, last result)."""
    t0 = time.perf_counter()
    out = fn()
    cold = time.perf_counter() - t0
    best = cpu = float("inf")
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return cold, best, cpu, out


def identical_samples(a, b) -> int:
    """Samples whose outputs and spikes (every population, every step) are equal in a and b."""
    B = a.batch
    ok = np.ones(B, dtype=bool)
    for k in a.outputs:
        ok &= np.all(a.outputs[k].reshape(a.timesteps, B, -1) == b.outputs[k].reshape(b.timesteps, B, -1), axis=(0, 2))
    for k in a.spikes:
        ok &= np.all(a.spikes[k].reshape(a.timesteps, B, -1) == b.spikes[k].reshape(b.timesteps, B, -1), axis=(0, 2))
    return int(ok.sum())


def compare(name: str, graph, x, repeat: int, lava_repeat: int, lava: bool, reference: bool) -> dict:
    n = int(x.shape[1])
    row = {"graph": name, "samples": n, "timesteps": int(x.shape[0])}
    cold, warm, cpu, tr = timed(lambda: simulate(graph, x, profile="loihi-fixed"), repeat)
    # one thread (BLAS limited to 1 inside the model): CPU seconds ~ wall seconds on an idle core
    row["loihi_fixed"] = {"cold_s": cold, "warm_s": warm, "warm_cpu_s": cpu, "samples_per_second": n / warm,
                          "samples_per_cpu_second": n / cpu, "cold_samples_per_second": n / cold}
    if reference:
        t0 = time.perf_counter()
        ref = fixed_trace(graph, x, engine="reference")
        t = time.perf_counter() - t0
        row["loihi_fixed_reference_engine"] = {"s": t, "samples_per_second": n / t,
                                               "identical_samples": identical_samples(tr, ref)}
    if lava:
        from spikebridge.hardware.lava import run_lava
        lcold, lwarm, _, lt = timed(lambda: run_lava(graph, x, precision="fixed"), lava_repeat)
        row["lava_fixed_pt"] = {"cold_s": lcold, "warm_s": lwarm, "samples_per_second": n / lwarm,
                                "cold_samples_per_second": n / lcold}
        row["identical_samples"] = identical_samples(tr, lt)
        row["speedup_warm"] = lwarm / warm
        row["speedup_warm_cpu"] = lwarm / cpu  # Lava's wall (its worker processes) / the model's CPU time
        row["speedup_cold"] = lcold / cold
    return row


def main(argv=None, progress=False) -> int:
    ap = argparse.ArgumentParser(prog="spikebridge bench loihi", description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=10, help="warm calls of the integer model (the best is reported)")
    ap.add_argument("--lava-repeat", type=int, default=3, help="warm calls of Lava (the best is reported)")
    ap.add_argument("--cnn", help="the digits CNN's graph.nir (default: train one into a temporary folder)")
    ap.add_argument("--dense-timesteps", type=int, default=8)
    ap.add_argument("--dense-rate", type=float, default=0.1, help="input spike rate of the dense graph")
    ap.add_argument("--no-lava", action="store_true")
    ap.add_argument("--reference", action="store_true", help="also time the step-by-step reference engine")
    args = ap.parse_args(argv)
    res = {"benchmark": "loihi-fixed vs Lava fixed_pt", "cpu": cpu_model(), "cpus": os.cpu_count(),
           "load_before": load(), "python": platform.python_version(), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        cnn = Path(args.cnn) if args.cnn else train_cnn(Path(tmp) / "cnn")
        g = load_graph(cnn)
        from spikebridge.models.datasets import load_dataset  # only for the digits samples
        xd, _ = load_dataset("digits", "test")
        xd = xd[:args.samples]
        T = int(np.asarray(g.metadata["spikebridge"]["timesteps"]))
        res["rows"].append(compare("digits CNN (snn2ann, T=4)", g, np.broadcast_to(xd[None], (T,) + xd.shape),
                                   args.repeat, args.lava_repeat, not args.no_lava, args.reference))
    rng = np.random.default_rng(0)
    dense = spec_to_nir(dense_spec(), style="plain")
    xs = spikes(rng, args.dense_timesteps, args.samples, (784,), args.dense_rate)
    res["rows"].append(compare(f"784-512-10 dense IF, input spikes at rate {args.dense_rate:g}", dense, xs,
                               args.repeat, args.lava_repeat, not args.no_lava, args.reference))
    xa = rng.random((args.samples, 784))  # analog samples, the same at every step (simulate --dataset)
    res["rows"].append(compare("784-512-10 dense IF, direct-encoded analog input", dense,
                               np.broadcast_to(xa[None], (args.dense_timesteps,) + xa.shape),
                               args.repeat, args.lava_repeat, not args.no_lava, args.reference))
    res["load_after"] = load()
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
