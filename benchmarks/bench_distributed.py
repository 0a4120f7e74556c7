"""Distributed benchmark (``spikebridge bench distributed``; JSON on stdout): samples/s of
dataset simulation with 1 and 2 worker processes, and training throughput with 1 and 2
processes, each with wall time, CPU time and the load average around it.

Simulation: one graph (``--graph``, default: a CNN trained here for 1 epoch on 2048 samples of
``--dataset``),
the dataset split direct-encoded over the graph's T, run (a) in this process
(``hardware.backends.run_graph``, the plain ``simulate``), (b) with ``--workers 1`` and (c)
``--workers 2`` (``run_graph`` with RunOptions(workers=N) -> ``spikebridge.hardware.shard``, which is
called directly for 1 worker: spawned processes, whole-batch shards; process start
and graph loading included). Every run is checked against (a): identical outputs and counts.
Scaling efficiency = samples/s with 2 workers / (2 x samples/s in one process).

Training: ``spikebridge train --nproc-per-node N`` as a child process for N = 1 (torch's default
threads, and 1 thread) and N = 2 (1 thread each; the same global batch and seed, ``--sync-bn``). Throughput = samples trained / the training
loops' seconds from metrics.jsonl (evaluation and start-up excluded); the child's wall and
CPU time (RUSAGE_CHILDREN, which includes the launcher's worker processes) are whole-run.

CPU time is reported because this machine's cores are shared: with other work running,
wall time measures the share the scheduler gave us as much as our code.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path



def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _cpu_all() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    return s.ru_utime + s.ru_stime + _cpu_children()


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _train_graph(d: Path, dataset: str, progress: bool) -> Path:
    from spikebridge.exporters.nir_export import checkpoint_to_nir, write_nir
    from spikebridge.models.train import TrainConfig, train
    train(TrainConfig(arch="cnn", dataset=dataset, epochs=1, timesteps=4, seed=0, device="cpu", limit_train=2048,
                      limit_test=256), d / "ckpt", progress=progress)
    write_nir(checkpoint_to_nir(d / "ckpt"), d / "graph.nir")
    return d / "graph.nir"


def bench_simulate(a, tmp: Path, progress: bool) -> dict:
    import numpy as np

    from spikebridge.hardware.backends import RunOptions, prepare, run_graph
    from spikebridge.hardware.graph import graph_meta
    from spikebridge.hardware.shard import run_sharded
    from spikebridge.toolchain import pipeline

    path = Path(a.graph) if a.graph else _train_graph(tmp, a.dataset, progress)
    prep = prepare(path, "eventsim", RunOptions(batch_size=a.batch_size))
    T = int(graph_meta(prep.graph)["timesteps"])
    x, _ = pipeline.dataset_samples(a.dataset, a.split, a.limit, prep.input_shape)
    x_tb = pipeline.direct_encode(x, T)
    runs, ref = [], None
    for rep in range(a.repeats):
        for workers in [0] + list(a.workers):  # 0: in this process, no worker
            load0, c0, t0 = _load(), _cpu_all(), time.perf_counter()
            if workers == 0:
                tr = run_graph(prep, x_tb)
            elif workers == 1:  # run_graph runs 1 worker in-process: the shard layer itself, 1 process
                tr = run_sharded(prepare(path, "eventsim", RunOptions(batch_size=a.batch_size, workers=1)), x_tb)
            else:
                tr = run_graph(path, x_tb, "eventsim", RunOptions(batch_size=a.batch_size, workers=workers))
            wall, cpu = time.perf_counter() - t0, _cpu_all() - c0
            if ref is None:
                ref = tr
            else:  # identical to the in-process run, or the benchmark is void
                for k in ref.outputs:
                    assert np.array_equal(ref.outputs[k], tr.outputs[k]), k
                for n, c in ref.counts.items():
                    for kind, v in c.items():
                        assert np.array_equal(v, tr.counts[n][kind]), (n, kind)
            runs.append({"workers": workers or "in-process", "repeat": rep, "wall_seconds": round(wall, 3),
                         "cpu_seconds": round(cpu, 3), "samples_per_second": round(len(x) / wall, 1),
                         "loadavg_before": load0, "loadavg_after": _load()})
    summary = {}
    for key in ["in-process"] + list(a.workers):
        rows = [r for r in runs if r["workers"] == key]
        best = max(rows, key=lambda r: r["samples_per_second"])
        med = sorted(r["samples_per_second"] for r in rows)[len(rows) // 2]
        summary[str(key)] = {"samples_per_second_best": best["samples_per_second"],
                             "samples_per_second_median": med,
                             "cpu_seconds_median": sorted(r["cpu_seconds"] for r in rows)[len(rows) // 2]}
    base = summary["in-process"]["samples_per_second_median"]
    for w in a.workers:
        summary[str(w)]["scaling_efficiency_vs_in_process"] = round(
            summary[str(w)]["samples_per_second_median"] / (w * base), 3)
    if 1 in a.workers:
        one = summary["1"]["samples_per_second_median"]
        for w in a.workers:
            summary[str(w)]["scaling_efficiency_vs_1_worker"] = round(
                summary[str(w)]["samples_per_second_median"] / (w * one), 3)
    return {"graph": str(path), "dataset": a.dataset, "split": a.split, "samples": int(len(x)), "timesteps": T,
            "batch_size": a.batch_size, "summary": summary, "runs": runs,
            "identical_to_in_process": True}


def bench_train(a, tmp: Path) -> dict:
    from spikebridge.models.datasets import load_dataset
    a.train_samples_per_epoch = min(a.limit_train, len(load_dataset(a.train_dataset, "train")[1]))
    runs = []
    for rep in range(a.repeats):
        for n, threads in a.procs:
            out = tmp / f"train-{n}-{threads}-{rep}"
            cmd = [sys.executable, "-m", "spikebridge", "--no-progress", "train", "--method", a.method, "--arch",
                   a.arch, "--dataset", a.train_dataset, "--epochs", str(a.epochs), "--batch-size", str(a.train_batch),
                   "--timesteps", "4", "--device", "cpu", "--seed", "0", "--limit-train", str(a.limit_train),
                   "--limit-test", "64", "--nproc-per-node", str(n), "--out", str(out)]
            if n > 1:
                cmd.append("--sync-bn")
            env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
            if threads:
                env["OMP_NUM_THREADS"] = str(threads)
            load0, c0, t0 = _load(), _cpu_children(), time.perf_counter()
            from spikebridge.benchmarks import child_env
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=child_env(env))
            wall, cpu = time.perf_counter() - t0, _cpu_children() - c0
            if p.returncode != 0:
                raise RuntimeError(f"training with {n} processes failed: {p.stderr.strip()[-500:]}")
            hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
            loop_s = sum(h["seconds"] for h in hist)
            samples = a.train_samples_per_epoch * len(hist)
            runs.append({"processes": n, "threads_per_process": threads or "torch default", "repeat": rep, "train_loop_seconds": round(loop_s, 3),
                         "samples_per_second": round(samples / loop_s, 1), "run_wall_seconds": round(wall, 3),
                         "run_cpu_seconds": round(cpu, 3), "final_snn_test_accuracy": hist[-1]["snn_test_accuracy"],
                         "loadavg_before": load0, "loadavg_after": _load()})
    summary = {}
    for n, threads in a.procs:
        rows = [r for r in runs if r["processes"] == n and r["threads_per_process"] == (threads or "torch default")]
        summary[f"{n} proc x {threads or 'default'} thr"] = {
            k: sorted(r[k] for r in rows)[len(rows) // 2]
            for k in ("samples_per_second", "run_wall_seconds", "run_cpu_seconds", "final_snn_test_accuracy")}
    ones = [v["samples_per_second"] for k, v in summary.items() if k.startswith("1 proc")]
    for k, v in summary.items():  # against the best 1-process configuration
        n = int(k.split()[0])
        v["scaling_efficiency_vs_best_1_process"] = round(v["samples_per_second"] / (n * max(ones)), 3) if ones else None
    return {"method": a.method, "arch": a.arch, "dataset": a.train_dataset, "limit_train": a.limit_train,
            "epochs": a.epochs, "global_batch": a.train_batch, "summary": summary, "runs": runs}


def add_arguments(p):
    p.add_argument("--graph", help="graph.nir to simulate (default: train a digits CNN for 2 epochs first)")
    p.add_argument("--dataset", default="fashion-mnist", help="simulated dataset (default fashion-mnist)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=4000, help="first N samples (default 4000)")
    p.add_argument("--batch-size", type=int, default=64, help="simulator batch (shards are whole batches)")
    p.add_argument("--workers", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2])
    p.add_argument("--procs", type=lambda s: [tuple(int(x) for x in v.split(":")) for v in s.split(",")],
                   default=[(1, 0), (1, 1), (2, 1)],
                   help="training runs as PROCESSES:THREADS_PER_PROCESS (0: torch's default), default 1:0,1:1,2:1")
    p.add_argument("--method", default="snn2ann")
    p.add_argument("--train-dataset", default="digits", help="training benchmark dataset (default digits)")
    p.add_argument("--arch", default="cnn")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--limit-train", type=int, default=1024)
    p.add_argument("--train-batch", type=int, default=64, help="global training batch")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-simulate", action="store_true")
    p.add_argument("--out", help="also write the JSON here")


def main(argv=None, progress: bool = True) -> int:
    p = argparse.ArgumentParser(prog="bench_distributed", description=__doc__.splitlines()[0])
    add_arguments(p)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    out = {"command": "spikebridge bench distributed " + " ".join(sys.argv[1:] if argv is None else argv),
           "cpu_count": os.cpu_count(), "loadavg_start": _load()}
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as d:
        if not a.skip_simulate:
            out["simulate"] = bench_simulate(a, Path(d), progress)
        if not a.skip_train:
            out["train"] = bench_train(a, Path(d))
    out["loadavg_end"] = _load()
    from spikebridge.base.fileio import print_json
    print_json(out, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
