"""Every file of the hostile corpus (tests/hostile/make_corpus.py), through every command
that reads it: exit 3, one line ``error: FILE: PLACE: RULE``, no traceback, no output
file, bounded CPU time and memory; pickle payloads never run.

Most invocations run in a few batch processes (tests/hostile/batch.py: one process calls
``spikebridge.toolchain.cli.main`` for many files, capturing fd 1/2 per call, with a 10 s CPU-time
alarm per call) under RLIMIT_AS; a sample runs as real ``spikebridge`` subprocesses, each
under RLIMIT_AS = 512 MiB (commands that import torch: RLIMIT_DATA = 512 MiB, since
torch's shared libraries alone map more address space than that) and RLIMIT_CPU = 10 s,
with the peak RSS of each child checked against 512 MiB.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.hostile.make_corpus import MARKER_NAME, build

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
MEM_LIMIT = 512 * MiB
CPU_SECONDS = 10
TORCH_KINDS = ("model.json", "safetensors", "pt")  # their commands import torch once cheap checks pass
PLACELESS: list[str] = []  # errors of the form FILE: RULE (no place)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    cases = build(d / "corpus")
    x = d / "x.npy"
    np.save(x, np.ones((4, 2, 4), np.float32))
    np.save(d / "calib.npy", np.ones((8, 2), np.float32))
    return d, cases, x


def _dir_digest(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() or p.is_symlink() and p.exists()}


def _jobs(root: Path, cases, x: Path) -> list[dict]:
    """(argv, paths that must not appear, directory whose files must not change, case)."""
    outdir = root / "outs"
    outdir.mkdir(exist_ok=True)
    from spikebridge.toolchain.cli import COMMANDS
    jobs = []
    for c in cases:
        p, cont = Path(c.path), Path(c.container)
        if c.kind == "nir":
            out = outdir / f"{c.id}.npz"
            jobs.append(dict(argv=["simulate", str(p), "--input", str(x), "--out", str(out)], absent=[str(out)]))
            jobs.append(dict(argv=["inspect", str(p)], absent=[]))
            rep = outdir / f"{c.id}_report"
            jobs.append(dict(argv=["report", str(p), "--input", str(x), "--out", str(rep)],
                             absent=[str(rep / "report.json"), str(rep / "report.html")]))
            run = root / "runs" / c.id
            shutil.copytree(Path(c.path).parents[1] / "_bases" / "run", run)
            shutil.copy(p, run / "graph.nir")
            c_run = dict(argv=["report", str(run)], absent=[str(run / "report.json"), str(run / "report.html")],
                         name_in_error=str(run / "graph.nir"))
            jobs.append(c_run)
        elif c.kind in ("model.json", "safetensors"):
            for fmt in ("nir", "onnx"):
                out = outdir / f"{c.id}.{fmt}"
                jobs.append(dict(argv=["export", str(cont), "--format", fmt, "--out", str(out)], absent=[str(out)],
                                 unchanged=str(cont)))
            jobs.append(dict(argv=["inspect", str(cont)], absent=[], unchanged=str(cont)))
        elif c.kind == "pt":
            jobs.append(dict(argv=["train", "--resume", "--arch", "mlp", "--epochs", "2", "--out", str(cont)],
                             absent=[str(cont / "curves.png"), str(cont / "metrics.jsonl")], unchanged=str(cont)))
            jobs.append(dict(pt=str(p), absent=[]))
        elif c.kind == "onnx":
            jobs.append(dict(onnx=str(p), absent=[]))
            if "convert" in COMMANDS:
                out = outdir / f"{c.id}.converted"
                jobs.append(dict(argv=["convert", str(p), "--timesteps", "4", "--calibration", str(x.with_name("calib.npy")),
                                       "--out", str(out)], absent=[str(out)]))
        elif c.kind == "report.json":
            out = outdir / f"{c.id}_compare"
            jobs.append(dict(argv=["report", "--compare", str(p), str(p), "--out", str(out)],
                             absent=[str(out / "compare.json"), str(out / "compare.html")]))
        elif c.kind == "rundir":
            jobs.append(dict(argv=["report", str(cont)],
                             absent=[str(cont / "report.json"), str(cont / "report.html")], unchanged=str(cont)))
        for j in jobs:
            j.setdefault("case", c.id)
            j.setdefault("kind", c.kind)
            j.setdefault("name_in_error", str(p))
    for j in jobs:
        if "argv" in j:
            j["argv"] = ["--no-progress", *j["argv"]]
    return jobs


def _limits(as_bytes: int | None, data_bytes: int | None = None, cpu: int | None = None):
    def apply():
        if as_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
        if data_bytes:
            resource.setrlimit(resource.RLIMIT_DATA, (data_bytes, data_bytes))
        if cpu:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    return apply


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1", MALLOC_ARENA_MAX="2", TQDM_DISABLE="1",
               SPIKEBRIDGE_HDF5_TIMEOUT="3")  # the heap-loop case waits this long
    env.pop("PYTHONHASHSEED", None)
    return env


def _run_batch(root: Path, jobs: list[dict], name: str, limit) -> list[dict]:
    jp, rp = root / f"{name}.jobs.json", root / f"{name}.results.json"
    jp.write_text(json.dumps([{k: v for k, v in j.items() if k in ("argv", "onnx", "pt")} | {"cpu_seconds": CPU_SECONDS}
                              for j in jobs]))
    p = subprocess.run([sys.executable, "-m", "tests.hostile.batch", str(jp), str(rp)], cwd=REPO, env=_env(),
                       preexec_fn=limit, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(rp.read_text())


def _problems(job: dict, code, err: str) -> list[str]:
    probs = []
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if code != 3:
        probs.append(f"exit {code}")
    if "Traceback" in err:
        probs.append("traceback")
    if len(lines) != 1 or not lines[0].startswith("error: "):
        probs.append(f"stderr is not one error line: {err[-600:]!r}")
    else:
        line = lines[0]
        rest = line[len("error: "):]
        parts = rest.split(": ")
        if job["name_in_error"] not in line and str(Path(job["name_in_error"]).parent) not in line:
            probs.append(f"file not named: {line!r}")
        elif len(parts) < 3:
            PLACELESS.append(line)
            probs.append(f"no place (not FILE: PLACE: RULE): {line!r}")
    for a in job["absent"]:
        if Path(a).exists():
            probs.append(f"output written: {a}")
    return probs


def _check(jobs, results, before) -> list[str]:
    bad = []
    for j, r in zip(jobs, results):
        probs = _problems(j, r["code"], r["stderr"])
        if j.get("unchanged") and _dir_digest(Path(j["unchanged"])) != before[j["unchanged"]]:
            probs.append("input directory changed")
        if probs:
            what = j.get("argv", [next((k for k in ("onnx", "pt") if k in j), "?")])
            bad.append(f"{j['case']} {what[1] if len(what) > 1 else what[0]}: {'; '.join(probs)}")
    return bad


def test_corpus_size_and_kinds(corpus):
    _, cases, _ = corpus
    kinds = {}
    for c in cases:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    assert len(cases) >= 100, kinds
    assert set(kinds) >= {"nir", "model.json", "safetensors", "pt", "onnx"}, kinds


def test_every_hostile_file_is_rejected_by_every_command(corpus):
    root, cases, x = corpus
    jobs = _jobs(root, cases, x)
    before = {j["unchanged"]: _dir_digest(Path(j["unchanged"])) for j in jobs if j.get("unchanged")}
    light = [j for j in jobs if j["kind"] not in TORCH_KINDS]
    heavy = [j for j in jobs if j["kind"] in TORCH_KINDS]
    bad = _check(light, _run_batch(root, light, "light", _limits(MEM_LIMIT)), before)
    bad += _check(heavy, _run_batch(root, heavy, "heavy", _limits(None, data_bytes=MEM_LIMIT)), before)
    (root / "placeless.txt").write_text("\n".join(PLACELESS))  # FILE: RULE errors, for the record
    assert not (root / "corpus" / MARKER_NAME).exists(), "a pickle payload ran"
    assert not bad, f"{len(bad)} of {len(jobs)} invocations broke the contract:\n" + "\n".join(bad)


def _subprocess(argv, heavy: bool):
    limit = _limits(None if heavy else MEM_LIMIT, MEM_LIMIT if heavy else None, CPU_SECONDS)
    p = subprocess.Popen([sys.executable, "-m", "spikebridge", *argv], cwd=REPO, env=_env(), preexec_fn=limit,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=120)  # a hang guard only; the bound is RLIMIT_CPU
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    return p.returncode, out, err


def test_sample_through_real_subprocesses(corpus):
    """One invocation per file kind, plus pickle payloads through train, as real processes under limits."""
    root, cases, x = corpus
    (root / "sub").mkdir()
    jobs = [j for j in _jobs(root / "sub", cases, x) if "argv" in j]
    seen, sample = set(), []
    for j in jobs:  # the first case of each kind (its first command), plus pickle payloads through train
        key = j["kind"]
        if key not in seen or j["case"] in ("pt_zip_subprocess_popen", "pt_raw_exec") and j["argv"][1] == "train":
            seen.add(key)
            sample.append(j)
    before = {j["unchanged"]: _dir_digest(Path(j["unchanged"])) for j in sample if j.get("unchanged")}
    bad = []
    for j in sample:
        heavy = j["kind"] in TORCH_KINDS
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        code, _, err = _subprocess(j["argv"], heavy)
        probs = _problems(j, code, err)
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if rss > r0 and rss * 1024 > MEM_LIMIT:
            probs.append(f"peak RSS {rss // 1024} MiB")
        if j.get("unchanged") and _dir_digest(Path(j["unchanged"])) != before[j["unchanged"]]:
            probs.append("input directory changed")
        if probs:
            bad.append(f"{j['case']} {j['argv'][1]}: {'; '.join(probs)}")
    assert not (root / "corpus" / MARKER_NAME).exists(), "a pickle payload ran"
    assert not bad, "\n".join(bad)


EXPECTED_GLOBALS = {"os_system": ("posix.system", "os.system"), "subprocess_call": ("subprocess.call", "commands.call"),
                    "subprocess_popen": ("subprocess.Popen",), "subprocess_check_output": ("subprocess.check_output",),
                    "eval": ("builtins.eval",), "exec": ("builtins.exec",), "importlib": ("builtins.eval",),
                    "import_module": ("importlib.import_module",), "posix_system": ("posix.system",),
                    "nt_system": ("nt.system",), "runpy": ("runpy._run_code",)}


def test_pickle_payloads_never_run_and_the_error_names_the_globals(corpus):
    from spikebridge.base.errors import CheckpointError
    from spikebridge.models.checkpoint import load_train_state

    root, cases, _ = corpus
    pickles = [c for c in cases if c.id.startswith(("pt_raw_", "pt_zip_")) and c.id.split("_", 2)[2] in EXPECTED_GLOBALS]
    assert len(pickles) >= 15
    for c in pickles:
        with pytest.raises(CheckpointError) as e:
            load_train_state(c.path)
        msg = str(e.value)
        assert c.path in msg and "unsafe pickle globals" in msg, msg
        assert any(g in msg for g in EXPECTED_GLOBALS[c.id.split("_", 2)[2]]), msg
    assert not (root / "corpus" / MARKER_NAME).exists(), "a pickle payload ran"


def _calls(tree):
    import ast
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield node, owner, name


def test_static_no_unsafe_deserialisation_in_the_code():
    """No torch.load without weights_only=True, no pickle.load(s)/Unpickler, no
    np.load(allow_pickle=True) anywhere in the package code."""
    import ast
    bad = []
    for pkg in ("hardware", "models", "exporters", "toolchain"):
        for f in sorted((REPO / pkg).rglob("*.py")):
            tree = ast.parse(f.read_text())
            for node, owner, name in _calls(tree):
                kw = {k.arg: k.value for k in node.keywords}
                where = f"{f.relative_to(REPO)}:{node.lineno}"
                if owner == "torch" and name == "load":
                    v = kw.get("weights_only")
                    if not (isinstance(v, ast.Constant) and v.value is True):
                        bad.append(f"{where}: torch.load without weights_only=True")
                if owner in ("pickle", "cPickle", "dill", "joblib", "_pickle") and name in ("load", "loads", "Unpickler"):
                    bad.append(f"{where}: {owner}.{name}")
                if owner in ("np", "numpy") and name == "load":
                    v = kw.get("allow_pickle")
                    if v is not None and not (isinstance(v, ast.Constant) and v.value is False):
                        bad.append(f"{where}: np.load with allow_pickle not False")
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names]
                    mod = getattr(node, "module", None) or ""
                    if mod in ("pickle", "dill") and any(n in ("load", "loads", "Unpickler") for n in names):
                        bad.append(f"{f.relative_to(REPO)}:{node.lineno}: imports an unpickler")
    assert not bad, bad
