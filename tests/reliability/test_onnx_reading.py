"""Issue 18 §1: hostile ONNX files through `spikebridge convert` (every file generated here).

Each case: exit 3, one `error:` line (naming the node where a node is at fault), no
traceback, no output file, under a 1 GiB memory limit.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.reliability._contract import only, refused, run_cli

F32 = np.float32


def conv_model(conv_attrs=None, w_shape=(4, 1, 3, 3), bias_len=4, extra_inits=(), functions=(), pre_nodes=(),
               fc_in=None, pool=False) -> onnx.ModelProto:
    """x (N,1,8,8) -> Conv 'conv1' -> Relu [-> GlobalAveragePool] -> Flatten -> Gemm 'fc' (10 classes)."""
    rng = np.random.default_rng(0)
    attrs = {"pads": [1, 1, 1, 1], "strides": [1, 1]} if conv_attrs is None else conv_attrs
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, w_shape).astype(F32), "w1"),
             numpy_helper.from_array(np.zeros(bias_len, F32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.1, (10, fc_in or 4 * 8 * 8)).astype(F32), "w2"),
             numpy_helper.from_array(np.zeros(10, F32), "b2"), *extra_inits]
    nodes = [*pre_nodes,
             helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv1", **attrs),
             helper.make_node("Relu", ["c"], ["r"], name="relu1"),
             *([helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap")] if pool else []),
             helper.make_node("Flatten", ["p" if pool else "r"], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "hostile", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("local", 1)] if functions else [])
    return helper.make_model(g, opset_imports=opsets, functions=list(functions), ir_version=8)


@pytest.fixture()
def calib(tmp_path):
    p = tmp_path / "calib.npy"
    np.save(p, np.random.default_rng(1).uniform(0, 1, (16, 1, 8, 8)).astype(F32))
    return p


def convert(tmp_path, model_path, calib, *extra, **kw):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    r = run_cli("convert", model_path, "--timesteps", "4", "--calibration", calib, "--out", out / "g.nir",
                *extra, **kw)
    return r, out


def test_a_valid_model_converts_and_onnxruntime_stays_quiet(tmp_path, calib):
    """Control case, and onnxruntime's own warnings (an unused initializer makes it print a
    coloured `[W:onnxruntime:...] Removing initializer` line) never reach stderr."""
    m = conv_model(extra_inits=[numpy_helper.from_array(np.ones(3, F32), "unused")])
    onnx.save(m, str(tmp_path / "m.onnx"))
    r, out = convert(tmp_path, tmp_path / "m.onnx", calib)
    assert r.code == 0, r.stderr
    assert "onnxruntime" not in r.stderr and "\x1b" not in r.stderr, r.stderr
    only(out, "g.nir")


def test_onnxruntime_failure_is_one_line_without_its_own_log(tmp_path, calib):
    """onnxruntime refuses the model (auto_pad VALID with pads) after logging a coloured
    warning about an unused initializer: only our one error line reaches stderr."""
    m = conv_model({"auto_pad": "VALID", "pads": [1, 1, 1, 1]},
                   extra_inits=[numpy_helper.from_array(np.ones(3, F32), "unused")])
    onnx.save(m, str(tmp_path / "m.onnx"))
    r, out = convert(tmp_path, tmp_path / "m.onnx", calib)
    refused(r, 3, "onnxruntime cannot run the model")
    assert "[W:onnxruntime" not in r.stderr and "Removing initializer" not in r.stderr
    only(out)


def test_external_data_inside_a_function_body_is_refused(tmp_path, calib):
    """A Constant in a model-local function body points at external data: onnxruntime would
    resolve it against the current directory. Refused naming the function, before anything
    reads the file (its value never appears)."""
    t = helper.make_tensor("secret", TensorProto.FLOAT, [1], vals=[0.0])
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="secret.bin")
    t.external_data.add(key="length", value="4")
    fn = helper.make_function("local", "AddSecret", ["a"], ["b"],
                              [helper.make_node("Constant", [], ["k"], value=t),
                               helper.make_node("Add", ["a", "k"], ["b"])],
                              opset_imports=[helper.make_opsetid("", 17)])
    pre = [helper.make_node("AddSecret", ["x0"], ["x"], domain="local", name="call")]
    m = conv_model(functions=[fn], pre_nodes=pre)
    m.graph.input[0].name = "x0"
    (tmp_path / "model").mkdir()
    (tmp_path / "cwd").mkdir()
    onnx.save(m, str(tmp_path / "model" / "m.onnx"))
    secret = np.array([123456.75], F32)
    for d in ("model", "cwd"):  # beside the model (inside its folder) and in the current directory
        (tmp_path / d / "secret.bin").write_bytes(secret.tobytes())
    r, out = convert(tmp_path, tmp_path / "model" / "m.onnx", calib, cwd=tmp_path / "cwd")
    line = refused(r, 3, "function 'AddSecret'", "external data")
    assert "123456" not in r.stderr + r.stdout, line
    only(out)


def _external_with_location(loc: str) -> onnx.ModelProto:
    m = conv_model()
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=loc)
    return m


CRAFTED = {
    "stride 0": (lambda: conv_model({"strides": [0, 0]}), "strides"),
    "kernel larger than the input": (lambda: conv_model({}, w_shape=(4, 1, 9, 9), fc_in=4), "kernel"),
    "negative pads": (lambda: conv_model({"pads": [-2, -2, -2, -2]}, fc_in=4 * 4 * 4), "pads"),
    "dilation 2^40": (lambda: conv_model({"dilations": [1 << 40, 1 << 40]}), "dilations"),
    "bias of the wrong length": (lambda: conv_model(bias_len=7), "bias"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_attributes_are_refused_naming_the_node(tmp_path, calib, case):
    make, word = CRAFTED[case]
    onnx.save(make(), str(tmp_path / "m.onnx"))
    r, out = convert(tmp_path, tmp_path / "m.onnx", calib)
    refused(r, 3, word)
    assert "conv1" in r.stderr, r.stderr  # the node at fault is named
    only(out)


def test_nul_byte_in_an_external_data_location(tmp_path, calib):
    m = _external_with_location("w\x00.bin")
    p = tmp_path / "m.onnx"
    p.write_bytes(m.SerializeToString())  # onnx.save would try to resolve the location itself
    r, out = convert(tmp_path, p, calib)
    line = refused(r, 3, "control character")
    assert "w1" in line
    only(out)


def test_twenty_megabytes_of_empty_node_records_are_refused_before_parsing(tmp_path, calib):
    """ModelProto{graph{node{} x 10M}}: 20 MB on disk, 3.5 GiB once parsed. The wire-format
    scan counts the messages first; refused under a 1 GiB limit."""
    def ld(field: int, payload: bytes) -> bytes:
        n, out = len(payload), bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                break
        return bytes([field << 3 | 2]) + bytes(out) + payload
    graph = b"\x0a\x00" * 10_000_000  # GraphProto.node (field 1), empty
    data = b"\x08\x08" + ld(7, graph) + ld(8, b"\x10\x11")  # ir_version 8, graph, opset_import{version 17}
    p = tmp_path / "empty_nodes.onnx"
    p.write_bytes(data)
    r, out = convert(tmp_path, p, calib)
    refused(r, 3, "protobuf messages")
    only(out)


def test_huge_pads_make_the_float64_self_check_refuse_not_allocate(tmp_path):
    """Conv pads 600 on an 8x8 input: the float64 self-check over 1000 calibration samples
    would hold 11.7 GB. Estimated first and refused under a 1 GiB limit."""
    np.save(tmp_path / "calib.npy", np.random.default_rng(1).uniform(0, 1, (1000, 1, 8, 8)).astype(F32))
    m = conv_model({"pads": [600, 600, 600, 600]}, fc_in=4, pool=True)
    onnx.save(m, str(tmp_path / "m.onnx"))
    r, out = convert(tmp_path, tmp_path / "m.onnx", tmp_path / "calib.npy")
    refused(r, 3, "GiB")
    only(out)
