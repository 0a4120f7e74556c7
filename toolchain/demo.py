"""The demo pipeline: train -> export -> simulate (eventsim, Lava) -> ONNX baseline -> report,
and the multi-backend run of any checkpoint that ``spikebridge report CHECKPOINT_DIR`` shares
with it (``run_checkpoint``).

Everything lands in one run directory:
  checkpoint/ (weights.safetensors, model.json, metrics.jsonl, curves.png),
  graph.nir, model.onnx, eventsim.npz, lava.npz, run.json, report.json, report.html, *.png
``spikebridge report RUN_DIR`` rebuilds the report from those files alone.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from spikebridge.base.errors import InputError
from spikebridge.base.fileio import atomic_write_json

DATASET = "digits"


def _stage(msg: str) -> None:
    """A progress line, on stderr (stdout carries the summary)."""
    import sys

    print(f"[spikebridge] {msg}", file=sys.stderr, flush=True)


def onnx_baseline(model_path, x: np.ndarray, y: np.ndarray, repeats: int = 20) -> dict:
    """Accuracy and measured CPU latency/throughput of the ANN branch in onnxruntime."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": x})[0]
    acc = float(np.mean(logits.argmax(1) == y))
    one = x[:1]
    sess.run(None, {"input": one})
    t0 = time.perf_counter()
    for _ in range(repeats):
        sess.run(None, {"input": one})
    lat = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    sess.run(None, {"input": x})
    thr = len(x) / (time.perf_counter() - t0)
    return {"accuracy": acc, "latency_seconds_per_sample": lat, "throughput_samples_per_second": thr,
            "threads": 1, "provider": "CPUExecutionProvider", "label": "measured on this CPU"}


# every backend a checkpoint can be run on, in the order of the page; eventsim is always run
# (its exact counts feed the energy and latency models)
BACKENDS = ("torch", "eventsim", "lava-float", "lava-fixed", "onnx")


def parse_backends(text) -> tuple[str, ...]:
    """'eventsim,lava-float' -> the selected backends (eventsim always included)."""
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    bad = [n for n in names if n not in BACKENDS]
    if bad or not names:
        raise InputError(f"unknown backend(s) {', '.join(bad) or '(none)'}; choose from {', '.join(BACKENDS)}",
                         place="--backends")
    return tuple(b for b in BACKENDS if b in names or b == "eventsim")


def torch_accuracy(ckpt, x: np.ndarray, y: np.ndarray) -> float | None:
    """The checkpoint's SNN in PyTorch on these samples, for the methods whose torch model runs
    its SNN directly (SNN2ANN's ``snn_forward``, BPTT); None for the others."""
    import torch

    from spikebridge.models.bptt import BPTTNet
    from spikebridge.models.checkpoint import build_model, load_checkpoint
    from spikebridge.models.methods.snn2ann import evaluate

    meta, tensors = load_checkpoint(ckpt)
    model = build_model(meta, tensors, str(ckpt))
    if not (isinstance(model, BPTTNet) or hasattr(model, "snn_forward")):
        return None
    model = model.to("cpu")
    return float(evaluate(model, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                          torch.from_numpy(np.asarray(y, dtype=np.int64)))["snn_test_accuracy"])


def _recorded_accuracy(ckpt) -> float | None:
    """The last ``snn_test_accuracy`` in CHECKPOINT/metrics.jsonl (the full test split)."""
    import json

    p = Path(ckpt) / "metrics.jsonl"
    if not p.is_file() or p.stat().st_size > (64 << 20):
        return None
    last = None
    for line in p.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        v = row.get("snn_test_accuracy") if isinstance(row, dict) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1:
            last = float(v)
    return last


