"""Export-equivalence harness: train tiny checkpoints of every method/arch, export them, and
compare exports made by two versions of the code by content.

    # 1. tiny checkpoints (any version of the code that trains them)
    python scripts/export_equivalence.py train OUT/ckpt
    # 2. exports with the code on PYTHONPATH (run once per version)
    PYTHONPATH=/path/to/old python scripts/export_equivalence.py export OUT/ckpt OUT/old
    PYTHONPATH=$PWD         python scripts/export_equivalence.py export OUT/ckpt OUT/new
    # tiny reference checkpoints (tests/data/exports) and their export digests (old code)
    PYTHONPATH=/path/to/old python scripts/export_equivalence.py tiny tests/data/exports
    PYTHONPATH=/path/to/old python scripts/export_equivalence.py digests tests/data/exports \\
        tests/data/exports/digests.json
    # 3. content comparison (NIR: node types, every parameter array exactly, metadata;
    #    ONNX: nodes, attributes, initializers exactly, model properties)
    python scripts/export_equivalence.py compare OUT/old OUT/new

Every case is trained with ``--dataset digits --limit-train 64 --epochs 1``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

COMMON = ["--dataset", "digits", "--limit-train", "64", "--epochs", "1", "--limit-test", "64",
          "--device", "cpu", "--timesteps", "4"]
CASES = {  # name -> extra train arguments
    "snn2ann-mlp": ["--method", "snn2ann", "--arch", "mlp"],
    "snn2ann-cnn": ["--method", "snn2ann", "--arch", "cnn"],
    "bptt-lif-mlp": ["--method", "bptt", "--neuron", "lif", "--arch", "mlp"],
    "bptt-lif-cnn": ["--method", "bptt", "--neuron", "lif", "--arch", "cnn"],
    "bptt-if-mlp": ["--method", "bptt", "--neuron", "if", "--arch", "mlp"],
    "bptt-if-cnn": ["--method", "bptt", "--neuron", "if", "--arch", "cnn"],
    "qcfs-mlp": ["--method", "qcfs", "--arch", "mlp"],
    "qcfs-cnn": ["--method", "qcfs", "--arch", "cnn"],
    "parallel-mlp": ["--method", "parallel", "--arch", "mlp"],
    "parallel-cnn": ["--method", "parallel", "--arch", "cnn"],
    "parallel-window-cnn": ["--method", "parallel", "--arch", "cnn", "--deploy", "window"],
    "bridge-mlp": ["--method", "bridge", "--arch", "mlp"],
    "bridge-cnn": ["--method", "bridge", "--arch", "cnn"],
    "lasnn-mlp": ["--method", "lasnn", "--arch", "mlp"],
    "lasnn-cnn": ["--method", "lasnn", "--arch", "cnn"],
    "ann-mlp": ["--method", "ann", "--arch", "mlp"],
    "ann-cnn": ["--method", "ann", "--arch", "cnn"],
}
# resnet-style and max-pool layer lists on 8x8 inputs (the real resnet17/vgg11 need 32x32 images):
# built from a trained digits checkpoint's model.json with these layers and seeded random weights
RES = [{"name": "conv1", "type": "conv", "out_channels": 8, "kernel_size": 3, "stride": 1, "padding": 1, "bn": True,
        "neuron": True},
       {"name": "block1", "type": "resblock", "out_channels": 8, "stride": 1, "neuron": True},
       {"name": "block2", "type": "resblock", "out_channels": 16, "stride": 2, "neuron": True},
       {"name": "gap", "type": "avgpool", "kernel_size": 2, "neuron": True},
       {"name": "flatten", "type": "flatten"},
       {"name": "classifier", "type": "linear", "out_features": 10, "bn": False, "neuron": False}]
MAXPOOL = [{"name": "conv1", "type": "conv", "out_channels": 8, "kernel_size": 3, "stride": 1, "padding": 1,
            "bn": True, "neuron": True, "maxpool": 2},
           {"name": "flatten", "type": "flatten"},
           {"name": "classifier", "type": "linear", "out_features": 10, "bn": False, "neuron": False}]
SYNTH = {"snn2ann-res": ("snn2ann-cnn", RES), "bptt-lif-res": ("bptt-lif-cnn", RES),
         "bptt-if-res": ("bptt-if-cnn", RES), "snn2ann-maxpool": ("snn2ann-cnn", MAXPOOL)}
# tiny layer lists for the stored reference checkpoints of tests/data/exports (a few KB each)
_FC = {"type": "linear", "bn": True, "neuron": True}
_CLS = {"name": "classifier", "type": "linear", "out_features": 10, "bn": False, "neuron": False}
TINY_SPECS = {
    "mlp": [{"name": "flatten", "type": "flatten"}, {"name": "fc1", "out_features": 6, **_FC}, _CLS],
    "cnn": [{"name": "conv1", "type": "conv", "out_channels": 2, "kernel_size": 3, "stride": 2, "padding": 1,
             "bn": True, "neuron": True},
            {"name": "flatten", "type": "flatten"}, {"name": "fc1", "out_features": 6, **_FC}, _CLS],
    "res": [{"name": "conv1", "type": "conv", "out_channels": 2, "kernel_size": 3, "stride": 1, "padding": 1,
             "bn": True, "neuron": True},
            {"name": "block1", "type": "resblock", "out_channels": 2, "stride": 1, "neuron": True},
            {"name": "block2", "type": "resblock", "out_channels": 3, "stride": 2, "neuron": True},
            {"name": "pool", "type": "avgpool", "kernel_size": 4, "neuron": True},
            {"name": "flatten", "type": "flatten"}, _CLS],
    "maxpool": [{"name": "conv1", "type": "conv", "out_channels": 2, "kernel_size": 3, "stride": 1, "padding": 1,
                 "bn": True, "neuron": True, "maxpool": 2},
                {"name": "flatten", "type": "flatten"}, _CLS],
}
TINY = {  # case -> (tiny spec, train arguments)
    "snn2ann-mlp": ("mlp", ["--method", "snn2ann"]),
    "snn2ann-cnn": ("cnn", ["--method", "snn2ann"]),
    "snn2ann-res": ("res", ["--method", "snn2ann"]),
    "snn2ann-maxpool": ("maxpool", ["--method", "snn2ann"]),
    "bptt-lif-cnn": ("cnn", ["--method", "bptt", "--neuron", "lif"]),
    "bptt-lif-res": ("res", ["--method", "bptt", "--neuron", "lif"]),
    "bptt-if-mlp": ("mlp", ["--method", "bptt", "--neuron", "if"]),
    "qcfs-mlp": ("mlp", ["--method", "qcfs"]),
    "qcfs-cnn": ("cnn", ["--method", "qcfs"]),
    "parallel-cnn": ("cnn", ["--method", "parallel"]),
    "parallel-window-cnn": ("cnn", ["--method", "parallel", "--deploy", "window"]),
    "bridge-mlp": ("mlp", ["--method", "bridge"]),
    "bridge-cnn": ("cnn", ["--method", "bridge"]),
    "lasnn-cnn": ("cnn", ["--method", "lasnn"]),
    "ann-mlp": ("mlp", ["--method", "ann"]),
    "ann-cnn": ("cnn", ["--method", "ann"]),
}
FORMATS = {"nir": "graph.nir", "onnx": "model.onnx", "onnx-step": "step.onnx"}


def _cli(argv):
    import contextlib
    import io

    from spikebridge.toolchain.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, err.getvalue().strip().splitlines()[-1:] if err.getvalue().strip() else []


def train(ckpt_root: Path) -> None:
    for name, extra in CASES.items():
        out = ckpt_root / name
        if (out / "model.json").is_file():
            continue
        rc, err = _cli(["--no-progress", "train", *COMMON, *extra, "--out", str(out)])
        print(f"train {name}: exit {rc} {' '.join(err)}", flush=True)


def synth(ckpt_root: Path) -> None:
    """Checkpoints of SYNTH: the model.json of a trained case with another layer list, and the
    method's freshly initialised network (seed 0) with randomised BN statistics as weights."""
    import torch

    from spikebridge.models.checkpoint import read_meta, save_checkpoint
    from spikebridge.models.train import TrainConfig, make_model

    for name, (src, layers) in SYNTH.items():
        out = ckpt_root / name
        if (out / "model.json").is_file() or not (ckpt_root / src / "model.json").is_file():
            continue
        meta = read_meta(ckpt_root / src)
        cfg = TrainConfig(**{k: v for k, v in meta["config"].items() if k in TrainConfig.__dataclass_fields__})
        torch.manual_seed(0)
        import spikebridge.models.architectures as A
        orig = A.build_spec
        A.build_spec = lambda *a, **k: [dict(x) for x in layers]
        try:
            import spikebridge.models.train as TR
            TR.build_spec = A.build_spec
            model = make_model(cfg, meta["input_shape"], meta["num_classes"])
        finally:
            A.build_spec = orig
            TR.build_spec = orig
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if k.endswith("running_mean"):
                    v.copy_(torch.randn_like(v) * 0.1)
                elif k.endswith("running_var"):
                    v.copy_(torch.rand_like(v) + 0.5)
        meta = {k: v for k, v in meta.items() if k not in ("format", "format_version")}
        meta["layers"] = [dict(x) for x in layers]
        save_checkpoint(out, model.state_dict(), meta)
        print(f"synth {name}: from {src}", flush=True)


