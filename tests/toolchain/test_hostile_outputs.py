"""What the toolchain writes from hostile inputs, and whether it is reproducible.

- Names from inputs (node names with path separators, markup, quotes) never become paths
  outside --out; they are escaped in the HTML; JSON is strict (no NaN/Infinity).
- Same inputs and seed: byte-identical report.json across repeated runs and
  PYTHONHASHSEED values (through `spikebridge simulate` + `spikebridge report RUN_DIR`, and
  `spikebridge report GRAPH --input X`).
- A declared size or T that does not fit is refused before allocation (--max-memory),
  shown under RLIMIT_AS so an allocation attempt would fail differently.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import nir
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
# no "/" in names: HDF5 reads it as a group separator (nir.write nests; load_graph then rejects)
EVIL = ["..\\..\\..\\evil", "<script>alert(1)", "<img src=x onerror=alert(2)>", "q\"'&amp;;x", "😀 ü"]


def _cli(*argv, env_extra=None, limit_as=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1", OMP_NUM_THREADS="1", **(env_extra or {}))

    def pre():
        if limit_as:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))
    p = subprocess.run([sys.executable, "-m", "spikebridge", "--no-progress", *map(str, argv)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600, preexec_fn=pre)
    return p.returncode, p.stdout, p.stderr


def _strict_json(path: Path):
    def bad(name):
        raise AssertionError(f"{path}: non-strict JSON constant {name}")
    return json.loads(path.read_text(), parse_constant=bad)


def evil_graph(seed: int = 0) -> nir.NIRGraph:
    rng = np.random.default_rng(seed)
    a, b, c, d = EVIL[:4]
    nodes = {"input": nir.Input(input_type={"input": np.array([6])}),
             a: nir.Affine(weight=rng.normal(0, 1, (5, 6)).astype(np.float32), bias=np.zeros(5, np.float32)),
             b: nir.IF(r=np.ones(5), v_threshold=np.full(5, 0.5), v_reset=np.zeros(5)),
             c: nir.Affine(weight=rng.normal(0, 1, (3, 5)).astype(np.float32), bias=np.zeros(3, np.float32)),
             d: nir.IF(r=np.ones(3), v_threshold=np.full(3, 0.5), v_reset=np.zeros(3)),
             EVIL[4]: nir.Output(output_type={"output": np.array([3])})}
    edges = [("input", a), (a, b), (b, c), (c, d), (d, EVIL[4])]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"spikebridge": {"dt": 1.0, "timesteps": 5}})


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_hostile_names_stay_inside_out_escaped_in_html_strict_in_json(tmp_path):
    g = tmp_path / "in" / "graph.nir"
    g.parent.mkdir()
    nir.write(str(g), evil_graph())
    x = tmp_path / "in" / "x.npy"
    np.save(x, np.random.default_rng(1).random((5, 3, 6)).astype(np.float32))
    run = tmp_path / "deep" / "er" / "run"
    run.mkdir(parents=True)
    before = _files(tmp_path)
    code, _, err = _cli("simulate", g, "--input", x, "--out", run / "eventsim.npz")
    assert code == 0, err
    (run / "graph.nir").write_bytes(g.read_bytes())
    (run / "run.json").write_text(json.dumps({"accuracy": {"eventsim": None}, "seed": 0}))
    code, _, err = _cli("report", run)
    assert code == 0, err
    new = _files(tmp_path) - before
    outside = [f for f in new if not f.startswith(str(run.relative_to(tmp_path)))]
    assert not outside, f"files written outside --out: {outside}"
    html = (run / "report.html").read_text()
    assert "<script" not in html.lower() and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)" in html  # the name is shown, escaped
    rep = _strict_json(run / "report.json")
    assert rep is not None
    with np.load(run / "eventsim.npz", allow_pickle=False) as z:  # names are zip members, never paths
        assert all(not k.startswith("/") for k in z.files)


def _report_bytes(tmp_path: Path, tag: str, hashseed: str) -> tuple[bytes, bytes]:
    d = tmp_path / tag
    d.mkdir()
    g = d / "graph.nir"
    nir.write(str(g), evil_graph(seed=5))
    x = tmp_path / "x.npy"
    if not x.exists():
        np.save(x, np.random.default_rng(2).random((5, 16, 6)).astype(np.float32))
    env = {"PYTHONHASHSEED": hashseed}
    code, _, err = _cli("simulate", g, "--input", x, "--out", d / "eventsim.npz", env_extra=env)
    assert code == 0, err
    (d / "run.json").write_text(json.dumps({"accuracy": {"eventsim": 0.25}, "seed": 7}))
    code, _, err = _cli("report", d, env_extra=env)
    assert code == 0, err
    code, _, err = _cli("report", g, "--input", x, "--out", d / "direct", env_extra=env)
    assert code == 0, err
    return (d / "report.json").read_bytes(), (d / "direct" / "report.json").read_bytes()


def _normalise(b: bytes, tag: str) -> str:
    return b.decode().replace(tag, "RUN")  # the run directory's own path appears under inputs


def test_report_json_is_byte_identical_across_runs_and_hash_seeds(tmp_path):
    runs = [("a", "0"), ("b", "0"), ("c", "4242"), ("d", "random")]
    out = [_report_bytes(tmp_path, tag, hs) for tag, hs in runs]
    for i in (0, 1):
        texts = [_normalise(o[i], str(tmp_path / tag)) for o, (tag, _) in zip(out, runs)]
        assert all(t == texts[0] for t in texts), f"report.json differs between runs (variant {i})"
        _strict_json_text = json.loads(texts[0], parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(c)))
        assert _strict_json_text


def test_declared_timesteps_beyond_memory_are_refused_before_allocation(tmp_path):
    g = tmp_path / "g.nir"
    nodes = {"input": nir.Input(input_type={"input": np.array([1, 8, 8])}),
             "flat": nir.Flatten(input_type={"input": np.array([1, 8, 8])}, start_dim=0, end_dim=-1),
             "fc": nir.Affine(weight=np.ones((10, 64), np.float32), bias=np.zeros(10, np.float32)),
             "output": nir.Output(output_type={"output": np.array([10])})}
    graph = nir.NIRGraph(nodes=nodes, edges=[("input", "flat"), ("flat", "fc"), ("fc", "output")],
                         metadata={"spikebridge": {"dt": 1.0, "timesteps": 10 ** 9}})
    nir.write(str(g), graph)
    out = tmp_path / "o.npz"
    code, _, err = _cli("simulate", g, "--dataset", "digits", "--limit", "8", "--out", out, limit_as=1 << 30)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 3 and len(lines) == 1, err
    assert "memory" in lines[0] and "estimated" in lines[0] and "limit" in lines[0] and str(g) in lines[0]
    assert not out.exists()
    # the same graph at a small T runs; a --max-memory below its estimate refuses it
    code, _, err = _cli("simulate", g, "--dataset", "digits", "--limit", "8", "--timesteps", "2", "--out", out)
    assert code == 0, err
    out.unlink()
    code, _, err = _cli("simulate", g, "--dataset", "digits", "--limit", "8", "--timesteps", "2",
                        "--max-memory", "1KiB", "--out", out)
    assert code == 3 and "1.0 KiB" in err and not out.exists(), err
    code, _, err = _cli("simulate", g, "--dataset", "digits", "--timesteps", "2", "--max-memory", "lots",
                        "--out", out)
    assert code == 3 and "--max-memory" in err


def test_memory_estimate_of_huge_declared_shapes():
    from spikebridge.base.errors import ResourceError
    from spikebridge.hardware.graph import analyse
    from spikebridge.hardware.memory import check_memory, estimate_eventsim

    nodes = {"input": nir.Input(input_type={"input": np.array([64, 4096, 4096])}),
             "flat": nir.Flatten(input_type={"input": np.array([64, 4096, 4096])}, start_dim=0, end_dim=-1),
             "output": nir.Output(output_type={"output": np.array([64 * 4096 * 4096])})}
    g = nir.NIRGraph(nodes=nodes, edges=[("input", "flat"), ("flat", "output")], type_check=False)
    est = estimate_eventsim(g, analyse(g), 100, 1000)
    assert est.total > 1 << 40
    with pytest.raises(ResourceError) as e:
        check_memory(est, None, file="g.nir")
    assert "estimated" in str(e.value) and "limit" in str(e.value)