def run_checkpoint(ckpt, out, *, dataset: str | None = None, split: str = "test", limit: int | None = None,
                   backends=BACKENDS, required=(), progress: bool = True, torch_acc: float | None = None,
                   extra: dict | None = None, data_dir=None) -> dict:
    """Export a checkpoint (graph.nir, model.onnx where the method has an ONNX form) and run it
    on every selected backend on its dataset's ``split`` (first ``limit`` samples): torch,
    eventsim (always; its counts feed the report), Lava float and fixed, the ONNX form in
    onnxruntime. A backend in ``required`` that fails raises; another one is skipped and the
    reason recorded in run.json's ``not_run``. Writes graph.nir, model.onnx, eventsim.npz,
    lava.npz and run.json into ``out`` (the files ``report_run_dir`` reads) and returns run.json.

    ``torch_acc``: the torch accuracy already measured on the same samples (the demo's
    training result); otherwise measured here (``torch_accuracy``). Samples come from
    ``pipeline.load_samples`` with the encoding the graph records (an event dataset binned from
    ``data_dir``, else the folder the training recorded, else $SPIKEBRIDGE_DATA_DIR/<name>);
    torch gets the same input sequence as the simulators (a non-direct encoding or event frames
    as (batch, T, ...) frames)."""
    from spikebridge.base.errors import BackendError
    from spikebridge.exporters.nir_export import checkpoint_to_nir, write_nir
    from spikebridge.exporters.onnx_export import checkpoint_to_onnx, write_onnx
    from spikebridge.hardware.backends import prepare
    from spikebridge.models.checkpoint import read_meta
    from spikebridge.toolchain import pipeline
    from spikebridge.toolchain.report import backend_label

    ckpt, out = Path(ckpt), Path(out)
    meta = read_meta(ckpt)
    dataset = dataset or meta.get("dataset")
    if not dataset:
        raise InputError("model.json names no dataset; pass --dataset", file=str(ckpt / "model.json"))
    if limit is not None and limit < 1:
        raise InputError("--limit must be at least 1", place="--limit")
    timesteps, method = int(meta["timesteps"]), str(meta["method"])
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    not_run: dict[str, str] = {}

    def attempt(name, fn):
        try:
            return fn()
        except (BackendError, InputError) as e:
            if name in required:
                raise
            not_run[name] = " ".join(str(e).split())[:300]
            _stage(f"    {name} not run: {not_run[name]}")
            return None

    _stage(f"exporting graph.nir (the SNN){' and model.onnx' if 'onnx' in backends else ''}")
    write_nir(checkpoint_to_nir(ckpt), out / "graph.nir")
    onnx_ok = "onnx" in backends and attempt("onnx", lambda: write_onnx(checkpoint_to_onnx(ckpt), out / "model.onnx")
                                             or True)
    prep = prepare(out / "graph.nir", "eventsim")
    graph = prep.graph
    if data_dir is None:
        data_dir = ((meta.get("config") or {}).get("extra") or {}).get("data_dir")
    x_tb, y, sample_desc = pipeline.load_samples(prep, dataset=dataset, split=split, limit=limit,
                                                 timesteps=timesteps, file=str(out / "graph.nir"),
                                                 data_dir=data_dir)
    # torch: the static samples for direct encoding, else the very sequence the simulators get
    x = x_tb[0] if sample_desc.get("encoding") == "direct" else np.moveaxis(x_tb, 0, 1)
    if onnx_ok and sample_desc.get("encoding") != "direct":
        onnx_ok = False
        not_run["onnx"] = (f"the ONNX form is an ANN over static samples; this network's input is "
                           f"{sample_desc.get('encoding')}-encoded over T")
    accuracy: dict[str, float | None] = {}

    if "torch" in backends:
        if torch_acc is None:
            _stage(f"torch (the SNN in PyTorch) on {len(x)} {split} samples")
            torch_acc = attempt("torch", lambda: torch_accuracy(ckpt, x, y))
            if torch_acc is None and "torch" not in not_run:
                rec = _recorded_accuracy(ckpt) if limit is None and split == "test" else None
                if rec is None:
                    not_run["torch"] = f"method {method}: no direct torch SNN evaluation here"
                else:
                    torch_acc = rec
                    extra = {**(extra or {}), "torch_accuracy_source": "recorded at training (metrics.jsonl)"}
        if torch_acc is not None:
            accuracy["torch"] = torch_acc
            _stage(f"    torch accuracy {torch_acc:.4f}")

    _stage(f"eventsim on {len(x)} {split} samples")
    tr_e = pipeline.run(prep, x_tb, progress=progress, desc="eventsim")
    acc_e, pred_e = pipeline.accuracy_of(graph, tr_e, y)
    pipeline.save_trace_npz(out / "eventsim.npz", tr_e, {"accuracy": acc_e, "labels": y, "predictions": pred_e})
    accuracy["eventsim"] = acc_e
    # NeuroBench metrics need the input (membrane updates, the AC/MAC test per layer input):
    # computed here, where it is at hand, and read back by report_run_dir
    from spikebridge.hardware.neurobench import report_entry
    nb = report_entry(graph, tr_e, x=x_tb)
    if nb is not None:
        atomic_write_json(out / "neurobench.json", nb)
    _stage(f"    eventsim accuracy {acc_e:.4f}, {tr_e.per_sample('synaptic_ops'):.0f} synaptic ops/sample, "
           f"{tr_e.meta['samples_per_second']:.0f} samples/s")

    lava_info: dict = {"ran": False}
    if "lava-float" in backends:
        _stage(f"Lava (floating point) on {len(x)} samples")
        tr_l = attempt("lava-float", lambda: pipeline.run(graph, x_tb, "lava-float", progress=progress, desc="lava"))
        if tr_l is not None:
            acc_l, pred_l = pipeline.accuracy_of(graph, tr_l, y)
            pipeline.save_trace_npz(out / "lava.npz", tr_l, {"accuracy": acc_l, "labels": y, "predictions": pred_l})
            agree = float(np.mean(pred_l == pred_e))
            accuracy["lava"] = acc_l
            lava_info = {"ran": True, "precision": "float", "samples_per_second": tr_l.meta["samples_per_second"],
                         "prediction_agreement_with_eventsim": agree,
                         "synaptic_ops_per_sample": tr_l.per_sample("synaptic_ops")}
            _stage(f"    lava accuracy {acc_l:.4f} ({tr_l.meta['samples_per_second']:.0f} samples/s, "
                   f"agreement with eventsim {agree:.4f})")
    if "lava-fixed" in backends:
        _stage(f"Lava fixed point (Loihi formats, fixed_pt) on {len(x)} samples")
        tr_q = attempt("lava-fixed", lambda: pipeline.run(graph, x_tb, "lava-fixed", progress=progress,
                                                          desc="lava fixed"))
        if tr_q is not None:
            acc_q, _ = pipeline.accuracy_of(graph, tr_q, y)
            accuracy["lava_fixed"] = acc_q
            lava_info["fixed"] = {"accuracy": acc_q, "samples_per_second": tr_q.meta["samples_per_second"],
                                  "quantization_cost_vs_lava_float": (accuracy["lava"] - acc_q
                                                                      if "lava" in accuracy else None),
                                  "quantization_cost_vs_torch": (accuracy["torch"] - acc_q
                                                                 if "torch" in accuracy else None),
                                  "layers": tr_q.meta.get("fixed_point", {}).get("layers")}
            _stage(f"    lava fixed-point accuracy {acc_q:.4f}")
    onnx_info = None
    if onnx_ok:
        _stage("ONNX form in onnxruntime (measured on this CPU)")
        onnx_info = attempt("onnx", lambda: onnx_baseline(out / "model.onnx", x, y))
        if onnx_info is not None:
            accuracy["onnx_ann"] = onnx_info["accuracy"]
            onnx_info["label"] = f"measured on this CPU: {backend_label('onnx_ann', method)}"
    for name in BACKENDS:
        if name not in backends:
            not_run.setdefault(name, "not selected")
    if "onnx" in not_run:
        not_run["onnx_ann"] = not_run.pop("onnx")
    for key, name in (("lava", "lava-float"), ("lava_fixed", "lava-fixed")):
        if name in not_run:
            not_run[key] = not_run.pop(name)
    run = {"dataset": dataset, "split": split, "samples": int(len(x)), "timesteps": timesteps,
           "method": method, "arch": meta.get("arch"), "checkpoint": str(ckpt),
           "accuracy": accuracy, "not_run": not_run,
           "lava": lava_info, "onnx": onnx_info,
           "eventsim": {"samples_per_second": tr_e.meta["samples_per_second"]},
           "wall_seconds": time.perf_counter() - t_start, **(extra or {})}
    atomic_write_json(out / "run.json", run)
    return run