def tiny(out_root: Path) -> None:
    """Train the TINY cases (the arch's layer list replaced by TINY_SPECS, in every module that
    imported build_spec) and keep only weights.safetensors + model.json, with the run's own
    paths replaced by '.'."""
    import importlib
    import shutil
    import tempfile

    for name, (spec_name, extra) in TINY.items():
        out = out_root / name
        if (out / "model.json").is_file():
            continue
        spec = TINY_SPECS[spec_name]
        patched = []
        for mod in ("spikebridge.models.architectures", "spikebridge.models.train", "spikebridge.models.methods.common",
                    "spikebridge.models.methods.snn2ann"):
            try:
                m = importlib.import_module(mod)
            except ImportError:
                continue
            if hasattr(m, "build_spec"):
                patched.append((m, m.build_spec))
                m.build_spec = lambda *a, **k: [dict(x) for x in spec]
        try:
            with tempfile.TemporaryDirectory() as tmp:
                rc, err = _cli(["--no-progress", "train", *COMMON, "--arch", "cnn", *extra, "--out", f"{tmp}/ck"])
                print(f"tiny {name}: exit {rc} {' '.join(err)}", flush=True)
                if rc == 0:
                    out.mkdir(parents=True, exist_ok=True)
                    shutil.copy(f"{tmp}/ck/weights.safetensors", out / "weights.safetensors")
                    text = (Path(tmp) / "ck" / "model.json").read_text().replace(f"{tmp}/ck", ".").replace(tmp, ".")
                    (out / "model.json").write_text(text)
        finally:
            for m, f in patched:
                m.build_spec = f


