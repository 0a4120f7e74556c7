"""The ``spikebridge`` command line (also ``python -m spikebridge``).

Exit codes: 0 ok; 1 internal error; 2 usage; 3 input rejected; 4 backend failure or
timeout; 130 interrupted. Errors print one line ``error: ...`` (no traceback unless
``--debug``); no command leaves a partial output file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from spikebridge.base.errors import (EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, BackendError,
                             InputError)

EXAMPLES = {
    "demo": "spikebridge demo --out runs/demo",
    "train": "spikebridge train --method snn2ann --arch cnn --dataset digits --timesteps 4 --epochs 30 --out runs/cnn",
    "export": "spikebridge export runs/cnn --format nir --out runs/cnn/graph.nir",
    "simulate": "spikebridge simulate runs/cnn/graph.nir --dataset digits --backend eventsim --out runs/cnn/sim.npz",
    "report": "spikebridge report runs/cnn --limit 200  |  spikebridge report runs/demo  |  "
              "spikebridge report graph.nir --dataset digits --out rep/  |  "
              "spikebridge report --compare runs/a runs/b runs/c --out cmp/",
    "inspect": "spikebridge inspect runs/cnn/graph.nir",
    "convert": "spikebridge convert model.onnx --timesteps 32 --calibration digits --out graph.nir",
    "doctor": "spikebridge doctor",
    "setup-lava": "spikebridge setup-lava  |  spikebridge setup-lava --venv ~/lava-env --python /usr/bin/python3.10",
}


def _parser() -> argparse.ArgumentParser:
    from spikebridge.toolchain import pipeline

    p = argparse.ArgumentParser(prog="spikebridge", description="Train spiking networks fast, export NIR/ONNX, "
                                "run them event-driven and on Lava, and report energy and latency.")
    from spikebridge import __version__
    p.add_argument("--version", action="version", version=f"spikebridge {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name, help_):
        return sub.add_parser(name, help=help_, description=help_, epilog=f"example: {EXAMPLES[name]}")

    d = cmd("demo", "train a spiking CNN on digits with SNN2ANN, export, simulate (eventsim + Lava), report")
    d.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    d.add_argument("--epochs", type=int, default=30)
    d.add_argument("--timesteps", type=int, default=4)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto", help="auto|cpu|cuda")
    d.add_argument("--skip-lava", action="store_true", help="do not run the Lava backend")

    t = cmd("train", "train a spiking network and write a checkpoint directory")
    t.add_argument("--method", default="snn2ann", help="snn2ann | bptt | qcfs | parallel | bridge | lasnn | ann")
    t.add_argument("--arch", default="cnn", help="mlp | cnn | ecnn (event frames) | vgg11 | vgg13 | resnet17 | resnet18")
    t.add_argument("--dataset", default="digits",
                   help="digits | fashion-mnist | cifar10 | cifar100 | tiny-imagenet | nmnist | dvsgesture | shd "
                        "(event data: --data-dir; docs/datasets.md)")
    t.add_argument("--timesteps", type=int, default=4, help="time steps (event data: the number of time bins "
                   "each recording is split into)")
    from spikebridge.base.encoding import ENCODINGS
    t.add_argument("--encoding", default="direct", choices=ENCODINGS,
                   help="how static images become the input over T: direct (default; the analog image every "
                        "step) | rate | latency | delta (docs/inputs.md; the same definitions as simulate/report; "
                        "rate draws with --seed). Recorded in model.json and the NIR graph. bptt trains with any; "
                        "the other methods with direct only")
    t.add_argument("--data-dir", metavar="DIR", help="event datasets: the folder with your local copy in Tonic's "
                   "layout (default $SPIKEBRIDGE_DATA_DIR/<dataset>; docs/datasets.md)")
    t.add_argument("--event-size", type=int, metavar="N", help="event datasets: dvsgesture frame side (128, 64, "
                   "32 default, 16...; pixels pooled by 128/N) | shd channels (700 default, or a divisor)")
    t.add_argument("--event-window-us", type=int, metavar="W", help="event datasets: bin into --timesteps windows "
                   "of W microseconds from each recording's first event (default: split each recording into "
                   "--timesteps equal bins)")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    from spikebridge.models.methods.options import SCHEDULES, add_train_options
    t.add_argument("--schedule", default="step", choices=SCHEDULES,
                   help="learning-rate schedule, stepped per epoch: step (x0.1 at 50/75/87.5%% of the epochs, "
                        "SNN2ANN's released setting; default) | cosine (decay to 0 over the epochs)")
    t.add_argument("--smu", default="stsu", help="spiking mapping unit: stsu | resu")
    t.add_argument("--neuron", default="lif", help="bptt: if | lif (default lif, tau 2 steps)")
    t.add_argument("--surrogate", default="atan", help="bptt: rectangular | atan | sigmoid (default atan)")
    t.add_argument("--device", default="auto", help="auto|cpu|cuda")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped "
                   "(also with a different number of processes)")
    t.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                   help="train data-parallel in N processes on this machine (torch.distributed DDP: gloo on "
                        "the CPU, nccl on GPUs; launched with torchrun's machinery). Multi-node: start "
                        "`torchrun ... -m spikebridge train ...` on every node instead")
    t.add_argument("--sync-bn", action="store_true",
                   help="distributed: BatchNorm statistics over the global batch instead of each process's "
                        "slice (the 1-process result, within float tolerance)")
    t.add_argument("--out", required=True, help="checkpoint directory")
    add_train_options(t)

    e = cmd("export", "export a checkpoint to NIR (the SNN) or ONNX (the ANN branch)")
    e.add_argument("checkpoint", help="checkpoint directory (weights.safetensors + model.json)")
    e.add_argument("--format", default="nir", choices=["nir", "onnx", "onnx-step"],
                   help="nir: the SNN; onnx: the ANN branch (bridge, lasnn: the SNN unrolled over T); onnx-step: one SNN time step with the "
                        "membranes as inputs and outputs")
    e.add_argument("--out", help="output file (default CHECKPOINT/graph.nir, CHECKPOINT/model.onnx or "
                                 "CHECKPOINT/step.onnx)")

    s = cmd("simulate", "run a NIR graph on the event-driven simulator or on Lava")
    s.add_argument("graph", help="graph.nir")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help=pipeline.INPUT_HELP)
    src.add_argument("--dataset", help="digits | fashion-mnist (encoded over T: --encoding) | nmnist | "
                     "dvsgesture | shd (event frames binned into the graph's T and input shape; --data-dir)")
    s.add_argument("--split", default="test")
    s.add_argument("--limit", type=int, help="first N samples (of the split, or of X.npy and Y.npy)")
    s.add_argument("--timesteps", type=int, help="T for --dataset and static X.npy (default: the graph's metadata)")
    pipeline.add_sample_options(s)
    s.add_argument("--out", required=True, help="OUT.npz")
    pipeline.add_run_options(s)

    r = cmd("report", "write report.json, report.html, figures (SVG + PNG) and CSV tables for a checkpoint "
                      "(run on every backend that can run it), a run directory, any NIR graph, or two runs side "
                      "by side (--compare); prints the summary")
    r.add_argument("target", nargs="?", help="a checkpoint directory written by `spikebridge train` (exported and "
                   "run on torch, eventsim, Lava float and fixed, and its ONNX form in onnxruntime), a run directory "
                   "written by `spikebridge demo` or by an earlier checkpoint report, or GRAPH.nir")
    r.add_argument("--compare", nargs="+", metavar="RUN",
                   help="compare two or more runs (folders with report.json, demo run directories, or "
                        "report.json files): tables, CSV and an accuracy-versus-energy/latency Pareto plot")
    r.add_argument("--out", help="output directory (default: CHECKPOINT/report for a checkpoint, the run "
                                 "directory for a run; required for a graph and for --compare)")
    rsrc = r.add_mutually_exclusive_group()
    rsrc.add_argument("--input", help="GRAPH.nir only: " + pipeline.INPUT_HELP)
    rsrc.add_argument("--dataset", help="GRAPH.nir: digits | fashion-mnist (encoded over T: --encoding) | nmnist | "
                                        "dvsgesture | shd (--data-dir); a checkpoint: overrides the dataset in its "
                                        "model.json")
    r.add_argument("--backends", metavar="LIST",
                   help="a checkpoint: the backends to run, comma-separated from torch, eventsim, lava-float, "
                        "lava-fixed, onnx (eventsim always runs; those named must succeed). Default: every "
                        "backend that can run the network, the others listed on the page with the reason")
    r.add_argument("--skip-lava", action="store_true", help="a checkpoint: do not run the Lava backends")
    r.add_argument("--split", default="test")
    r.add_argument("--limit", type=int, help="first N samples (of the split, or of X.npy and Y.npy)")
    r.add_argument("--timesteps", type=int, help="GRAPH.nir: T for --dataset and static X.npy (default: the "
                   "graph's metadata)")
    pipeline.add_sample_options(r, prefix="GRAPH.nir (--data-dir: also a checkpoint): ")
    pipeline.add_run_options(r)
    r.add_argument("--energy-model", action="append", default=[], metavar="FILE.toml",
                   help="add a user energy model (every constant needs a source); repeatable")
    r.add_argument("--first-layer", default="per_step", choices=["per_step", "once"],
                   help="GPU-style rule for the analog first layer: MACs at every step (per_step, "
                        "default) or once per sample (once)")
    r.add_argument("--sweep", metavar="FILE", help="accuracy vs T: .json or .npy of (T, accuracy) rows")
    r.add_argument("--sweep-timesteps", metavar="T1,T2,...",
                   help="re-run at each T on the dataset with the same backend and run options (a run "
                        "directory: on its dataset, eventsim unless --backend) and plot accuracy vs T, e.g. 1,2,4,8")
    r.add_argument("--weight-bits", type=int, help="weight bit width for the core mapping (default: "
                                                    "graph metadata, else 8)")
    r.add_argument("--max-chips", type=int, help="refuse a mapping that needs more chips")

    i = cmd("inspect", "print a graph's nodes, shapes, parameters, neuron semantics and backend support")
    i.add_argument("path", help="graph.nir or a checkpoint directory")
    pipeline.add_run_options(i, running=False, profile_help="show neuron semantics as this profile reads them "
                             "(default: the file's spikebridge metadata); third-party graphs are adapted as the "
                             "profiles read them")
    i.add_argument("--lava", action="store_true",
                   help="the Lava lowering per layer: process, shape, weight bits and exponent, threshold, "
                        "decays, quantisation error")

    c = cmd("convert", "convert a ReLU/Clip ANN in ONNX into an IF SNN (NIR) with threshold balancing")
    c.add_argument("model", help="model.onnx (input (N, *input_shape), one output: the logits)")
    c.add_argument("--timesteps", type=int, required=True, help="T the SNN runs for (direct encoding)")
    c.add_argument("--calibration", required=True,
                   help="a dataset name (its train split) or X.npy: samples (N, *input_shape), preprocessed "
                        "as the model expects")
    c.add_argument("--calibration-limit", type=int, default=1000, help="first N calibration samples (1000)")
    c.add_argument("--percentile", type=float, default=99.9,
                   help="threshold = this percentile of each layer's positive activations (99.9)")
    c.add_argument("--readout", default="sum", choices=["sum", "count"],
                   help="sum: analog classifier summed over T (default, most accurate); count: most spikes")
    c.add_argument("--evaluate", metavar="DATASET",
                   help="also report ONNX vs SNN (eventsim) accuracy on DATASET's test split")
    c.add_argument("--limit", type=int, help="with --evaluate: first N test samples")
    c.add_argument("--out", required=True, help="graph.nir")

    b = sub.add_parser("bench", help="benchmarks (prints JSON)", description="benchmarks (prints JSON)",
                       epilog="example: spikebridge bench methods --help  |  spikebridge bench simulate --quick")
    b.add_argument("which", choices=["methods", "simulate", "train", "distributed", "loihi"],
                   help="train: SNN2ANN vs the BPTT baseline (time, memory, accuracy, spikes); "
                        "methods: every training method at T = 1, 2, 4, 8; distributed: samples/s of sharded "
                        "simulation and DDP training with 1 and 2 processes (wall, CPU, load); simulate: eventsim vs a dense "
                        "per-step reference, snnTorch (if installed) and Lava, over activity and T; loihi: the bit-exact "
                        "integer model (profile loihi-fixed) vs Lava fixed_pt")
    b.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of the benchmark (see its --help)")

    cmd("doctor", "check the environments: Python, packages, the Lava interpreter and whether Lava runs")

    sl = cmd("setup-lava", "build the Lava worker environment (a Python 3.10 venv with lava-nc 0.10.0, nir, "
                           "h5py); the Lava backend then finds it")
    sl.add_argument("--venv", metavar="DIR", help="where to build it (default: $SPIKEBRIDGE_LAVA_VENV, else "
                    "$XDG_DATA_HOME/spikebridge/lava-venv, i.e. ~/.local/share/spikebridge/lava-venv). "
                    "Elsewhere: set SPIKEBRIDGE_LAVA_VENV=DIR so the Lava backend uses it")
    sl.add_argument("--python", metavar="PYTHON3.10", help="the Python 3.10 to build it with (default: "
                    "$SPIKEBRIDGE_LAVA_PYTHON, python3.10 on PATH, pyenv's 3.10, `uv python find 3.10`)")
    sl.add_argument("--force", action="store_true", help="reinstall the requirements even if Lava already imports")
    return p


_BIDI = {0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069, 0x200E, 0x200F}


def terminal_safe(text: str) -> str:
    """``text`` with every character a terminal would act on escaped: C0/C1 controls (ESC
    starts colour codes and OSC title sequences, BEL, CR, ...), DEL, bidirectional overrides
    and lone surrogates (undecodable bytes of a file name) become ``\\xNN`` / ``\\uNNNN``."""
    out = []
    for ch in text:
        o = ord(ch)
        if o < 0x20 or 0x7F <= o <= 0x9F:
            out.append(f"\\x{o:02x}")
        elif o in _BIDI or 0xD800 <= o <= 0xDFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _error(text: str) -> None:
    """The one ``error: ...`` line (terminal-safe, one line whatever the message holds)."""
    print("error: " + terminal_safe(str(text)), file=sys.stderr, flush=True)


def _output_paths(args) -> list[tuple[str, str]]:
    """(path, "file" | "folder") a command will write (checked before any computation)."""
    cmd = args.command
    out = getattr(args, "out", None)
    if cmd == "export":
        return [(out, "file")] if out else [(args.checkpoint, "folder")]
    if cmd == "report":
        if out:
            return [(out, "folder")]
        return [(args.target, "folder")] if args.target and Path(args.target).is_dir() else []
    if cmd in ("simulate", "convert") and out:
        return [(out, "file")]
    if cmd in ("train", "demo") and out:
        return [(out, "folder")]
    return []


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.no_progress or os.environ.get("CI"):
        os.environ.setdefault("TQDM_DISABLE", "1")
    import contextlib
    import signal

    from spikebridge.base.fileio import check_writable, output_lock
    if hasattr(signal, "SIGXFSZ"):  # over a file-size limit: EFBIG (reported in one line), not a core dump
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        for path, kind in _output_paths(args):
            check_writable(path, "--out" if path == getattr(args, "out", None) else "output folder", kind)
        lock = contextlib.nullcontext()
        if args.command in ("train", "demo") and "WORLD_SIZE" not in os.environ:
            lock = output_lock(args.out)  # torchrun's ranks run under the launcher's lock
        with lock, warnings.catch_warnings(record=True) as caught:
            code = COMMANDS[args.command](args) or EXIT_OK
        # spikebridge's own warnings (e.g. no --profile for another library's graph): one
        # terminal-safe `warning: ...` line each, after a command that succeeded (a refusal stays
        # one line); other packages' warnings are shown as Python shows them
        ours = [w for w in caught if w.category.__module__.startswith("spikebridge")]
        for text in dict.fromkeys(" ".join(str(w.message).split()) for w in ours):
            print("warning: " + terminal_safe(text), file=sys.stderr, flush=True)
        for w in caught:
            if w not in ours:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        return code
    except (InputError, BackendError) as e:
        if args.debug:
            raise
        _error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug: say so in one line, traceback with --debug
        if args.debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        _error(f"internal error ({type(e).__name__}: {msg}); rerun with --debug for the traceback")
        return EXIT_INTERNAL


def _progress(args) -> bool:
    return not (args.no_progress or os.environ.get("TQDM_DISABLE") == "1")


# ---- commands ---------------------------------------------------------------------

def cmd_train(args) -> int:
    from spikebridge.models.train import TrainConfig, train

    cfg = TrainConfig(method=args.method, arch=args.arch, dataset=args.dataset, timesteps=args.timesteps,
                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule, smu=args.smu,
                      seed=args.seed, device=args.device, neuron=args.neuron, surrogate=args.surrogate,
                      sync_bn=args.sync_bn, encoding=args.encoding)
    from spikebridge.models.methods.options import extra_from_args
    cfg.extra.update(extra_from_args(args))
    if args.data_dir is not None:
        cfg.extra["data_dir"] = str(Path(args.data_dir).resolve())
    if args.event_size is not None:
        cfg.extra["event_size"] = args.event_size
    if args.event_window_us is not None:
        cfg.extra["event_window_us"] = args.event_window_us
    if getattr(args, "limit_train", None):
        cfg.limit_train = args.limit_train
    if args.nproc_per_node < 1:
        raise InputError("--nproc-per-node must be at least 1")
    if args.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        from spikebridge.models.train import launch
        row = launch(args.nproc_per_node, cfg, args.out, resume=args.resume, progress=_progress(args))
    else:
        row = train(cfg, args.out, progress=_progress(args), resume=args.resume)
        if int(os.environ.get("RANK", "0") or 0) != 0:
            return 0  # under torchrun: rank 0 prints the result
    print(json.dumps({"checkpoint": args.out, **row}))
    return 0


def cmd_export(args) -> int:
    ckpt = Path(args.checkpoint)
    if args.format == "nir":
        from spikebridge.exporters.nir_export import checkpoint_to_nir, write_nir
        out = Path(args.out or ckpt / "graph.nir")
        write_nir(checkpoint_to_nir(ckpt), out)
    elif args.format == "onnx-step":
        from spikebridge.exporters.onnx_export import write_onnx
        from spikebridge.exporters.onnx_step import checkpoint_to_onnx_step
        out = Path(args.out or ckpt / "step.onnx")
        write_onnx(checkpoint_to_onnx_step(ckpt), out)
    else:
        from spikebridge.exporters.onnx_export import checkpoint_to_onnx, write_onnx
        out = Path(args.out or ckpt / "model.onnx")
        write_onnx(checkpoint_to_onnx(ckpt), out)
    print(f"wrote {out}")
    return 0


def cmd_simulate(args) -> int:
    import numpy as np

    from spikebridge.hardware.backends import RunOptions, prepare
    from spikebridge.toolchain import pipeline

    prep = prepare(args.graph, args.backend, pipeline.run_options(args), file=args.graph)
    x_tb, labels, desc = pipeline.load_samples(prep, input_npy=args.input, dataset=args.dataset, split=args.split,
                                               limit=args.limit, timesteps=args.timesteps, file=args.graph,
                                               **pipeline.sample_options(args))
    trace = pipeline.run(prep, x_tb, progress=_progress(args), desc=args.backend)
    extra = {}
    summary = {"backend": args.backend, "samples": trace.batch, "timesteps": trace.timesteps,
               "synaptic_ops_per_sample": trace.per_sample("synaptic_ops"),
               "macs_per_sample": trace.per_sample("macs"),
               "spikes_per_sample": trace.per_sample("spikes"),
               "samples_per_second": trace.meta.get("samples_per_second"), "inputs": desc,
               "input_layer": trace.meta.get("input_layer")}
    summary.update({k: trace.meta[k] for k in ("workers", "shards") if k in trace.meta})
    if labels is not None:
        acc, preds = pipeline.accuracy_of(prep.graph, trace, labels)
        extra = {"accuracy": np.float64(acc), "labels": labels, "predictions": preds}
        summary["accuracy"] = acc
    if trace.meta.get("approximation"):  # a neuron Lava cannot express run as Lava's: say what it costs
        from spikebridge.hardware.loihi.runner import output_agreement
        exact = pipeline.run(prep.graph, x_tb, "eventsim", RunOptions(dt=args.dt, profile=prep.options.profile),
                             progress=False)
        rz = {"approximation": trace.meta["approximation"],
              "output_agreement_with_eventsim": output_agreement(trace, exact)}
        if labels is not None:
            acc_soft, _ = pipeline.accuracy_of(prep.graph, exact, labels)
            rz.update({"eventsim_soft_reset_accuracy": acc_soft, "accuracy_cost": acc_soft - acc})
        summary["reset_to_zero"] = rz
    if prep.backend.name.startswith("lava"):
        summary["lava"] = {"precision": prep.backend.precision,
                           "delay_steps_raw": trace.meta.get("lava_delay_steps"),
                           "timing": "outputs aligned (delay removed); raw Lava step = k*window + j + delay + 1"}
    pipeline.save_trace_npz(args.out, trace, extra)
    print(json.dumps(summary))
    return 0


def cmd_inspect(args) -> int:
    from spikebridge.toolchain.inspect import inspect_lava, inspect_path
    from spikebridge.toolchain.pipeline import run_options
    if args.lava and args.backend:
        raise InputError("--lava describes the Loihi plan (the lava and loihi-fixed backends); give no --backend")
    print(inspect_lava(args.path, run_options(args)) if args.lava else
          inspect_path(args.path, args.profile, run_options(args), args.backend))
    return 0


def cmd_doctor(args) -> int:
    from spikebridge.toolchain.doctor import doctor
    text, ok = doctor()
    print(text)
    return 0 if ok else 4


def cmd_setup_lava(args) -> int:
    from spikebridge.hardware.lava.interpreter import find_lava_venv, setup_lava_venv
    venv = setup_lava_venv(Path(args.venv) if args.venv else None, python=args.python, force=args.force,
                           log=lambda m: print(f"[setup-lava] {m}", file=sys.stderr))
    found, _ = find_lava_venv()
    if found.absolute() != venv:
        print(f"[setup-lava] the Lava backend looks elsewhere first; use this one with: "
              f"export SPIKEBRIDGE_LAVA_VENV={venv}", file=sys.stderr)
    print(venv)
    return 0


def cmd_demo(args) -> int:
    from spikebridge.toolchain.demo import run_demo
    run_demo(args.out, epochs=args.epochs, timesteps=args.timesteps, seed=args.seed, device=args.device,
             progress=_progress(args), lava=not args.skip_lava)
    return 0


def cmd_report(args) -> int:
    from spikebridge.toolchain.report import energy_models_with, load_sweep, parse_timesteps_list

    def usage(msg: str) -> int:
        print(f"error: report: {msg}", file=sys.stderr)
        return EXIT_USAGE

    if args.compare:
        if args.target or not args.out:
            return usage("--compare RUN [RUN ...] takes no other positional argument and needs --out DIR")
        from spikebridge.toolchain.compare import compare_runs
        compare_runs(args.compare, args.out)
        out = Path(args.out)
        print(f"wrote {out / 'compare.json'}, {out / 'compare.csv'}, {out / 'compare.html'} and "
              f"{out / 'compare_pareto.svg'}")
        return 0
    if not args.target:
        return usage("give a checkpoint directory, a run directory, GRAPH.nir, or --compare RUN RUN [RUN ...]")
    target = Path(args.target)
    is_ckpt = target.is_dir() and (target / "model.json").is_file() and not (target / "run.json").is_file()
    if not is_ckpt and (args.backends or args.skip_lava):
        return usage("--backends/--skip-lava are for a checkpoint directory")
    models = energy_models_with(args.energy_model)
    sweep = load_sweep(args.sweep) if args.sweep else None
    sweep_ts = parse_timesteps_list(args.sweep_timesteps) if args.sweep_timesteps else None
    if sweep is not None and sweep_ts:
        return usage("give --sweep or --sweep-timesteps, not both")
    common = dict(energy_models=models, first_layer=args.first_layer, weight_bits=args.weight_bits,
                  max_chips=args.max_chips)
    if is_ckpt:
        from spikebridge.toolchain import pipeline
        from spikebridge.toolchain.demo import BACKENDS, parse_backends, report_checkpoint
        options = pipeline.run_options(args)
        given = sorted({"--" + f.replace("_", "-") for f in options.given()} - {"--limit"}
                       | ({"--backend"} if args.backend != "eventsim" else set())
                       | ({"--input"} if args.input else set()) | ({"--timesteps"} if args.timesteps else set())
                       | ({"--sweep-timesteps"} if sweep_ts else set())
                       | ({"--labels"} if args.labels else set()) | ({"--encoding"} if args.encoding else set()))
        if given:
            return usage(f"{', '.join(given)}: a checkpoint runs every backend with its own settings (choose "
                         "them with --backends); export it and report the graph for other run options")
        backends = parse_backends(args.backends) if args.backends else None
        if args.skip_lava:
            backends = tuple(b for b in (backends or BACKENDS) if not b.startswith("lava"))
        out = report_checkpoint(target, args.out, dataset=args.dataset, split=args.split, limit=args.limit,
                                backends=backends, data_dir=args.data_dir, progress=_progress(args), sweep=sweep, **common)
    elif target.is_dir():
        if args.input or args.dataset or args.labels or args.encoding or args.data_dir:
            return usage("--input/--dataset/--labels/--encoding/--data-dir are for GRAPH.nir; a run directory "
                         "has its own data")
        from spikebridge.toolchain.demo import report_run_dir
        from spikebridge.toolchain import pipeline
        options = pipeline.run_options(args)
        if sweep_ts:
            from spikebridge.toolchain.report import sweep_for_run
            sweep = sweep_for_run(target, sweep_ts, args.out, progress=_progress(args), backend=args.backend,
                                  options=options)
        elif options.given() or args.backend != "eventsim":
            flags = ", ".join(sorted({"--" + f.replace("_", "-") for f in options.given()}
                                     | ({"--backend"} if args.backend != "eventsim" else set())))
            return usage(f"{flags}: a run directory is reported from its saved results; run options apply "
                         "only to its --sweep-timesteps re-runs")
        out = report_run_dir(target, args.out, sweep=sweep, **common)
    else:
        if not args.out:
            return usage("a graph needs --out DIR")
        if not (args.input or args.dataset):
            return usage("a graph needs --input X.npy or --dataset NAME")
        from spikebridge.toolchain import pipeline
        from spikebridge.toolchain.report import report_graph
        report_graph(target, args.out, input_npy=args.input, dataset=args.dataset, split=args.split,
                     limit=args.limit, timesteps=args.timesteps, backend=args.backend,
                     samples=pipeline.sample_options(args),
                     options=pipeline.run_options(args),
                     sweep=sweep, sweep_timesteps=sweep_ts, progress=_progress(args), **common)
        out = Path(args.out)
    from spikebridge.toolchain.demo import print_summary
    print_summary(out)
    print(f"wrote {out / 'report.json'} and {out / 'report.html'} (figures .svg/.png and tables .csv beside it)")
    return 0


def cmd_bench(args) -> int:
    import importlib
    mod = importlib.import_module(f"spikebridge.benchmarks.bench_{args.which}")
    return mod.main(args.bench_args, progress=_progress(args))


COMMANDS = {"bench": cmd_bench, "train": cmd_train, "export": cmd_export, "simulate": cmd_simulate, "inspect": cmd_inspect,
            "doctor": cmd_doctor, "demo": cmd_demo, "report": cmd_report, "setup-lava": cmd_setup_lava}

def cmd_convert(args) -> int:
    from spikebridge.exporters.onnx_to_nir import calibration_samples, compare_accuracy, convert_onnx, write_graph

    if args.calibration_limit is not None and args.calibration_limit < 1:
        raise InputError("--calibration-limit must be at least 1")
    from spikebridge.toolchain.safety import load_onnx
    model = load_onnx(args.model)  # dims, sizes, nesting, functions and external data checked before conversion
    x = calibration_samples(args.calibration, args.calibration_limit)
    graph, summary = convert_onnx(model, x, args.timesteps, percentile=args.percentile, readout=args.readout,
                                  file=args.model)
    if args.evaluate:
        from spikebridge.models.datasets import load_dataset
        xe, ye = load_dataset(args.evaluate, "test")
        if args.limit is not None:
            if args.limit < 1:
                raise InputError("--limit must be at least 1")
            xe, ye = xe[:args.limit], ye[:args.limit]
        summary.update(compare_accuracy(graph, model, xe, ye))
    write_graph(graph, args.out)
    print(json.dumps({"graph": str(args.out), **summary}))
    return 0


COMMANDS["convert"] = cmd_convert

if __name__ == "__main__":
    sys.exit(main())
