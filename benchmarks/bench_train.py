"""Training-cost benchmark: SNN2ANN against the BPTT baseline on the same architecture,
data, epochs and seed, in one run (``spikebridge bench train``; JSON on stdout).

Every (method, T) runs in its own worker process (``--worker``), so one run's memory
never shows up in another's. A worker loads the data and builds the model, then takes
its baseline: resident set size (RSS, from /proc/self/statm) on the CPU, or
``torch.cuda.memory_allocated`` on a GPU. During the training epochs a sampling thread
reads RSS every 2 ms (on a GPU: ``torch.cuda.max_memory_allocated``); the reported peak
is the maximum minus the baseline. Seconds per epoch are the training loop's wall time
(evaluation excluded), and its CPU time (``time.process_time``: all threads of the worker),
which, unlike wall time, does not grow when other jobs share the cores; the 1-minute load
average is recorded before the first and after every epoch; the final SNN test accuracy and spikes per sample come from the
test split after the last epoch.

Pairs are given as SNN2ANN_T:BPTT_T (default 4:4, 8:8 and the paper's 5:8). Ratios are
SNN2ANN / BPTT for time (wall and CPU), memory and spikes per test sample (``spike_ratio``,
the energy report's number; None when BPTT fired no spike) and SNN2ANN - BPTT for accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MIN_ITERATIONS = 200  # below this the eval-mode BN statistics have not settled (see notes)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakSampler:
    """Maximum RSS seen by a background thread reading /proc/self/statm every ``period`` s."""

    def __init__(self, period: float = 0.002):
        self.period, self.peak, self._stop = period, rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def _warm_up(model, xb, yb) -> None:
    """One training step on a copy (RNG state restored), then give freed memory back to the
    OS: the baseline then includes the libraries' lazily loaded code and workspaces
    (oneDNN kernels, thread pools), which are not the method's training memory."""
    import copy
    import ctypes
    import gc

    import torch

    from spikebridge.models.methods.snn2ann import train_step

    state = torch.get_rng_state()
    m = copy.deepcopy(model)
    train_step(m, torch.optim.Adam(m.parameters()), xb, yb)
    del m
    gc.collect()
    torch.set_rng_state(state)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the baseline is taken as is
        pass
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def worker(a) -> dict:
    import numpy as np
    import torch

    from spikebridge.models.methods.common import load_data, make_optimizer
    from spikebridge.models.config import TrainConfig, pick_device, seed_everything
    from spikebridge.models.methods.snn2ann import evaluate, make_model, train_step

    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = TrainConfig(method=a.method, arch=a.arch, dataset=a.dataset, timesteps=a.timesteps, epochs=a.epochs,
                      batch_size=a.batch_size, lr=a.lr, schedule=a.schedule, seed=a.seed, device=a.device, neuron=a.neuron,
                      surrogate=a.surrogate, limit_train=a.limit, limit_test=a.limit_test)
    device = pick_device(a.device)
    seed_everything(a.seed)
    info, xtr_t, ytr_t, xte_t, yte_t = load_data(cfg, device)
    model = make_model(cfg, info.input_shape, info.num_classes, device)
    opt, sched = make_optimizer(model.parameters(), cfg, cfg.epochs)
    gen = torch.Generator().manual_seed(a.seed)
    cuda = device.type == "cuda"
    _warm_up(model, xtr_t[:cfg.batch_size], ytr_t[:cfg.batch_size])
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = rss_bytes()
    epoch_s, epoch_cpu, losses = [], [], []
    load = [os.getloadavg()[0]]
    with PeakSampler() as sampler:
        for _ in range(cfg.epochs):
            model.train()
            t0, c0 = time.perf_counter(), time.process_time()
            perm = torch.randperm(len(xtr_t), generator=gen).to(device)
            tot = 0.0
            for i in range(0, len(perm), cfg.batch_size):
                idx = perm[i:i + cfg.batch_size]
                loss, _ = train_step(model, opt, xtr_t[idx], ytr_t[idx])
                tot += float(loss) * len(idx)
            if cuda:
                torch.cuda.synchronize()
            sched.step()
            epoch_s.append(time.perf_counter() - t0)
            epoch_cpu.append(time.process_time() - c0)
            load.append(os.getloadavg()[0])
            losses.append(tot / len(perm))
    peak = (torch.cuda.max_memory_allocated(device) if cuda else sampler.peak) - base
    ev = evaluate(model, xte_t, yte_t)
    return {"method": a.method, "timesteps": a.timesteps, "device": device.type,
            "threads": torch.get_num_threads(), "seconds_per_epoch": float(np.mean(epoch_s)),
            "epoch_seconds": epoch_s, "cpu_seconds_per_epoch": float(np.mean(epoch_cpu)),
            "epoch_cpu_seconds": epoch_cpu, "load_average": load, "peak_memory_mib": peak / 2**20,
            "memory_kind": "cuda_max_memory_allocated" if cuda else "rss",
            "snn_test_accuracy": ev["snn_test_accuracy"], "spikes_per_sample": ev["spikes_per_sample"],
            "final_loss": losses[-1], "train_samples": len(xtr_t), "test_samples": len(xte_t),
            "iterations": cfg.epochs * -(-len(xtr_t) // cfg.batch_size)}


def _common(p):
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--arch", default="cnn")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    from spikebridge.models.methods.options import SCHEDULES
    p.add_argument("--schedule", default="step", choices=SCHEDULES,
                   help="learning-rate schedule of both methods (default step, as train)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto|cpu|cuda")
    p.add_argument("--neuron", default="lif", help="BPTT neuron: if | lif")
    p.add_argument("--surrogate", default="atan", help="BPTT surrogate: rectangular | atan | sigmoid")
    p.add_argument("--limit", type=int, help="first N training samples (default: all)")
    p.add_argument("--limit-test", type=int, help="first N test samples (default: all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")


def add_arguments(p):
    _common(p)
    p.add_argument("--pairs", default="4:4,8:8,5:8", help="SNN2ANN_T:BPTT_T pairs (default 4:4,8:8,5:8)")
    p.add_argument("--parallel", type=int, default=1, help="workers running at once (default 1: sequential)")
    p.add_argument("--out", help="also write the JSON to this file (atomically)")


def parse_pairs(text: str) -> list[tuple[int, int]]:
    from spikebridge.base.errors import InputError
    pairs = []
    for item in text.split(","):
        try:
            a, b = (int(v) for v in item.split(":"))
        except ValueError:
            raise InputError(f"--pairs: {item!r} is not SNN2ANN_T:BPTT_T") from None
        if a < 1 or b < 1:
            raise InputError(f"--pairs: {item!r}: timesteps must be positive")
        pairs.append((a, b))
    return pairs


def run(a) -> dict:
    from spikebridge.base.errors import BackendError, InputError
    if a.epochs < 1 or a.batch_size < 1:
        raise InputError("--epochs and --batch-size must be positive")
    pairs = parse_pairs(a.pairs)
    jobs = sorted({("snn2ann", s) for s, _ in pairs} | {("bptt", b) for _, b in pairs})
    common = ["--dataset", a.dataset, "--arch", a.arch, "--epochs", str(a.epochs), "--batch-size",
              str(a.batch_size), "--lr", str(a.lr), "--schedule", a.schedule, "--seed", str(a.seed), "--device", a.device,
              "--neuron", a.neuron, "--surrogate", a.surrogate, "--threads", str(a.threads)]
    if a.limit:
        common += ["--limit", str(a.limit)]
    if a.limit_test:
        common += ["--limit-test", str(a.limit_test)]

    def one(job):
        method, T = job
        cmd = [sys.executable, "-m", "spikebridge.benchmarks.bench_train", "--worker", method, "--timesteps", str(T),
               *common]
        from spikebridge.benchmarks import child_env
        res = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
        if res.returncode != 0:
            tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
            if res.returncode == 3:
                raise InputError(tail.removeprefix("error: "))
            raise BackendError(f"benchmark worker {method} T={T} failed: {tail}")
        return job, json.loads(res.stdout.strip().splitlines()[-1])

    with ThreadPoolExecutor(max_workers=max(1, a.parallel)) as ex:
        results = dict(ex.map(one, jobs))
    comparisons = [compare(s, b, results[("snn2ann", s)], results[("bptt", b)]) for s, b in pairs]
    notes = []
    short = sorted({r["iterations"] for r in results.values()})
    if short and short[0] < MIN_ITERATIONS:
        notes.append(f"only {short[0]} training iterations: BatchNorm running statistics (momentum 0.1, "
                     f"initial variance 1) are still far from the data's, so eval-mode accuracies, BPTT's "
                     f"first, are not comparable; use >= {MIN_ITERATIONS} iterations for the accuracy column")
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    return {"benchmark": "train", "settings": {k: v for k, v in vars(a).items() if k not in ("out", "func")},
            "runs": [dict(results[j]) for j in jobs], "comparisons": comparisons, "notes": notes}


def compare(s: int, b: int, rs: dict, rb: dict) -> dict:
    """One pair's comparison row from the SNN2ANN (``rs``) and BPTT (``rb``) worker results:
    time, CPU time, memory and spike ratios (SNN2ANN / BPTT; None when BPTT's is 0) and the
    accuracy difference (SNN2ANN - BPTT)."""
    return {
        "snn2ann_T": s, "bptt_T": b,
        "time_ratio": rs["seconds_per_epoch"] / rb["seconds_per_epoch"],
        "cpu_time_ratio": rs["cpu_seconds_per_epoch"] / rb["cpu_seconds_per_epoch"],
        "memory_ratio": rs["peak_memory_mib"] / rb["peak_memory_mib"] if rb["peak_memory_mib"] > 0 else None,
        "spike_ratio": rs["spikes_per_sample"] / rb["spikes_per_sample"] if rb["spikes_per_sample"] > 0 else None,
        "accuracy_difference": rs["snn_test_accuracy"] - rb["snn_test_accuracy"],
    }


def main(argv=None, progress: bool = True) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if "--worker" in argv:  # internal: one (method, T) in this process
        p = argparse.ArgumentParser()
        p.add_argument("--worker", dest="method", choices=["snn2ann", "bptt"])
        p.add_argument("--timesteps", type=int, required=True)
        _common(p)
        a = p.parse_args(argv)
        from spikebridge.base.errors import InputError
        try:
            print(json.dumps(worker(a)))
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 3
        return 0
    p = argparse.ArgumentParser(prog="bench_train", description=__doc__.splitlines()[0])
    add_arguments(p)
    a = p.parse_args(argv)
    out = run(a)
    from spikebridge.base.fileio import print_json
    print_json(out, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
