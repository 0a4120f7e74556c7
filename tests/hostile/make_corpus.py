"""Generate the hostile-input corpus into a directory (at test time; nothing binary is committed).

    python -m tests.hostile.make_corpus OUT_DIR      # writes the files and OUT_DIR/corpus.json

``build(out_dir)`` returns a list of ``Case``: one malformed or hostile file each, of kind
``nir`` (a graph), ``model.json`` / ``safetensors`` / ``pt`` (one file of an otherwise valid
checkpoint directory), ``onnx``, or ``rundir`` (run.json / eventsim.npz of a run directory).
Every case must be rejected with exit code 3 by every command that reads it (see
tests/test_hostile_corpus.py). Pickle payloads would create ``MARKER`` if they ever ran.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MARKER_NAME = "PWNED_MARKER"


@dataclass
class Case:
    id: str
    kind: str  # nir | model.json | safetensors | pt | onnx | rundir
    path: str  # the hostile file
    container: str  # the file or directory a command is given (checkpoint dir, run dir, the file)
    note: str = ""


# ------------------------------------------------------------------ valid bases

def base_graph():
    import nir
    return nir.NIRGraph(
        nodes={"input": nir.Input(input_type={"input": np.array([4])}),
               "fc": nir.Affine(weight=np.full((3, 4), 0.5, np.float32), bias=np.zeros(3, np.float32)),
               "lif": nir.IF(r=np.ones(3), v_threshold=np.ones(3), v_reset=np.zeros(3)),
               "output": nir.Output(output_type={"output": np.array([3])})},
        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")],
        metadata={"spikebridge": {"dt": 1.0, "timesteps": 4}})


def write_base_nir(path: Path) -> None:
    import nir
    nir.write(str(path), base_graph())


def write_base_checkpoint(d: Path) -> None:
    """A valid (untrained) mlp checkpoint for digits, without training."""
    import torch
    from spikebridge.models.architectures import build_spec
    from spikebridge.models.checkpoint import save_checkpoint
    from spikebridge.models.snn2ann import SNN2ANNNet

    torch.manual_seed(0)
    shape, classes = (1, 8, 8), 10
    spec = build_spec("mlp", shape, classes)
    model = SNN2ANNNet(spec, shape, 4)
    meta = {"arch": "mlp", "method": "snn2ann", "timesteps": 4, "input_shape": list(shape),
            "num_classes": classes, "dataset": "digits", "layers": spec, "smu": "stsu",
            "neuron": {"model": "IF", "reset": "zero", "threshold_test": "gt", "v_init": 0.0}, "seed": 0}
    save_checkpoint(d, model.state_dict(), meta)


# ------------------------------------------------------------------ helpers

def _copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


class _Payload:
    """Pickles to ``func(*args)``: would run at load time if anything unpickled it."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _pickle_bytes(obj) -> bytes:
    return pickle.dumps(obj, protocol=4)


def _raw_pickle_global(module: str, name: str, arg_pickle: bytes) -> bytes:
    """A protocol-2 pickle calling module.name(*args) built by hand (for globals we cannot
    reference from this process, e.g. nt.system)."""
    return (b"\x80\x02" + b"c" + module.encode() + b"\n" + name.encode() + b"\n" + arg_pickle + b"R.")


def _h5(path: Path, base: Path, fn) -> None:
    import h5py
    shutil.copy(base, path)
    with h5py.File(path, "r+") as f:
        fn(f)


def _replace(f, key, data, **kw):
    del f[key]
    f.create_dataset(key, data=data, **kw)


# ------------------------------------------------------------------ corpus

