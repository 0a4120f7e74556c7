"""Long-running fuzzer for the file loaders (hypothesis; atheris is not required).

Each target takes valid seed files (tests/hostile/make_corpus.py's bases), mutates their
bytes (flips, inserts, deletes, truncation, splices of the hostile corpus), hands the
result to one loader and fails on anything but success or an InputError. Every loader
call runs under a CPU-time alarm; run the whole fuzzer under a memory limit (see
fuzz/README.md) so a bomb the loader does not bound shows up as a MemoryError.

    python -m fuzz.fuzz_loaders --target all --examples 20000 [--seconds-per-call 10]

Targets: nir (spikebridge.hardware.graph.load_graph + analyse), checkpoint (spikebridge.models.checkpoint
read_meta + load_tensors, mutating model.json or weights.safetensors), pt
(spikebridge.models.checkpoint.load_train_state), onnx (spikebridge.toolchain.safety.load_onnx), npz
(spikebridge.toolchain.pipeline.load_trace_npz), npy (spikebridge.toolchain.pipeline.load_input_npy),
json (spikebridge.base.fileio.read_json, as run.json/report.json are read), toml
(spikebridge.hardware.energy.load_energy_model_toml), sweep (spikebridge.toolchain.report.load_sweep,
.npy and .json).
A failing input is written to fuzz/crashes/<target>-<sha>.bin and hypothesis shrinks it.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikebridge.base.errors import InputError

HERE = Path(__file__).resolve().parent
TARGETS = ("nir", "checkpoint", "pt", "onnx", "npz", "npy", "json", "toml", "sweep")


class CallTimeout(BaseException):
    pass


def _alarm(*_):
    raise CallTimeout()


def seeds(work: Path) -> dict[str, list[bytes]]:
    """Valid seed files per target, plus the hostile corpus files of the same kind."""
    from tests.hostile.make_corpus import build
    cases = build(work / "corpus")
    bases = work / "corpus" / "_bases"
    out: dict[str, list[bytes]] = {t: [] for t in TARGETS}
    out["nir"].append((bases / "base.nir").read_bytes())
    out["checkpoint"] += [(bases / "ckpt" / "model.json").read_bytes(),
                          (bases / "ckpt" / "weights.safetensors").read_bytes()]
    import io
    import torch
    buf = io.BytesIO()
    torch.save({"epoch": 1, "optimizer": {"state": {}, "param_groups": []}, "w": torch.ones(3)}, buf)
    out["pt"].append(buf.getvalue())
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                          initializer=[numpy_helper.from_array(np.ones((2, 3), np.float32), "w")])
    out["onnx"].append(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    out["npz"].append((bases / "run" / "eventsim.npz").read_bytes())
    b = io.BytesIO()
    np.save(b, np.ones((2, 1, 4), np.float32))
    out["npy"].append(b.getvalue())
    out["json"].append(b'{"dataset": "digits", "split": "test", "accuracy": {"eventsim": 0.9, "onnx": null}, '
                       b'"samples": [1, 2, {"a": [3.5, "x"]}]}')
    out["toml"].append(b'name = "m"\nkind = "gpu-style"\n[constants.mac]\nvalue_pj = 4.6\nsource = "s"\n'
                       b'[constants.synaptic_op]\nvalue_pj = 0.9\nsource = "s"\n')
    b = io.BytesIO()
    np.save(b, np.array([[1, 0.5], [2, 0.75], [4, 0.9]]))
    out["sweep"] += [b.getvalue(), b'[{"timesteps": 1, "accuracy": 0.5}, {"timesteps": 2, "accuracy": {"a": 0.7}}]']
    kind_of = {"nir": "nir", "model.json": "checkpoint", "safetensors": "checkpoint", "pt": "pt", "onnx": "onnx"}
    for c in cases:
        t = kind_of.get(c.kind)
        p = Path(c.path)
        if t and p.is_file() and p.stat().st_size < (4 << 20):
            out[t].append(p.read_bytes())
    return out


@st.composite
def mutated(draw, pool: list[bytes]):
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]))
        n = len(data)
        i = draw(st.integers(0, max(n - 1, 0)))
        if op == "flip" and n:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            data[i] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and n:
            del data[i:i + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[i:]
        elif op == "splice":
            other = draw(st.sampled_from(pool))
            j = draw(st.integers(0, max(len(other) - 1, 0)))
            data[i:i + 32] = other[j:j + 32]
    return bytes(data)


def run_target(target: str, data: bytes, work: Path) -> None:
    """Write ``data`` where the target's loader reads it and call the loader."""
    d = Path(tempfile.mkdtemp(dir=work))
    try:
        if target == "nir":
            from spikebridge.hardware.graph import analyse, load_graph
            (d / "g.nir").write_bytes(data)
            analyse(load_graph(d / "g.nir"), file=str(d / "g.nir"))
        elif target == "checkpoint":
            from spikebridge.models.checkpoint import load_tensors, read_meta
            base = work / "corpus" / "_bases" / "ckpt"
            shutil.copy(base / "model.json", d / "model.json")
            shutil.copy(base / "weights.safetensors", d / "weights.safetensors")
            name = "model.json" if data[:1] in (b"{", b"[", b" ") else "weights.safetensors"
            (d / name).write_bytes(data)
            read_meta(d)
            load_tensors(d)
        elif target == "pt":
            from spikebridge.models.checkpoint import load_train_state
            (d / "s.pt").write_bytes(data)
            load_train_state(d / "s.pt")
        elif target == "onnx":
            from spikebridge.toolchain.safety import load_onnx
            (d / "m.onnx").write_bytes(data)
            load_onnx(d / "m.onnx")
        elif target == "npz":
            from spikebridge.toolchain.pipeline import load_trace_npz
            (d / "t.npz").write_bytes(data)
            load_trace_npz(d / "t.npz", backend="eventsim")
        elif target == "npy":
            from spikebridge.toolchain.pipeline import load_input_npy
            (d / "x.npy").write_bytes(data)
            load_input_npy(d / "x.npy", (4,))
        elif target == "json":
            from spikebridge.base.fileio import read_json
            (d / "run.json").write_bytes(data)
            read_json(d / "run.json")
        elif target == "toml":
            from spikebridge.hardware.energy import load_energy_model_toml
            (d / "e.toml").write_bytes(data)
            load_energy_model_toml(d / "e.toml")
        elif target == "sweep":
            from spikebridge.toolchain.report import load_sweep
            name = "s.npy" if data[:6] == b"\x93NUMPY" else "s.json"
            (d / name).write_bytes(data)
            load_sweep(d / name)
    except InputError:
        pass
    finally:
        shutil.rmtree(d, ignore_errors=True)


