"""`spikebridge bench methods`: every training method at T = 1, 2, 4, 8 (prints JSON).

Per (method, T): SNN test accuracy in torch (the deployed network, exactly what the NIR
graph states), the parallel (windowed-neuron) accuracy next to the deployed sequential-IF
one for ``parallel``, the method's own ANN accuracy, training wall time, and, from the
exported NIR graph run through spikebridge.hardware.eventsim on the first ``--eventsim-limit`` test
samples: eventsim accuracy, spikes per sample, synaptic ops per sample.

What is trained once and shared (its time is added to every T's training time and also
reported as ``shared_seconds``): the ReLU ANN teacher of lasnn; the QCFS ANN (L levels)
that qcfs converts at every T and parallel calibrates at every T; the bridge pretraining
(sharpened-ReLU ANN), fine-tuned by BPTT separately at every T. snn2ann trains at every T
(spikebridge.models.train). The bridge fine-tune uses the first ``--bptt-limit`` training samples (BPTT
costs T times an ANN step); the lasnn student, trained from scratch, gets the teacher's
budget (``--limit-train`` samples, ``--student-epochs`` = ``--epochs`` unless given).

``--methods parallel-window`` (not in the default list) runs parallel exported with
``--deploy window`` (count-then-emit IF graph, eventsim only).

Event-data rows (``--event-dataset nmnist|dvsgesture|shd``): snn2ann and bptt (the methods that
train on event frames) trained on the event dataset at ``--event-timesteps`` bins, then the
exported graph run on eventsim with the binned test frames; method ``<m>@<dataset>``. The data:
``--event-data-dir DIR`` (your local copy, docs/datasets.md), else a small dataset generated in
the dataset's own format under OUT/event-data (models/event_synth.py; the row says
``"data": "synthetic"``). ``--methods none`` runs the event rows alone, e.g.
``spikebridge bench methods --methods none --event-dataset nmnist --event-data-dir DIR``.

Writes OUT/bench.json, OUT/accuracy_vs_T.png, OUT/pareto.svg/.png (accuracy versus modelled
Loihi energy and latency per inference, every method and T, the Pareto front marked) and the
checkpoints; prints the JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as a script from a checkout (python benchmarks/bench_methods.py)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ALL = ("snn2ann", "qcfs", "parallel", "bridge", "lasnn")
EXTRA = ("parallel-window",)  # parallel exported with --deploy window (count-then-emit); not in the default list


def _parser():
    p = argparse.ArgumentParser(prog="spikebridge bench methods", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--arch", default="cnn")
    p.add_argument("--timesteps", default="1,2,4,8", help="comma-separated T values")
    p.add_argument("--methods", default=",".join(ALL))
    p.add_argument("--epochs", type=int, default=3, help="ANN epochs (teacher, QCFS ANN, bridge pretraining)")
    p.add_argument("--snn2ann-epochs", type=int, help="snn2ann epochs per T (default --epochs)")
    p.add_argument("--reuse", action="store_true",
                   help="reuse OUT/ann, OUT/qcfs-ann, OUT/bridge-ann from an earlier run with the same settings "
                        "(their recorded training time is used)")
    p.add_argument("--finetune-epochs", type=int, default=1, help="bridge BPTT epochs per T")
    p.add_argument("--student-epochs", type=int, help="lasnn student epochs per T (default --epochs)")
    p.add_argument("--limit-train", type=int, default=2000)
    p.add_argument("--bptt-limit", type=int, default=500, help="training samples of the bridge fine-tune")
    p.add_argument("--limit-test", type=int, default=1000, help="test samples of the torch accuracies")
    p.add_argument("--eventsim-limit", type=int, default=200, help="test samples run through eventsim")
    p.add_argument("--L", type=int, default=4, help="QCFS levels")
    p.add_argument("--batch-size", type=int, default=128)
    from spikebridge.models.methods.options import SCHEDULES
    p.add_argument("--schedule", default="step", choices=SCHEDULES,
                   help="lr schedule of every trained ANN and of snn2ann (as train --schedule; default step)")
    p.add_argument("--width", type=float, help="lasnn student width (default: the method's, 0.75)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--event-dataset", choices=["nmnist", "dvsgesture", "shd"],
                   help="add event-data rows (snn2ann, bptt) on this dataset")
    p.add_argument("--event-data-dir", help="the event dataset's folder (default: a small generated one)")
    p.add_argument("--event-timesteps", type=int, default=4, help="time bins of the event rows (default 4)")
    p.add_argument("--event-epochs", type=int, default=3, help="epochs of the event rows (default 3)")
    p.add_argument("--event-arch", help="architecture of the event rows (default ecnn; shd: mlp)")
    p.add_argument("--event-per-class", type=int, default=20,
                   help="generated data: training recordings per class (test: a quarter)")
    p.add_argument("--out", default="runs/bench-methods")
    p.add_argument("--replot", metavar="BENCH.json",
                   help="only draw the accuracy-versus-cost Pareto plot of an earlier run's JSON into --out")
    return p


def _cfg(args, **kw):
    from spikebridge.models.train import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    base = dict(arch=args.arch, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                seed=args.seed, device="cpu", limit_train=args.limit_train, schedule=args.schedule)
    base.update(kw)
    extra = dict(base.pop("extra", {}))
    if "limit_test" in names:
        base["limit_test"] = args.limit_test
    else:
        extra["limit_test"] = args.limit_test
    return TrainConfig(**base, extra=extra)


def _eventsim(ckpt: Path, x: np.ndarray, y: np.ndarray, time_major: bool = False) -> dict:
    from spikebridge.exporters.nir_export import checkpoint_to_nir, write_nir
    from spikebridge.hardware.backends import RunOptions, prepare, run_graph
    from spikebridge.hardware.graph import classify, graph_meta

    write_nir(checkpoint_to_nir(ckpt), ckpt / "graph.nir")
    prep = prepare(ckpt / "graph.nir", "eventsim", RunOptions(batch_size=100))
    graph = prep.graph
    T = int(graph_meta(graph)["timesteps"])
    xt = x if time_major else np.broadcast_to(x[None], (T, *x.shape))
    tr = run_graph(prep, xt)
    out = tr.outputs[next(iter(tr.outputs))]
    pred = classify(out, graph_meta(graph)["readout"])
    from spikebridge.hardware.energy import estimate
    from spikebridge.hardware.latency import estimate_latency
    return {"eventsim_accuracy": float((pred == y).mean()), "eventsim_samples": int(len(y)),
            "spikes_per_sample": tr.per_sample("spikes"), "synaptic_ops_per_sample": tr.per_sample("synaptic_ops"),
            # for the accuracy-versus-cost Pareto plot (modelled, Loihi; docs/report.md)
            "loihi_energy_pj_per_sample": estimate(tr, graph, "loihi")["total_pj_per_sample"],
            "loihi_latency_seconds_per_sample": estimate_latency(tr, graph, "loihi")["seconds_per_sample"]}


def _retime(ckpt_src: Path, ckpt_dst: Path, T: int):
    """A copy of a conversion checkpoint with another T (the converted SNN is re-run at T)."""
    from spikebridge.models.checkpoint import load_tensors, read_meta, save_checkpoint
    import torch

    meta = read_meta(ckpt_src)
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in load_tensors(ckpt_src).items()}
    meta = {k: v for k, v in meta.items() if k not in ("format", "format_version")}
    meta["timesteps"] = T
    save_checkpoint(ckpt_dst, tensors, meta)
    return meta


def run(args, progress: bool = False) -> dict:
    import torch

    from spikebridge.models.checkpoint import load_checkpoint
    from spikebridge.models.datasets import load_dataset
    from spikebridge.models.train import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Ts = [int(t) for t in str(args.timesteps).split(",") if t.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != "none"]
    xte, yte = load_dataset(args.dataset, "test") if methods else (None, None)
    xe, ye = (xte[:args.eventsim_limit], yte[:args.eventsim_limit]) if methods else (None, None)
    rows, shared = [], {}
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)

    def record(method, T, ckpt, row, seconds, ann_acc, **more):
        r = {"method": method, "T": T, "ann_test_accuracy": ann_acc, "snn_test_accuracy": row["snn_test_accuracy"],
             "train_seconds": seconds, **more}
        r.update(_eventsim(ckpt, xe, ye))
        r["torch_spikes_per_sample"] = row.get("spikes_per_sample")
        rows.append(r)
        log(json.dumps(r))

    def shared_run(name, cfg):
        if args.reuse and (out / name / "model.json").is_file():
            row = json.loads((out / name / "model.json").read_text())["metrics"]
            return row, float(row["seconds"])
        t0 = time.perf_counter()
        row = train(cfg, out / name, progress)
        return row, time.perf_counter() - t0

    if "lasnn" in methods:
        _, shared["ann_seconds"] = shared_run("ann", _cfg(args, method="ann", timesteps=1))
    if {"qcfs", "parallel", "parallel-window"} & set(methods):
        qrow, shared["qcfs_ann_seconds"] = shared_run(
            "qcfs-ann", _cfg(args, method="qcfs", timesteps=args.L, extra={"L": args.L}))
        shared["qcfs_ann_test_accuracy"] = qrow["ann_test_accuracy"]
    if "bridge" in methods:
        brow, shared["bridge_pretrain_seconds"] = shared_run(
            "bridge-ann", _cfg(args, method="bridge", timesteps=1, extra={"finetune_epochs": 0}))
        shared["bridge_ann_test_accuracy"] = brow["ann_test_accuracy"]
    # conversion/BPTT methods at every T first, snn2ann (a full training per T) last
    pairs = [(T, m) for T in Ts for m in methods if m != "snn2ann"] + [(T, "snn2ann") for T in Ts
                                                                       if "snn2ann" in methods]

    for T, m in pairs:
        ck = out / f"{m}-T{T}"
        t0 = time.perf_counter()
        if m == "snn2ann":
            row = train(_cfg(args, method="snn2ann", timesteps=T, epochs=args.snn2ann_epochs or args.epochs),
                        ck, progress)
            record(m, T, ck, row, time.perf_counter() - t0, row["ann_test_accuracy"])
        elif m == "qcfs":
            from spikebridge.models.methods import common as C
            from spikebridge.models.methods import qcfs as Q
            meta = _retime(out / "qcfs-ann", ck, T)
            _, tensors = load_checkpoint(ck)
            model = Q.build_model(meta, tensors)
            n = args.limit_test
            acc, spikes = C.deployed_accuracy(Q.deployed(model), torch.from_numpy(xte[:n]),
                                              torch.from_numpy(yte[:n]), T)
            secs = shared["qcfs_ann_seconds"] + time.perf_counter() - t0
            record(m, T, ck, {"snn_test_accuracy": acc, "spikes_per_sample": spikes}, secs,
                   shared["qcfs_ann_test_accuracy"], L=args.L)
        elif m in ("parallel", "parallel-window"):
            deploy = "window" if m == "parallel-window" else "sequential"
            row = train(_cfg(args, method="parallel", timesteps=T,
                             extra={"teacher": str(out / "qcfs-ann"), "deploy": deploy}), ck, progress)
            secs = shared["qcfs_ann_seconds"] + time.perf_counter() - t0
            record(m, T, ck, row, secs, row["ann_test_accuracy"], L=args.L,
                   parallel_test_accuracy=row["parallel_test_accuracy"],
                   sequential_if_test_accuracy=row["sequential_if_test_accuracy"],
                   count_then_emit_test_accuracy=row.get("count_then_emit_test_accuracy"))
        elif m == "bridge":
            row = train(_cfg(args, method="bridge", timesteps=T, limit_train=args.bptt_limit,
                             extra={"init": str(out / "bridge-ann"), "finetune_epochs": args.finetune_epochs}),
                        ck, progress)
            secs = shared["bridge_pretrain_seconds"] + time.perf_counter() - t0
            record(m, T, ck, row, secs, row["ann_test_accuracy"],
                   snn_test_accuracy_before_finetune=row["snn_test_accuracy_before_finetune"])
        elif m == "lasnn":
            row = train(_cfg(args, method="lasnn", timesteps=T, epochs=args.student_epochs or args.epochs,
                             extra={"teacher": str(out / "ann"),
                                    **({"width": args.width} if args.width else {})}), ck, progress)
            secs = shared["ann_seconds"] + time.perf_counter() - t0
            record(m, T, ck, row, secs, row["ann_test_accuracy"])
        else:
            raise SystemExit(f"unknown method {m!r}; known: {', '.join(ALL + EXTRA)}")
        _write(args, shared, rows, out)  # after every row: a partial result survives an interrupted run
    if args.event_dataset:
        _event_rows(args, out, rows, log, progress)
    return _write(args, shared, rows, out)


def _event_rows(args, out: Path, rows: list, log, progress: bool) -> None:
    """snn2ann and bptt on event frames (module docstring); rows appended to ``rows``."""
    from spikebridge.models.train import train
    from spikebridge.toolchain.pipeline import event_samples

    name, T = args.event_dataset, args.event_timesteps
    data_dir, source = args.event_data_dir, args.event_data_dir
    if data_dir is None:
        from spikebridge.models.event_synth import MAKERS
        data_dir, source = out / "event-data" / name, "synthetic"
        if not data_dir.is_dir():
            n = args.event_per_class
            kw = ({"recordings": (max(1, n // 4), max(1, n // 16)), "per_class": 2} if name == "dvsgesture"
                  else {"per_class": n, "test_per_class": max(1, n // 4)})
            MAKERS[name](data_dir, **kw)
    arch = args.event_arch or ("mlp" if name == "shd" else "ecnn")
    for m in ("snn2ann", "bptt"):
        ck = out / f"{m}-{name}-T{T}"
        t0 = time.perf_counter()
        row = train(_cfg(args, method=m, arch=arch, dataset=name, timesteps=T, epochs=args.event_epochs,
                         extra={"data_dir": str(data_dir)}), ck, progress)
        secs = time.perf_counter() - t0
        meta = json.loads((ck / "model.json").read_text())
        x_tb, y, _ = event_samples(name, "test", args.eventsim_limit, meta["input_shape"], T, data_dir)
        r = {"method": f"{m}@{name}", "T": T, "dataset": name, "data": str(source), "arch": arch,
             "ann_test_accuracy": row.get("ann_test_accuracy"), "snn_test_accuracy": row["snn_test_accuracy"],
             "train_seconds": secs, "test_samples": row.get("test_samples"),
             **_eventsim(ck, x_tb, y, time_major=True), "torch_spikes_per_sample": row.get("spikes_per_sample")}
        rows.append(r)
        log(json.dumps(r))


def _write(args, shared, rows, out: Path) -> dict:
    from spikebridge.base.fileio import atomic_write_json

    result = {"settings": vars(args), "shared": shared, "rows": rows, "png": str(out / "accuracy_vs_T.png")}
    _plot(rows, out / "accuracy_vs_T.png")
    if pareto_plot(rows, out):
        result["pareto"] = str(out / "pareto.svg")
    atomic_write_json(out / "bench.json", result)
    return result


def _plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spikebridge.base.fileio import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in dict.fromkeys(r["method"] for r in rows):
        rs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["T"])
        line, = ax.plot([r["T"] for r in rs], [r["snn_test_accuracy"] for r in rs], "o-", label=m)
        if m.startswith("parallel"):
            ax.plot([r["T"] for r in rs], [r["parallel_test_accuracy"] for r in rs], "s--",
                    color=line.get_color(), label="parallel (windowed)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("T (time steps)"); ax.set_ylabel("SNN test accuracy"); ax.legend(); ax.grid(alpha=0.3)
    ax.set_title("accuracy vs T per method")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def pareto_plot(rows, out: Path) -> bool:
    """OUT/pareto.svg and OUT/pareto.png (200 dpi): SNN test accuracy versus modelled Loihi energy
    and latency per inference, one point per method and T, the Pareto front marked (the plot of
    ``spikebridge report --compare``). Rows without energy (JSON written before it was recorded)
    are placed by their synaptic ops instead, on a panel that says so. False when nothing to draw."""
    from spikebridge.base.fileio import atomic_write_bytes
    from spikebridge.toolchain.compare import CHIP_AXIS, pareto_figure

    pts = [{"label": f"{r.get('method')} T={r.get('T')}", "accuracy": r.get("snn_test_accuracy"),
            "energy_pj_per_sample": r.get("loihi_energy_pj_per_sample"),
            "latency_seconds_per_sample": r.get("loihi_latency_seconds_per_sample"),
            "synaptic_ops_per_sample": r.get("synaptic_ops_per_sample")} for r in rows]
    if any(p["energy_pj_per_sample"] for p in pts):
        axes = [("energy_pj_per_sample", CHIP_AXIS["loihi"]),
                ("latency_seconds_per_sample", CHIP_AXIS["loihi"] + " timing and mapping model")]
    else:
        axes = [("synaptic_ops_per_sample", "synaptic ops per inference (eventsim; this JSON has no energy)")]
    fig = pareto_figure(pts, axes, title="every method and T: SNN test accuracy versus modelled cost")
    if fig is None:
        return False
    atomic_write_bytes(out / "pareto.svg", fig[0])
    atomic_write_bytes(out / "pareto.png", fig[1])
    return True


def main(argv=None, progress: bool = False) -> int:
    args = _parser().parse_args(argv)
    if args.replot:  # the Pareto plot of an earlier run's JSON into --out; nothing is trained
        from spikebridge.base.errors import InputError
        from spikebridge.base.fileio import read_json
        data = read_json(Path(args.replot), 64 << 20, InputError)
        rows = data.get("rows") if isinstance(data, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise InputError("no list of rows (not a bench methods JSON)", file=str(args.replot), place="rows")
        Path(args.out).mkdir(parents=True, exist_ok=True)
        ok = pareto_plot(rows, Path(args.out))
        print(json.dumps({"pareto": str(Path(args.out) / "pareto.svg") if ok else None}))
        return 0
    print(json.dumps(run(args, progress)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