def build(out_dir) -> list[Case]:  # noqa: C901 - one long list of cases
    import h5py

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    marker = out / MARKER_NAME
    cases: list[Case] = []
    bases = out / "_bases"
    bases.mkdir(exist_ok=True)
    base_nir = bases / "base.nir"
    write_base_nir(base_nir)
    base_ckpt = bases / "ckpt"
    write_base_checkpoint(base_ckpt)
    base_bytes = base_nir.read_bytes()

    # ---------------- NIR ----------------
    nd = out / "nir"
    nd.mkdir(exist_ok=True)

    def nir_case(cid, note, writer):
        p = nd / f"{cid}.nir"
        writer(p)
        cases.append(Case(cid, "nir", str(p), str(p), note))

    for frac in (0.05, 0.3, 0.6, 0.95):
        nir_case(f"nir_truncated_{int(frac * 100)}", "truncated",
                 lambda p, frac=frac: p.write_bytes(base_bytes[: int(len(base_bytes) * frac)]))
    rng = np.random.default_rng(0)
    for n in (0, 1, 64, 4096):
        nir_case(f"nir_random_{n}", "random bytes", lambda p, n=n: p.write_bytes(rng.bytes(n)))
    nir_case("nir_wrong_magic", "HDF5 signature overwritten",
             lambda p: p.write_bytes(b"\x89NOTHDF\x1a" + base_bytes[8:]))
    nir_case("nir_is_png", "a PNG named .nir", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(200)))
    nir_case("nir_is_json", "JSON named .nir", lambda p: p.write_text('{"node": {"type": "NIRGraph"}}'))
    nir_case("nir_is_zip", "a zip named .nir", lambda p: zipfile.ZipFile(p, "w").writestr("node", "x"))
    nir_case("nir_no_node_group", "HDF5 without /node",
             lambda p: h5py.File(p, "w").create_dataset("x", data=1))

    def mut(cid, note, fn):
        nir_case(cid, note, lambda p: _h5(p, base_nir, fn))

    mut("nir_missing_weight", "Affine without weight", lambda f: f["node/nodes/fc"].__delitem__("weight"))
    mut("nir_missing_type", "graph without type", lambda f: f["node"].__delitem__("type"))
    mut("nir_missing_edges", "graph without edges", lambda f: f["node"].__delitem__("edges"))
    mut("nir_missing_input_shape", "Input without shape", lambda f: f["node/nodes/input"].__delitem__("shape"))
    mut("nir_missing_nodes", "graph without nodes", lambda f: f["node"].__delitem__("nodes"))
    mut("nir_unknown_type", "unknown node type", lambda f: _replace(f, "node/nodes/fc/type", "EvilNode"))
    mut("nir_type_is_int", "type is a number", lambda f: _replace(f, "node/nodes/fc/type", 7))
    mut("nir_root_not_graph", "root type is not NIRGraph", lambda f: _replace(f, "node/type", "Affine"))
    mut("nir_missing_node", "edge names a node that does not exist",
        lambda f: _replace(f, "node/edges", np.array([["input", "fc"], ["fc", "ghost"], ["lif", "output"]],
                                                     dtype=object), dtype=h5py.string_dtype()))
    mut("nir_edges_bad_shape", "edges of shape (2, 3)",
        lambda f: _replace(f, "node/edges", np.array([["input", "fc", "lif"], ["lif", "output", "x"]], dtype=object),
                           dtype=h5py.string_dtype()))
    mut("nir_edges_numbers", "edges are numbers", lambda f: _replace(f, "node/edges", np.zeros((3, 2))))
    mut("nir_shape_mismatch_weight", "weight (3, 5) after a 4-input",
        lambda f: _replace(f, "node/nodes/fc/weight", np.ones((3, 5), np.float32)))
    mut("nir_shape_mismatch_neuron", "IF parameters of 5 after 3 outputs",
        lambda f: _replace(f, "node/nodes/lif/v_threshold", np.ones(5)))
    mut("nir_weight_3d", "Affine weight is 3-D", lambda f: _replace(f, "node/nodes/fc/weight", np.ones((3, 4, 2))))
    mut("nir_nan_weight", "NaN weight",
        lambda f: _replace(f, "node/nodes/fc/weight", np.full((3, 4), np.nan, np.float32)))
    mut("nir_inf_threshold", "Inf threshold", lambda f: _replace(f, "node/nodes/lif/v_threshold",
                                                                np.array([1.0, np.inf, 1.0])))
    mut("nir_nan_dt", "NaN dt", lambda f: _replace(f, "node/metadata/spikebridge/dt", np.nan))
    mut("nir_negative_dt", "negative dt", lambda f: _replace(f, "node/metadata/spikebridge/dt", -1.0))
    mut("nir_negative_timesteps", "timesteps -3", lambda f: _replace(f, "node/metadata/spikebridge/timesteps", -3))
    mut("nir_bad_readout", "readout not known", lambda f: f["node/metadata/spikebridge"].create_dataset(
        "readout", data="<script>alert(1)</script>"))
    mut("nir_bad_reset", "reset kind not known", lambda f: f["node/nodes/lif"].create_group(
        "metadata/spikebridge").create_dataset("reset", data="explode"))
    mut("nir_zero_dim_weight", "weight (0, 4)", lambda f: _replace(f, "node/nodes/fc/weight", np.ones((0, 4))))
    mut("nir_zero_input_shape", "Input of shape [0]", lambda f: _replace(f, "node/nodes/input/shape", np.array([0])))
    mut("nir_negative_input_shape", "Input of shape [-4]",
        lambda f: _replace(f, "node/nodes/input/shape", np.array([-4])))
    mut("nir_huge_input_shape", "Input of shape [2**40]",
        lambda f: _replace(f, "node/nodes/input/shape", np.array([1 << 40])))
    mut("nir_huge_declared_dim", "dataset declaring 2**40 elements (never written)",
        lambda f: f.create_dataset("node/nodes/fc/extra", shape=(1 << 40,), dtype="f4", chunks=(1024,)))
    mut("nir_huge_declared_bytes", "dataset declaring 8 GiB (never written)",
        lambda f: f["node/nodes/fc"].create_dataset("bias2", shape=(1 << 31,), dtype="f4", chunks=(1 << 16,)))
    mut("nir_many_dims", "a 12-D dataset", lambda f: f.create_dataset("node/x", data=np.zeros((1,) * 12)))

    def heap_loop(p):
        """A global-heap collection whose object after the first few is a free-space entry of
        size 0: HDF5 reading a variable-length string from it never returns (found by the
        loader fuzzer; no Python signal can interrupt it)."""
        import struct
        data = bytearray(base_bytes)
        at = data.index(b"GCOL")
        j = at + 16
        for _ in range(3):  # keep three objects, then the poisoned entry
            size = struct.unpack_from("<Q", data, j + 8)[0]
            j += 16 + (size + 7) // 8 * 8
        struct.pack_into("<HHIQ", data, j, 0, 0, 0, 0)
        p.write_bytes(bytes(data))

    nir_case("nir_global_heap_loop", "vlen strings in a global heap with a size-0 free-space entry", heap_loop)

    def bomb(f):  # 512 MiB of float32 zeros declared, one gzip chunk stored (~64 KiB on disk)
        del f["node/nodes/lif/r"]
        ds = f.create_dataset("node/nodes/lif/r", shape=(1 << 27,), dtype="f4", chunks=(1 << 24,),
                              compression="gzip", compression_opts=9, fillvalue=0.0)
        ds[: 1 << 24] = np.zeros(1 << 24, np.float32)
    mut("nir_compression_bomb", "gzip bomb: 512 MiB of zeros in a small file", bomb)

    def deep_groups(f, depth=64):
        g = f["node/metadata"]
        for i in range(depth):
            g = g.create_group(f"d{i}")
    mut("nir_deep_nesting", "64 nested groups", deep_groups)

    def deep_graphs(f, depth=40):
        g = f["node/nodes"]
        for i in range(depth):
            sub = g.create_group(f"sub{i}")
            sub.create_dataset("type", data="NIRGraph")
            sub.create_dataset("edges", data=np.zeros((0, 2), dtype=object), dtype=h5py.string_dtype())
            g = sub.create_group("nodes")
    mut("nir_deep_subgraphs", "40 nested NIRGraph nodes", deep_graphs)
    mut("nir_hard_link_cycle", "a group hard-linked to its ancestor",
        lambda f: f["node/nodes/fc"].__setitem__("loop", f["node"]))
    mut("nir_hard_link_twice", "one dataset linked under two names",
        lambda f: f["node/nodes/lif"].__setitem__("v_reset2", f["node/nodes/lif/v_reset"]))
    mut("nir_soft_link_cycle", "soft link to the root", lambda f: f["node/nodes/fc"].__setitem__(
        "loop", h5py.SoftLink("/node")))
    mut("nir_soft_link_weight", "weight is a soft link", lambda f: (f["node/nodes/fc"].__delitem__("weight"),
        f.create_dataset("w", data=np.ones((3, 4))), f["node/nodes/fc"].__setitem__("weight", h5py.SoftLink("/w"))))
    secret = bases / "secret.bin"
    secret.write_bytes(np.arange(12, dtype=np.float32).tobytes())
    other_h5 = bases / "other.h5"
    with h5py.File(other_h5, "w") as g:
        g.create_dataset("w", data=np.ones((3, 4), np.float32))
    mut("nir_external_link", "weight is an external link into another file",
        lambda f: (f["node/nodes/fc"].__delitem__("weight"),
                   f["node/nodes/fc"].__setitem__("weight", h5py.ExternalLink(str(other_h5), "/w"))))
    mut("nir_external_link_passwd", "external link to /etc/passwd",
        lambda f: f["node/nodes"].__setitem__("evil", h5py.ExternalLink("/etc/passwd", "/")))
    mut("nir_external_storage", "weight stored in an arbitrary local file",
        lambda f: (f["node/nodes/fc"].__delitem__("weight"),
                   f["node/nodes/fc"].create_dataset("weight", shape=(3, 4), dtype="f4",
                                                     external=[(str(secret), 0, 48)])))
    mut("nir_external_storage_traversal", "external storage ../../../etc/hostname",
        lambda f: f["node/nodes/fc"].create_dataset("extra", shape=(4,), dtype="u1",
                                                    external=[("../../../../../../etc/hostname", 0, 4)]))

    def virtual(f):
        layout = h5py.VirtualLayout(shape=(3, 4), dtype="f4")
        layout[:] = h5py.VirtualSource(str(other_h5), "w", shape=(3, 4))
        del f["node/nodes/fc/weight"]
        f["node/nodes/fc"].create_virtual_dataset("weight", layout)
    mut("nir_virtual_dataset", "weight is a virtual dataset over another file", virtual)
    mut("nir_compound_dtype", "compound-typed dataset",
        lambda f: f.create_dataset("node/nodes/fc/c", data=np.zeros(2, dtype=[("a", "i4"), ("b", "f8")])))
    mut("nir_object_reference", "object-reference dataset",
        lambda f: f.create_dataset("node/nodes/fc/ref", data=[f["node"].ref], dtype=h5py.ref_dtype))
    mut("nir_no_input_node", "graph without Input", lambda f: (
        f["node/nodes"].__delitem__("input"),
        _replace(f, "node/edges", np.array([["fc", "lif"], ["lif", "output"]], dtype=object),
                 dtype=h5py.string_dtype())))
    mut("nir_input_with_incoming", "Input node with an incoming edge", lambda f: _replace(
        f, "node/edges", np.array([["input", "fc"], ["fc", "lif"], ["lif", "output"], ["lif", "input"]],
                                  dtype=object), dtype=h5py.string_dtype()))
    mut("nir_cycle_shape_mismatch", "back edge carries the wrong shape", lambda f: _replace(
        f, "node/edges", np.array([["input", "fc"], ["fc", "lif"], ["lif", "output"], ["lif", "fc"]],
                                  dtype=object), dtype=h5py.string_dtype()))
    mut("nir_negative_tau", "LIF with tau <= 0", lambda f: (
        f["node/nodes"].__delitem__("lif"), f["node/nodes"].create_group("lif"),
        f["node/nodes/lif"].create_dataset("type", data="LIF"),
        [f["node/nodes/lif"].create_dataset(k, data=v) for k, v in
         (("tau", -np.ones(3)), ("r", np.ones(3)), ("v_leak", np.zeros(3)), ("v_threshold", np.ones(3)),
          ("v_reset", np.zeros(3)))]))
    mut("nir_conv_zero_stride", "Conv2d with stride 0", lambda f: (
        f["node/nodes"].__delitem__("fc"), f["node/nodes"].create_group("fc"),
        [f["node/nodes/fc"].create_dataset(k, data=v) for k, v in
         (("type", "Conv2d"), ("weight", np.ones((3, 4, 1, 1))), ("bias", np.zeros(3)), ("stride", np.array([0, 0])),
          ("padding", np.array([0, 0])), ("dilation", np.array([1, 1])), ("groups", 1),
          ("input_shape", np.array([1, 1])))]))
    mut("nir_string_bomb", "two million empty strings", lambda f: f.create_dataset(
        "node/metadata/strs", shape=(2_000_000,), dtype=h5py.string_dtype(), chunks=(4096,)))
    mut("nir_path_traversal_node", "node named ../../../x with a dangling edge", lambda f: (
        f["node/nodes"].create_group("..\\..\\..\\x").create_dataset("type", data="Evil"),))

    # ---------------- checkpoints: model.json ----------------
    cd = out / "ckpt"
    cd.mkdir(exist_ok=True)
    meta_text = (base_ckpt / "model.json").read_text()
    meta = json.loads(meta_text)

    def ckpt_case(cid, kind, fname, note, writer):
        d = _copy_dir(base_ckpt, cd / cid)
        writer(d / fname)
        cases.append(Case(cid, kind, str(d / fname), str(d), note))

    def mj(cid, note, text):
        ckpt_case(cid, "model.json", "model.json", note,
                  lambda p: p.write_bytes(text if isinstance(text, bytes) else text.encode()))

    def mjd(cid, note, fn):
        m = json.loads(meta_text)
        fn(m)
        mj(cid, note, json.dumps(m))

    mj("json_truncated", "truncated", meta_text[: len(meta_text) // 2])
    mj("json_empty", "empty file", "")
    mj("json_random", "random bytes", rng.bytes(300))
    mj("json_bad_utf8", "invalid UTF-8", b'{"format": "\xff\xfe"}')
    mj("json_not_object", "top level is a list", "[1, 2, 3]")
    mj("json_nan", "NaN literal", meta_text.replace('"timesteps": 4', '"timesteps": NaN'))
    mj("json_infinity", "Infinity literal", meta_text.replace('"timesteps": 4', '"timesteps": Infinity'))
    mj("json_deep_nesting", "100k nested arrays", "[" * 100_000 + "]" * 100_000)
    mj("json_huge_file", "5 MiB of whitespace", meta_text + " " * (5 << 20))
    for key in ("format", "layers", "timesteps", "input_shape"):
        mjd(f"json_missing_{key}", f"missing {key}", lambda m, key=key: m.pop(key))
    mjd("json_wrong_type_timesteps", "timesteps is a string", lambda m: m.update(timesteps="4"))
    mjd("json_zero_timesteps", "timesteps 0", lambda m: m.update(timesteps=0))
    mjd("json_huge_timesteps", "timesteps 10**12", lambda m: m.update(timesteps=10 ** 12))
    mjd("json_bool_classes", "num_classes true", lambda m: m.update(num_classes=True))
    mjd("json_zero_input_dim", "input_shape [0, 8, 8]", lambda m: m.update(input_shape=[0, 8, 8]))
    mjd("json_negative_input_dim", "input_shape [1, -8, 8]", lambda m: m.update(input_shape=[1, -8, 8]))
    mjd("json_huge_input_dim", "input_shape [1, 2**40, 8]", lambda m: m.update(input_shape=[1, 1 << 40, 8]))
    mjd("json_unknown_layer_type", "layer type 'evil'", lambda m: m["layers"].insert(0, {"name": "e", "type": "evil"}))
    mjd("json_layer_not_object", "a layer is a string", lambda m: m["layers"].insert(0, "flatten"))
    mjd("json_wrong_format", "format of another tool", lambda m: m.update(format="pytorch-lightning"))
    mjd("json_zero_features", "hidden layer of 0 features", lambda m: m["layers"][1].update(out_features=0))
    mjd("json_negative_features", "hidden layer of -5 features", lambda m: m["layers"][1].update(out_features=-5))
    mjd("json_huge_features", "hidden layer of 2**40 features", lambda m: m["layers"][1].update(out_features=1 << 40))
    mjd("json_layer_name_traversal", "layer named ../../../evil",
        lambda m: m["layers"][1].update(name="../../../evil"))
    mjd("json_layer_features_string", "out_features is a string", lambda m: m["layers"][1].update(out_features="9"))

    # ---------------- checkpoints: safetensors ----------------
    st_bytes = (base_ckpt / "weights.safetensors").read_bytes()
    hlen = struct.unpack("<Q", st_bytes[:8])[0]
    header = json.loads(st_bytes[8:8 + hlen])
    body = st_bytes[8 + hlen:]

    def st(cid, note, data):
        ckpt_case(cid, "safetensors", "weights.safetensors", note, lambda p: p.write_bytes(data))

    def st_header(cid, note, fn, body_=None):
        h = json.loads(json.dumps(header))
        fn(h)
        hb = json.dumps(h).encode()
        st(cid, note, struct.pack("<Q", len(hb)) + hb + (body if body_ is None else body_))

    st("st_truncated", "truncated", st_bytes[: len(st_bytes) // 2])
    st("st_truncated_header", "cut inside the header", st_bytes[: 8 + hlen // 2])
    st("st_empty", "empty file", b"")
    st("st_random", "random bytes", rng.bytes(1000))
    st("st_huge_header_len", "header length 2**63", struct.pack("<Q", 1 << 63) + st_bytes[8:])
    st("st_header_len_past_end", "header length past the end", struct.pack("<Q", len(st_bytes)) + st_bytes[8:])
    st("st_header_not_json", "header is not JSON", struct.pack("<Q", 8) + b"not json" + body)
    st("st_header_list", "header is a list", struct.pack("<Q", 2) + b"[]" + body)
    first = next(k for k in header if k != "__metadata__")
    st_header("st_unknown_dtype", "dtype Q99", lambda h: h[first].update(dtype="Q99"))
    st_header("st_offsets_out_of_range", "data offsets past the end",
              lambda h: h[first].update(data_offsets=[0, len(body) + 4096]))
    st_header("st_shape_vs_offsets", "shape does not match the byte range",
              lambda h: h[first].update(shape=[7, 7]))
    st_header("st_negative_dim", "shape with -1", lambda h: h[first].update(shape=[-1, 64]))
    st_header("st_huge_dim", "shape [2**40, 2**40]", lambda h: h[first].update(shape=[1 << 40, 1 << 40]))
    st_header("st_missing_tensor", "a tensor is missing", lambda h: h.pop(first))
    wname = "layers.fc1.op.weight"

    def _np_st(cid, note, tensors):
        from safetensors.numpy import save
        st(cid, note, save(tensors))

    from safetensors.numpy import load as st_load
    base_t = st_load(st_bytes)
    _np_st("st_nan", "NaN in a weight", {**base_t, wname: np.full_like(base_t[wname], np.nan)})
    _np_st("st_inf", "Inf in a weight", {**base_t, wname: np.full_like(base_t[wname], np.inf)})
    _np_st("st_shape_mismatch", "weight of the wrong shape", {**base_t, wname: np.zeros((5, 5), np.float32)})
    _np_st("st_extra_traversal_name", "extra tensor named ../../../evil",
           {**base_t, "../../../evil": np.zeros(2, np.float32)})
    _np_st("st_zero_dim", "weight with a 0 dimension", {**base_t, wname: np.zeros((0, 64), np.float32)})
    _np_st("st_int_weight", "weight stored as int64", {**base_t, wname: base_t[wname].astype(np.int64)})

    # ---------------- checkpoints: train_state.pt (pickles) ----------------
    import builtins
    import importlib
    import subprocess
    touch = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').write('x')"
    payloads = {
        "os_system": _Payload(os.system, (touch,)),
        "subprocess_call": _Payload(subprocess.call, (["touch", str(marker)],)),
        "subprocess_popen": _Payload(subprocess.Popen, (["touch", str(marker)],)),
        "subprocess_check_output": _Payload(subprocess.check_output, (touch,)),
        "eval": _Payload(builtins.eval, (code,)),
        "exec": _Payload(builtins.exec, (code,)),
        "importlib": _Payload(builtins.eval, (f"__import__('importlib').import_module('os').system({touch!r})",)),
        "import_module": _Payload(importlib.import_module, ("this",)),
    }

    def pt(cid, note, data):
        ckpt_case(cid, "pt", "train_state.pt", note, lambda p: p.write_bytes(data))

    def torch_zip(payload: bytes) -> bytes:
        """A torch.save zip whose data.pkl is replaced by ``payload``."""
        import torch
        buf = io.BytesIO()
        torch.save({"epoch": 1}, buf)
        src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
        dst_buf = io.BytesIO()
        with zipfile.ZipFile(dst_buf, "w", zipfile.ZIP_STORED) as dst:
            for info in src.infolist():
                data = src.read(info)
                if info.filename.endswith("/data.pkl"):
                    data = payload
                dst.writestr(info.filename, data)
        return dst_buf.getvalue()

    for name, obj in payloads.items():
        raw = _pickle_bytes({"epoch": 1, "optimizer": obj})
        pt(f"pt_raw_{name}", f"raw pickle calling {name}", raw)
        pt(f"pt_zip_{name}", f"torch zip whose data.pkl calls {name}", torch_zip(raw))
    arg = pickle.dumps(touch, protocol=2)[2:-1]  # the string opcode without PROTO/STOP
    pt("pt_raw_posix_system", "hand-made GLOBAL posix.system", _raw_pickle_global("posix", "system", b"(" + arg + b"t"))
    pt("pt_raw_nt_system", "hand-made GLOBAL nt.system", _raw_pickle_global("nt", "system", b"(" + arg + b"t"))
    pt("pt_raw_runpy", "runpy._run_code", _raw_pickle_global("runpy", "_run_code", b"(" + pickle.dumps(
        code, protocol=2)[2:-1] + b"}t"))
    pt("pt_truncated", "truncated torch zip", torch_zip(_pickle_bytes({"epoch": 1}))[:200])
    pt("pt_random", "random bytes", rng.bytes(500))
    pt("pt_empty", "empty file", b"")
    pt("pt_not_a_dict", "a valid pickle of a list", torch_zip(_pickle_bytes([1, 2, 3])))
    pt("pt_missing_keys", "a dict without optimizer state", torch_zip(_pickle_bytes({"epoch": 1})))
    zb = io.BytesIO()
    with zipfile.ZipFile(zb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00." + b"\x00" * (300 << 20))
    pt("pt_zip_bomb", "zip member of 300 MiB compressed to a few hundred KiB", zb.getvalue())
    tb = io.BytesIO()
    with zipfile.ZipFile(tb, "w") as z:
        z.writestr("../../../evil/data.pkl", _pickle_bytes({"epoch": 1}))
    pt("pt_zip_traversal", "zip member named ../../../evil/data.pkl", tb.getvalue())

    # ---------------- ONNX ----------------
    od = out / "onnx"
    od.mkdir(exist_ok=True)
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def onnx_model(weight=None, ext=None, dims=None):
        w = numpy_helper.from_array(np.ones((2, 3), np.float32) if weight is None else weight, "w")
        if dims is not None:
            del w.dims[:]
            w.dims.extend(dims)
        if ext is not None:
            w.ClearField("raw_data")
            w.data_location = TensorProto.EXTERNAL
            for k, v in ext.items():
                e = w.external_data.add()
                e.key, e.value = k, str(v)
        g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], initializer=[w])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    def onnx_case(cid, note, data: bytes, sub: str | None = None):
        d = od / cid
        d.mkdir()
        p = d / "model.onnx"
        p.write_bytes(data)
        cases.append(Case(cid, "onnx", str(p), str(p), note))
        return d

    good = onnx_model().SerializeToString()
    onnx_case("onnx_truncated", "truncated", good[: len(good) // 2])
    onnx_case("onnx_random", "random bytes", rng.bytes(2000))
    onnx_case("onnx_empty", "empty file", b"")
    onnx_case("onnx_is_hdf5", "a NIR file named .onnx", base_bytes)
    onnx_case("onnx_ext_parent", "external data ../secret.bin",
              onnx_model(ext={"location": "../secret.bin"}).SerializeToString())
    onnx_case("onnx_ext_absolute", "external data /etc/passwd",
              onnx_model(ext={"location": "/etc/passwd"}).SerializeToString())
    onnx_case("onnx_ext_deep_traversal", "external data ../../../../../../etc/passwd",
              onnx_model(ext={"location": "../../../../../../etc/passwd"}).SerializeToString())
    d = onnx_case("onnx_ext_symlink", "external data through a symlink pointing outside",
                  onnx_model(ext={"location": "weights.bin"}).SerializeToString())
    (d / "weights.bin").symlink_to(secret)
    onnx_case("onnx_ext_missing", "external data file missing",
              onnx_model(ext={"location": "nope.bin"}).SerializeToString())
    d = onnx_case("onnx_ext_offset_past_end", "offset past the end of the data file",
                  onnx_model(ext={"location": "w.bin", "offset": 4096, "length": 24}).SerializeToString())
    (d / "w.bin").write_bytes(b"\0" * 24)
    d = onnx_case("onnx_ext_huge_length", "length 2**40",
                  onnx_model(ext={"location": "w.bin", "length": 1 << 40}).SerializeToString())
    (d / "w.bin").write_bytes(b"\0" * 24)
    d = onnx_case("onnx_ext_directory", "external data location is a directory",
                  onnx_model(ext={"location": "sub"}).SerializeToString())
    (d / "sub").mkdir()
    onnx_case("onnx_negative_dims", "initializer dims [-2, 3]", onnx_model(dims=[-2, 3]).SerializeToString())
    onnx_case("onnx_huge_dims", "initializer dims [2**40, 2**40]",
              onnx_model(dims=[1 << 40, 1 << 40]).SerializeToString())
    onnx_case("onnx_dims_vs_data", "dims (7, 7) with 6 values", onnx_model(dims=[7, 7]).SerializeToString())
    onnx_case("onnx_no_graph", "a model without a graph", onnx.ModelProto(ir_version=8).SerializeToString())

    def _ld(field: int, payload: bytes) -> bytes:  # a length-delimited protobuf field, by hand
        n, var = len(payload), b""
        while True:
            byte = n & 0x7F
            n >>= 7
            var += bytes([byte | (0x80 if n else 0)])
            if not n:
                break
        return bytes([(field << 3) | 2]) + var + payload

    def nested_if(depth):  # GraphProto.node(1) -> NodeProto.attribute(5) -> AttributeProto.g(6) -> ...
        g = b""
        for _ in range(depth):
            g = _ld(1, _ld(5, _ld(6, g)))
        return bytes([8, 8]) + _ld(7, g)  # ir_version 8, graph
    onnx_case("onnx_deep_nesting", "subgraphs nested 300 deep", nested_if(300))
    # issue 18: 2M empty node records (4 MB on disk, ~0.7 GiB parsed): bounded before parsing
    onnx_case("onnx_empty_nodes", "2M empty node records", bytes([8, 8]) + _ld(7, b"\x0a\x00" * 2_000_000))
    onnx_case("onnx_ext_nul_location", "external data location with a NUL byte",
              onnx_model(ext={"location": "w\x00.bin"}).SerializeToString())
    m = onnx_model()  # a model-local function whose body's Constant reads external data
    t = helper.make_tensor("k", TensorProto.FLOAT, [3], vals=[0.0, 0.0, 0.0])
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="k.bin")
    fn = helper.make_function("local", "F", ["a"], ["b"], [helper.make_node("Constant", [], ["c"], value=t),
                                                          helper.make_node("Add", ["a", "c"], ["b"])],
                              opset_imports=[helper.make_opsetid("", 17)])
    m.functions.append(fn)
    m.opset_import.append(helper.make_opsetid("local", 1))
    m.graph.node.append(helper.make_node("F", ["y"], ["z"], domain="local"))
    m.graph.output[0].name = "z"
    d = onnx_case("onnx_ext_in_function", "external data inside a model-local function body", m.SerializeToString())
    (d / "k.bin").write_bytes(b"\0" * 12)
    onnx_case("onnx_oversize", "file larger than the bound (sparse)", b"")
    os.truncate(od / "onnx_oversize" / "model.onnx", (2 << 30) + 1)

    # ---------------- run directories (report) ----------------
    rd = out / "rundir"
    rd.mkdir(exist_ok=True)
    base_run = bases / "run"
    base_run.mkdir()
    shutil.copy(base_nir, base_run / "graph.nir")
    (base_run / "run.json").write_text(json.dumps({"accuracy": {"eventsim": 0.5}, "seed": 0}))
    counts = {"counts/fc/synaptic_ops": np.ones(4), "counts/lif/spikes": np.ones(4)}
    np.savez(base_run / "eventsim.npz", output=np.zeros((4, 2, 3)), **counts)

    def run_case(cid, fname, note, writer):
        d = _copy_dir(base_run, rd / cid)
        writer(d / fname)
        cases.append(Case(cid, "rundir", str(d / fname), str(d), note))

    run_case("run_json_nan", "run.json", "NaN accuracy", lambda p: p.write_text('{"accuracy": {"eventsim": NaN}}'))
    run_case("run_json_list", "run.json", "top level is a list", lambda p: p.write_text("[]"))
    run_case("run_json_deep", "run.json", "nested 100000 deep (RecursionError)",
             lambda p: p.write_text('{"accuracy": ' + "[" * 100_000 + "]" * 100_000 + "}"))
    run_case("run_json_random", "run.json", "random bytes", lambda p: p.write_bytes(rng.bytes(100)))
    run_case("run_json_accuracy_string", "run.json", "accuracy is markup",
             lambda p: p.write_text('{"accuracy": {"eventsim": "<script>alert(1)</script>"}}'))
    run_case("run_npz_random", "eventsim.npz", "random bytes", lambda p: p.write_bytes(rng.bytes(300)))
    run_case("run_npz_pickle", "eventsim.npz", "object array (pickle) inside",
             lambda p: np.savez(p, output=np.array([_Payload(os.system, (touch,))], dtype=object)))
    run_case("run_npz_bad_counts_key", "eventsim.npz", "key 'counts/x' without a kind",
             lambda p: np.savez(p, output=np.zeros((4, 2, 3)), **{"counts/x": np.ones(4)}))
    run_case("run_npz_no_output", "eventsim.npz", "no output arrays", lambda p: np.savez(p, labels=np.ones(3)))

    def npz_bomb(p):
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
            d_ = b"{'descr': '<f8', 'fortran_order': False, 'shape': (4, 2, 8388608), }"
            d_ = d_ + b" " * (63 - ((10 + len(d_)) % 64)) + b"\n"
            hdr = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d_)) + d_
            with z.open("output.npy", "w", force_zip64=True) as m:
                m.write(hdr)
                chunk = b"\0" * (16 << 20)
                for _ in range(32):
                    m.write(chunk)
    run_case("run_npz_bomb", "eventsim.npz", "512 MiB of zeros deflated", npz_bomb)
    run_case("run_nir_soft_link", "graph.nir", "graph with a soft link", lambda p: _h5(
        p, base_nir, lambda f: f["node"].__setitem__("evil", h5py.SoftLink("/"))))

    # ---------------- report.json read by `report --compare` ----------------
    cj = out / "compare"
    cj.mkdir(exist_ok=True)
    for cid, note, data in (("cmp_deep_nesting", "100k nested arrays", b"[" * 100_000 + b"]" * 100_000),
                            ("cmp_random", "random bytes", rng.bytes(200)),
                            ("cmp_list", "top level is a list", b"[1, 2]"),
                            ("cmp_no_schema", "an object without schema_version", b'{"accuracy": NaN}')):
        p = cj / f"{cid}.json"
        p.write_bytes(data)
        cases.append(Case(cid, "report.json", str(p), str(p), note))

    (out / "corpus.json").write_text(json.dumps([asdict(c) for c in cases], indent=1))
    return cases


def marker_path(out_dir) -> Path:
    return Path(out_dir).resolve() / MARKER_NAME


if __name__ == "__main__":
    cs = build(sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus")
    kinds: dict[str, int] = {}
    for c in cs:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    print(len(cs), kinds)
