"""Exports of every method and arch equal, by content, those of the code before the registry /
DeployedNet redesign (commit 63bfee2), and the layering that redesign established holds.

tests/data/exports holds tiny trained checkpoints (weights.safetensors + model.json, a few KB
each: every method; mlp, cnn, a residual/avg-pool net, a max-pool net) and ``digests.json``:
the sha256 of each export's content (NIR: node types, every field and array, edges,
metadata; ONNX: nodes, initialisers, I/O, opset, properties) made by the old code, or
"exit 3" where it refused. Regenerate with scripts/export_equivalence.py (``tiny`` +
``digests`` under the code to compare against).
"""
from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spikebridge.base.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "exports"
DIGESTS = json.loads((DATA / "digests.json").read_text())


def _script():
    spec = importlib.util.spec_from_file_location("export_equivalence", ROOT / "scripts" / "export_equivalence.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _export(ckpt: Path, fmt: str, out: Path) -> None:
    from spikebridge.exporters.nir_export import checkpoint_to_nir, write_nir
    from spikebridge.exporters.onnx_export import checkpoint_to_onnx, write_onnx
    from spikebridge.exporters.onnx_step import checkpoint_to_onnx_step

    if fmt == "nir":
        write_nir(checkpoint_to_nir(ckpt), out)
    elif fmt == "onnx":
        write_onnx(checkpoint_to_onnx(ckpt), out)
    else:
        write_onnx(checkpoint_to_onnx_step(ckpt), out)


@pytest.mark.parametrize("key", sorted(DIGESTS))
def test_export_content_equals_the_reference(key, tmp_path):
    case, fmt = key.rsplit(".", 1)
    out = tmp_path / f"{case}.{_script().FORMATS[fmt]}"
    want = DIGESTS[key]
    if want.startswith("exit"):
        with pytest.raises(InputError):
            _export(DATA / case, fmt, out)
        assert not out.exists()
        return
    _export(DATA / case, fmt, out)
    assert _script().content_digest(out) == want, f"{key}: export content changed"


def test_digest_sees_a_one_ulp_weight_change(tmp_path):
    """The comparison can fail: one float32 ulp in one weight changes the digest."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    ck = tmp_path / "ck"
    shutil.copytree(DATA / "qcfs-mlp", ck)
    t = load_file(str(ck / "weights.safetensors"))
    w = t["layers.fc1.op.weight"].copy()
    w.flat[0] = np.nextafter(w.flat[0], np.float32(np.inf))
    t["layers.fc1.op.weight"] = w
    save_file(t, str(ck / "weights.safetensors"))
    for fmt in ("nir", "onnx"):
        out = tmp_path / f"x.{fmt}"
        _export(ck, fmt, out)
        assert _script().content_digest(out) != DIGESTS[f"qcfs-mlp.{fmt}"]


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "spikebridge", *args], capture_output=True, text=True, cwd=cwd)


def test_unknown_method_is_refused_naming_the_known_ones(tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(DATA / "snn2ann-mlp", ck)
    meta = json.loads((ck / "model.json").read_text())
    meta["method"] = "snn3ann"
    (ck / "model.json").write_text(json.dumps(meta))
    for fmt in ("nir", "onnx", "onnx-step"):
        out = tmp_path / f"out.{fmt}"
        r = _cli("export", str(ck), "--format", fmt, "--out", str(out))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 3, r.stderr
        assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
        assert "unknown method 'snn3ann'" in lines[0]
        for known in ("ann", "bptt", "bridge", "lasnn", "parallel", "qcfs", "snn2ann"):
            assert known in lines[0]
        assert not out.exists()
    r = _cli("train", "--method", "snn3ann", "--out", str(tmp_path / "t"), "--epochs", "1")
    assert r.returncode == 3 and r.stderr.strip().splitlines()[-1].startswith("error: unknown method 'snn3ann'")
    assert not (tmp_path / "t").exists()


def test_every_method_registers_the_same_way():
    from spikebridge.models import methods as M
    from spikebridge.models.deployed import AnnNet, DeployedNet  # noqa: F401

    assert M.names() == ["ann", "bptt", "bridge", "lasnn", "parallel", "qcfs", "snn2ann"]
    for name in M.names():
        spec = M.get(name)
        assert callable(spec.train) and callable(spec.build_model)
        assert spec.deployed is not None or spec.no_snn, name
        assert spec.onnx is not None or spec.no_onnx, name


def test_deployed_of_a_checkpoint_is_a_frozen_description(tmp_path):
    import dataclasses

    from spikebridge.models.deployed import from_checkpoint
    from spikebridge.models.deployed import Neuron, Synapse

    net = from_checkpoint(DATA / "bptt-lif-res")
    assert net.method == "bptt" and net.timesteps >= 1 and net.readout == "sum"
    kinds = [type(n.op).__name__ for n in net.nodes]
    assert kinds.count("Neuron") == 6 and "AvgPool" in kinds
    assert net.nodes[-1].op.readout and isinstance(net.nodes[-1].op, Synapse)
    assert all(n.op.kind == "LIF" for n in net.nodes if isinstance(n.op, Neuron))
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.timesteps = 3


# ---- layering: models never import exporters; no import cycle among models/ and exporters/ ----

def _imports(path: Path) -> set[str]:
    out = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom) and n.module and not n.level:
            out.add(n.module)
            out.update(f"{n.module}.{a.name}" for a in n.names)
        elif isinstance(n, ast.Import):
            out.update(a.name for a in n.names)
    return out


def _modules():
    mods = {}
    for pkg in ("models", "exporters"):
        for p in (ROOT / pkg).rglob("*.py"):
            mods[".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = p
    return mods


def test_models_import_only_base_and_models_and_nothing_bare():
    """models -> spikebridge.base, spikebridge.models (never exporters, hardware, toolchain);
    models and exporters name our packages only as spikebridge.* (never bare ``models.x``)."""
    ours = ("models", "exporters", "hardware", "toolchain", "benchmarks", "base")
    for m, p in _modules().items():
        imps = _imports(p)
        bare = sorted(i for i in imps if i.split(".")[0] in ours)
        assert not bare, f"{m}: bare imports {bare}"
        if m.startswith("models"):
            up = sorted(i for i in imps if i.startswith("spikebridge.")
                        and i.split(".")[1] not in ("base", "models"))
            assert not up, f"{m} imports {up}"


def test_no_import_cycle_among_models_and_exporters():
    """Imports inside functions count (a cycle dodged by a local import is still a cycle)."""
    mods = _modules()

    def resolve(name):
        cand = name.removeprefix("spikebridge.")
        while cand and cand not in mods:
            cand = cand.rpartition(".")[0]
        return cand or None

    edges = {m: {r for i in _imports(p) if (r := resolve(i)) and r != m and not m.startswith(r + ".")}
             for m, p in mods.items()}
    # strongly connected components (Tarjan)
    index, low, stack, on, found, count = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = count[0]
        count[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for m in mods:
        if m not in index:
            visit(m)
    assert found == []