def run_demo(out, epochs: int = 30, timesteps: int = 4, seed: int = 0, device: str = "auto",
             progress: bool = True, lava: bool = True) -> dict:
    """Train the digits CNN with SNN2ANN, then ``run_checkpoint`` (every backend; Lava unless
    ``lava`` is False) and ``report_run_dir``."""
    from spikebridge.models.train import TrainConfig, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    _stage(f"1/3 training a spiking CNN on {DATASET} with SNN2ANN (T={timesteps}, {epochs} epochs)")
    cfg = TrainConfig(method="snn2ann", arch="cnn", dataset=DATASET, timesteps=timesteps, epochs=epochs,
                      seed=seed, device=device)
    last = train(cfg, out / "checkpoint", progress=progress)
    _stage(f"    torch SNN test accuracy {last['snn_test_accuracy']:.4f}")
    _stage("2/3 export and every backend" + ("" if lava else " (Lava skipped: --skip-lava)"))
    backends = BACKENDS if lava else tuple(b for b in BACKENDS if not b.startswith("lava"))
    run = run_checkpoint(out / "checkpoint", out, dataset=DATASET, backends=backends, required=backends,
                         progress=progress, torch_acc=last["snn_test_accuracy"],
                         extra={"seed": seed, "train": last})
    _stage("3/3 report")
    rep = report_run_dir(out)
    run["wall_seconds"] = time.perf_counter() - t_start
    atomic_write_json(out / "run.json", run)
    print_summary(rep)
    _stage(f"done in {time.perf_counter() - t_start:.0f} s: {out / 'report.html'}")
    return run