def content_digest(path) -> str:
    """sha256 of a canonical description of an exported file's content (NIR: node types, every
    field, arrays by dtype/shape/bytes, edges, metadata; ONNX: nodes, initialisers, I/O,
    opset, properties), independent of the HDF5/protobuf byte layout."""
    import hashlib

    import numpy as np

    def canon(v):
        if isinstance(v, tuple) and len(v) == 4 and v[0] == "array":
            return ["array", v[1], list(v[2]), hashlib.sha256(v[3]).hexdigest()]
        if isinstance(v, bytes):
            return hashlib.sha256(v).hexdigest()
        if isinstance(v, dict):
            return {str(k): canon(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
        if isinstance(v, (list, tuple)):
            return [canon(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        return v

    path = Path(path)
    c = nir_content(path) if path.suffix == ".nir" else onnx_content(path)
    if path.suffix != ".nir":
        c["initializers"] = {k: ("array", *v) for k, v in c["initializers"].items()}
    return hashlib.sha256(json.dumps(canon(c), sort_keys=True, default=str).encode()).hexdigest()


def digests(ckpt_root: Path, out_json: Path) -> None:
    """Export every checkpoint under ckpt_root in every format; write {case.format: digest or
    'exit N'} as JSON."""
    import tempfile

    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for d in sorted(p for p in ckpt_root.iterdir() if (p / "model.json").is_file()):
            for fmt, fname in FORMATS.items():
                out = Path(tmp) / f"{d.name}.{fname}"
                rc, _ = _cli(["export", str(d), "--format", fmt, "--out", str(out)])
                res[f"{d.name}.{fmt}"] = content_digest(out) if rc == 0 else f"exit {rc}"
    out_json.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")


def export(ckpt_root: Path, out_root: Path) -> None:
    out_root.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in [*CASES, *SYNTH]:
        if not (ckpt_root / name / "model.json").is_file():
            continue
        for fmt, fname in FORMATS.items():
            out = out_root / f"{name}.{fname}"
            rc, err = _cli(["export", str(ckpt_root / name), "--format", fmt, "--out", str(out)])
            results[f"{name}.{fname}"] = {"exit": rc, "error": err[0] if err else ""}
            print(f"export {name} {fmt}: exit {rc} {' '.join(err)}", flush=True)
    (out_root / "exit_codes.json").write_text(json.dumps(results, indent=1, sort_keys=True))


def nir_content(path):
    """A comparable description of a NIR file: {node: (type, {field: array or value}), edges, metadata}."""
    import nir
    import numpy as np

    g = nir.read(str(path))

    def val(v):
        if isinstance(v, np.ndarray):
            return ("array", str(v.dtype), v.shape, v.tobytes())
        if isinstance(v, dict):
            return ("dict", tuple(sorted((k, val(x)) for k, x in v.items())))
        if isinstance(v, (list, tuple)):
            return ("seq", tuple(val(x) for x in v))
        return ("value", repr(v))

    nodes = {}
    for k, n in g.nodes.items():
        nodes[k] = (type(n).__name__, {f: val(getattr(n, f)) for f in sorted(vars(n)) if not f.startswith("_")})
    return {"nodes": nodes, "edges": sorted(map(tuple, g.edges)), "metadata": val(g.metadata)}


def onnx_content(path):
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    inits = {i.name: (numpy_helper.to_array(i).dtype.str, numpy_helper.to_array(i).shape,
                      numpy_helper.to_array(i).tobytes()) for i in g.initializer}
    return {"nodes": [n.SerializeToString(deterministic=True) for n in g.node], "initializers": inits,
            "inputs": [i.SerializeToString(deterministic=True) for i in g.input],
            "outputs": [o.SerializeToString(deterministic=True) for o in g.output], "name": g.name,
            "opset": [(o.domain, o.version) for o in m.opset_import], "ir": m.ir_version,
            "props": sorted((p.key, p.value) for p in m.metadata_props), "producer": m.producer_name}


def same(a: Path, b: Path) -> tuple[bool, str]:
    if a.read_bytes() == b.read_bytes():
        return True, "byte-identical"
    ca = nir_content(a) if a.suffix == ".nir" else onnx_content(a)
    cb = nir_content(b) if b.suffix == ".nir" else onnx_content(b)
    if ca == cb:
        return True, "equal by content"
    diff = [k for k in ca if ca[k] != cb.get(k)]
    if "nodes" in diff and isinstance(ca["nodes"], dict):
        diff += [f"node {k}" for k in ca["nodes"] if ca["nodes"][k] != cb["nodes"].get(k)][:5]
    return False, "DIFFERENT: " + ", ".join(diff)


def compare(old: Path, new: Path) -> int:
    eo = json.loads((old / "exit_codes.json").read_text())
    en = json.loads((new / "exit_codes.json").read_text())
    bad = 0
    for key in sorted(eo):
        o, n = eo[key], en.get(key)
        if n is None:
            print(f"{key}: missing in {new}")
            bad += 1
            continue
        if o["exit"] != 0 or n["exit"] != 0:
            ok = o["exit"] == n["exit"]
            print(f"{key}: exit {o['exit']} -> {n['exit']} {'same refusal' if ok else 'CHANGED'}"
                  f" | {o['error'][:90]} | {n['error'][:90]}")
            bad += not ok
            continue
        ok, how = same(old / key, new / key)
        print(f"{key}: {how}")
        bad += not ok
    print(f"{len(eo) - bad}/{len(eo)} unchanged")
    return 1 if bad else 0


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    if cmd == "train":
        train(Path(rest[0]))
        synth(Path(rest[0]))
    elif cmd == "tiny":
        tiny(Path(rest[0]))
    elif cmd == "digests":
        digests(Path(rest[0]), Path(rest[1]))
    elif cmd == "export":
        export(Path(rest[0]), Path(rest[1]))
    elif cmd == "compare":
        sys.exit(compare(Path(rest[0]), Path(rest[1])))
    else:
        sys.exit(f"unknown command {cmd!r}")
