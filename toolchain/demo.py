"""The demo pipeline: train -> export -> simulate (eventsim, Lava) -> ONNX baseline -> report.

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
    print(f"[spikebridge] {msg}", flush=True)


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


def run_demo(out, epochs: int = 30, timesteps: int = 4, seed: int = 0, device: str = "auto",
             progress: bool = True, lava: bool = True) -> dict:
    from spikebridge.exporters.nir_export import checkpoint_to_nir, write_nir
    from spikebridge.exporters.onnx_export import checkpoint_to_onnx, write_onnx
    from spikebridge.hardware.backends import prepare
    from spikebridge.models.train import TrainConfig, train
    from spikebridge.toolchain import pipeline

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    _stage(f"1/5 training a spiking CNN on {DATASET} with SNN2ANN (T={timesteps}, {epochs} epochs)")
    cfg = TrainConfig(method="snn2ann", arch="cnn", dataset=DATASET, timesteps=timesteps, epochs=epochs,
                      seed=seed, device=device)
    last = train(cfg, out / "checkpoint", progress=progress)
    _stage(f"    torch SNN test accuracy {last['snn_test_accuracy']:.4f}")

    _stage("2/5 exporting graph.nir (the SNN) and model.onnx (the ANN branch)")
    write_nir(checkpoint_to_nir(out / "checkpoint"), out / "graph.nir")
    write_onnx(checkpoint_to_onnx(out / "checkpoint"), out / "model.onnx")

    prep = prepare(out / "graph.nir", "eventsim")
    graph = prep.graph
    x, y = pipeline.dataset_samples(DATASET, "test", None, prep.input_shape)
    x_tb = pipeline.direct_encode(x, timesteps)

    _stage(f"3/5 event-driven simulator on the {len(x)} test samples")
    tr_e = pipeline.run(prep, x_tb, progress=progress, desc="eventsim")
    acc_e, pred_e = pipeline.accuracy_of(graph, tr_e, y)
    pipeline.save_trace_npz(out / "eventsim.npz", tr_e, {"accuracy": acc_e, "labels": y, "predictions": pred_e})
    _stage(f"    eventsim accuracy {acc_e:.4f}, {tr_e.per_sample('synaptic_ops'):.0f} synaptic ops/sample, "
           f"{tr_e.meta['samples_per_second']:.0f} samples/s")

    acc_l = acc_q = None
    lava_info = {"ran": False}
    if lava:
        _stage(f"4/5 Lava (floating point) on the {len(x)} test samples")
        tr_l = pipeline.run(graph, x_tb, "lava-float", progress=progress, desc="lava")
        acc_l, pred_l = pipeline.accuracy_of(graph, tr_l, y)
        pipeline.save_trace_npz(out / "lava.npz", tr_l, {"accuracy": acc_l, "labels": y, "predictions": pred_l})
        agree = float(np.mean(pred_l == pred_e))
        lava_info = {"ran": True, "precision": "float", "samples_per_second": tr_l.meta["samples_per_second"],
                     "prediction_agreement_with_eventsim": agree,
                     "synaptic_ops_per_sample": tr_l.per_sample("synaptic_ops")}
        _stage(f"    lava accuracy {acc_l:.4f} ({tr_l.meta['samples_per_second']:.0f} samples/s, "
               f"agreement with eventsim {agree:.4f})")
        _stage(f"4/5 Lava fixed point (Loihi formats, fixed_pt) on the {len(x)} test samples")
        tr_q = pipeline.run(graph, x_tb, "lava-fixed", progress=progress, desc="lava fixed")
        acc_q, _ = pipeline.accuracy_of(graph, tr_q, y)
        lava_info["fixed"] = {"accuracy": acc_q, "samples_per_second": tr_q.meta["samples_per_second"],
                              "quantization_cost_vs_lava_float": acc_l - acc_q,
                              "quantization_cost_vs_torch": last["snn_test_accuracy"] - acc_q,
                              "layers": tr_q.meta.get("fixed_point", {}).get("layers")}
        _stage(f"    lava fixed-point accuracy {acc_q:.4f} (quantisation cost {acc_l - acc_q:+.4f} vs float)")
    else:
        _stage("4/5 Lava skipped (--skip-lava)")

    _stage("5/5 ONNX baseline and report")
    onnx_info = onnx_baseline(out / "model.onnx", x, y)
    run = {"dataset": DATASET, "split": "test", "samples": int(len(x)), "timesteps": timesteps, "seed": seed,
           "accuracy": {"torch": last["snn_test_accuracy"], "eventsim": acc_e, "lava": acc_l,
                        "lava_fixed": acc_q,
                        "onnx_ann": onnx_info["accuracy"]},
           "train": last, "lava": lava_info, "onnx": onnx_info,
           "eventsim": {"samples_per_second": tr_e.meta["samples_per_second"]},
           "wall_seconds": time.perf_counter() - t_start}
    atomic_write_json(out / "run.json", run)
    report_run_dir(out)
    _stage(f"done in {time.perf_counter() - t_start:.0f} s: {out / 'report.html'}")
    return run


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
            raise InputError(f"{need} is missing: not a run directory written by `spikebridge demo`", file=str(d))
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
    extra = {k: run.get(k) for k in ("dataset", "split", "samples", "train", "lava", "onnx", "eventsim")}
    if sweep is None and (d / "sweep.json").is_file():
        from spikebridge.toolchain.report import load_sweep
        sweep = load_sweep(d / "sweep.json")
    inputs = {"run": str(d), "dataset": run.get("dataset"), "split": run.get("split"),
              "backend of the counts": "eventsim"}
    out = Path(out) if out is not None else d
    make_report(out, graph, trace, accuracy=accuracy, seed=run.get("seed"), graph_path=d / "graph.nir",
                versions=pipeline.versions(), extra=extra, measured=run.get("onnx"), sweep=sweep,
                first_layer=first_layer, weight_bits=weight_bits, max_chips=max_chips, inputs=inputs,
                **({"energy_models": energy_models} if energy_models is not None else {}))
    return out