def print_summary(report_dir) -> None:
    """Print the report's summary (report.json's ``summary``) on stdout."""
    from spikebridge.base.fileio import read_json
    from spikebridge.toolchain.report import summary_lines

    rep = read_json(Path(report_dir) / "report.json", 64 << 20, InputError, allow_nan=True)
    if isinstance(rep, dict) and isinstance(rep.get("summary"), dict):
        print("\n".join(summary_lines(rep["summary"])), flush=True)


def report_checkpoint(ckpt, out=None, *, dataset: str | None = None, split: str = "test",
                      limit: int | None = None, backends=None, progress: bool = True, data_dir=None,
                      **report_kw) -> Path:
    """``spikebridge report CHECKPOINT_DIR``: ``run_checkpoint`` into ``out`` (default
    CHECKPOINT_DIR/report), then ``report_run_dir`` there. ``backends``: a subset of BACKENDS
    (those named are required to run); default every backend that can run the network, the
    others skipped with the reason on the page. ``report_kw`` go to ``report_run_dir``."""
    ckpt = Path(ckpt)
    out = Path(out) if out is not None else ckpt / "report"
    chosen = BACKENDS if backends is None else tuple(backends)
    run_checkpoint(ckpt, out, dataset=dataset, split=split, limit=limit, backends=chosen,
                   required=() if backends is None else chosen, progress=progress, data_dir=data_dir)
    return report_run_dir(out, **report_kw)


def report_run_dir(run_dir, out=None, *, energy_models=None, first_layer: str = "per_step", sweep=None,
                   weight_bits=None, max_chips: int | None = None) -> Path:
    """(Re)build report.json/html and the plots from a run directory's files, into ``out``
    (default: the run directory). ``sweep``: accuracy vs T (default: RUN_DIR/sweep.json when
    present); the other arguments go to ``spikebridge.toolchain.report.build_report``."""
    from spikebridge.hardware.graph import load_graph
    from spikebridge.toolchain import pipeline
    from spikebridge.toolchain.report import make_report

    d = Path(run_dir)
    for need in ("run.json", "graph.nir", "eventsim.npz"):
        if not (d / need).is_file():
            raise InputError(f"{need} is missing: not a run directory written by `spikebridge demo` or "
                             "`spikebridge report CHECKPOINT_DIR` (a checkpoint has model.json + weights.safetensors)",
                             file=str(d))
    from spikebridge.base.fileio import read_json
    run = read_json(d / "run.json", 4 << 20, InputError, allow_nan=True)  # bounded; nesting <= 64 levels
    try:
        accuracy = dict(run["accuracy"])
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"run.json is malformed ({e})", file=str(d / "run.json"), place="file") from None
    for k, v in accuracy.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1):
            raise InputError(f"must be a number in [0, 1] or null, got {str(v)[:40]!r}", file=str(d / "run.json"),
                             place=f"accuracy.{str(k)[:40]}")
    graph = load_graph(d / "graph.nir")
    from spikebridge.hardware.graph import analyse
    analyse(graph, file=str(d / "graph.nir"))  # graph problems are reported with the file's name
    trace = pipeline.load_trace_npz(d / "eventsim.npz", backend="eventsim")
    extra = {k: run.get(k) for k in ("dataset", "split", "samples", "train", "lava", "onnx", "eventsim",
                                     "checkpoint", "torch_accuracy_source") if k in run}
    not_run = run.get("not_run") if isinstance(run.get("not_run"), dict) else {}
    model_info = {k: run.get(k) for k in ("method", "arch", "dataset") if isinstance(run.get(k), str)}
    if sweep is None and (d / "sweep.json").is_file():
        from spikebridge.toolchain.report import load_sweep
        sweep = load_sweep(d / "sweep.json")
    neurobench = None
    if (d / "neurobench.json").is_file():  # written with the run's input (run_checkpoint)
        neurobench = read_json(d / "neurobench.json", 4 << 20, InputError, allow_nan=True)
        if not isinstance(neurobench, dict):
            raise InputError("neurobench.json must hold an object", file=str(d / "neurobench.json"))
    inputs = {"run": str(d), "dataset": run.get("dataset"), "split": run.get("split"),
              "backend of the counts": "eventsim"}
    out = Path(out) if out is not None else d
    make_report(out, graph, trace, accuracy=accuracy, seed=run.get("seed"), graph_path=d / "graph.nir",
                versions=pipeline.versions(), extra=extra, measured=run.get("onnx"), sweep=sweep,
                first_layer=first_layer, weight_bits=weight_bits, max_chips=max_chips, inputs=inputs,
                not_run={str(k)[:40]: str(v)[:300] for k, v in not_run.items()}, model_info=model_info,
                neurobench=neurobench,
                **({"energy_models": energy_models} if energy_models is not None else {}))
    return out