def fuzz(targets, examples: int, seconds: float, work: Path, pools=None) -> None:
    pools = pools or seeds(work)
    signal.signal(signal.SIGPROF, _alarm)
    marker = work / "corpus" / "PWNED_MARKER"
    def make(target):
        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(mutated(pools[target]))
        def one(data):
            signal.setitimer(signal.ITIMER_PROF, seconds)
            try:
                run_target(target, data, work)
            except BaseException:
                crash = HERE / "crashes" / f"{target}-{hashlib.sha256(data).hexdigest()[:16]}.bin"
                crash.parent.mkdir(exist_ok=True)
                crash.write_bytes(data)
                raise
            finally:
                signal.setitimer(signal.ITIMER_PROF, 0)
            assert not marker.exists(), "a pickle payload ran"
        return one

    for target in targets:
        make(target)()
        print(f"{target}: {examples} examples, only InputError", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="all", choices=("all",) + TARGETS)
    ap.add_argument("--examples", type=int, default=2000, help="per target")
    ap.add_argument("--seconds-per-call", type=float, default=10.0, help="CPU-time bound per loader call")
    ap.add_argument("--work", help="scratch directory (default: a temporary one)")
    a = ap.parse_args(argv)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="sb-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    fuzz(TARGETS if a.target == "all" else (a.target,), a.examples, a.seconds_per_call, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
