"""report.json is strict JSON with the required keys; report.html is self-contained,
has every section and escapes every input string."""
import json
import re

import nir
import numpy as np
import pytest

from spikebridge.base.errors import InputError
from spikebridge.hardware.trace import Trace
from spikebridge.toolchain.report import SECTIONS, build_report, make_report, per_layer_stats

EVIL = "<script>alert(1)</script>"


def graph(name_if1="if1"):
    w1 = np.array([[1.0, 0.0, 2.0], [0.5, -1.0, 1.0]])
    nodes = {
        "input": nir.Input(input_type=np.array([3])),
        "fc1": nir.Affine(weight=w1, bias=np.zeros(2)),
        name_if1: nir.IF(r=np.ones(2), v_threshold=np.ones(2)),
        "fc2": nir.Affine(weight=np.ones((2, 2)), bias=np.zeros(2)),
        "if2": nir.IF(r=np.ones(2), v_threshold=np.ones(2)),
        "output": nir.Output(output_type=np.array([2])),
    }
    edges = [("input", "fc1"), ("fc1", name_if1), (name_if1, "fc2"), ("fc2", "if2"),
             ("if2", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"spikebridge": {"timesteps": 2}})


def trace(name_if1="if1"):
    a = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    s1 = np.zeros((2, 2, 2), dtype=bool)
    s1[0, :, :] = True  # both samples, both neurons spike at step 1
    s2 = np.zeros((2, 2, 2), dtype=bool)
    s2[0, 0, 1] = True
    return Trace(
        timesteps=2, batch=2,
        outputs={"output": s2.astype(float)},
        counts={"fc1": {"macs": a(10, 8)},
                name_if1: {"neuron_updates": a(4, 4), "spikes": a(4, 0)},
                "fc2": {"synaptic_ops": a(8, 0)},
                "if2": {"neuron_updates": a(4, 4), "spikes": a(1, 0)}},
        spikes={name_if1: s1, "if2": s2},
    )


def strict_load(path):
    def bad(c):
        raise ValueError(f"non-strict JSON constant {c}")
    return json.loads(path.read_text(), parse_constant=bad)


def test_per_layer_stats():
    rows = {r["node"]: r for r in per_layer_stats(trace(), graph())}
    assert list(rows) == ["fc1", "if1", "fc2", "if2"]
    assert rows["if1"]["neurons"] == 2
    assert rows["if1"]["firing_rate"] == pytest.approx(4 / (2 * 2 * 2))
    assert rows["if2"]["firing_rate"] == pytest.approx(1 / 8)
    assert rows["fc2"]["synaptic_ops_per_sample"] == 4.0
    assert rows["fc1"]["macs_per_sample"] == 9.0 and rows["fc1"]["ann_macs_per_sample"] == 5
    assert rows["fc1"]["firing_rate"] is None and rows["fc1"]["neurons"] == 0


def test_report_json_strict_with_required_keys(tmp_path):
    rep = make_report(tmp_path, graph(), trace(),
                      accuracy={"torch": 0.9, "eventsim": 0.875, "lava": None}, seed=7)
    data = strict_load(tmp_path / "report.json")
    for key in ("schema_version", "summary", "accuracy", "synaptic_ops_per_sample", "spikes_per_sample",
                "energy", "latency", "per_layer", "layers", "versions", "seed", "graph_sha256"):
        assert key in data, key
    assert data["accuracy"] == {"torch": 0.9, "eventsim": 0.875, "lava": None}
    assert data["synaptic_ops_per_sample"] == 4.0 and data["spikes_per_sample"] == 2.5
    assert set(data["energy"]) == {"horowitz-45nm", "loihi", "truenorth", "cpu", "gpu", "arm",
                                   "spinnaker", "spinnaker2"}
    for m in data["energy"].values():
        assert m["total_pj_per_sample"] > 0 and m["source"]
    assert data["energy"]["horowitz-45nm"]["total_pj_per_sample"] == pytest.approx(
        18 * 4.6 / 2 + 8 * 0.9 / 2)
    alt = data["energy"]["horowitz-45nm"]["other_first_layer_rule"]
    assert alt["first_layer"] == "once"
    assert alt["total_pj_per_sample"] == pytest.approx(18 / 2 * 4.6 / 2 + 8 * 0.9 / 2)
    assert data["latency"]["loihi"]["seconds_per_sample"] > 0
    for r in data["per_layer"]:
        assert {"node", "neurons", "firing_rate", "synaptic_ops_per_sample",
                "macs_per_sample"} <= set(r)
    assert data["seed"] == 7 and re.fullmatch(r"[0-9a-f]{64}", data["graph_sha256"])
    assert data["versions"]["nir"] and data["versions"]["numpy"]
    assert rep["schema_version"] == data["schema_version"]
    for stem in ("firing_rates", "synaptic_ops", "spike_raster", "energy_chip", "energy_gpu_ann"):
        assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / f"{stem}.svg").read_bytes().lstrip().startswith(b"<?xml")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_nan_becomes_null(tmp_path):
    rep = build_report(graph(), trace())
    rep["extra"] = {"x": float("nan")}
    from spikebridge.toolchain.report import write_report
    write_report(tmp_path, rep)
    assert strict_load(tmp_path / "report.json")["extra"]["x"] is None


def test_graph_hash_changes_with_weights():
    g1, g2 = graph(), graph()
    g2.nodes["fc2"].weight[0, 0] = 2.0
    h1 = build_report(g1)["graph_sha256"]
    assert h1 == build_report(graph())["graph_sha256"]
    assert h1 != build_report(g2)["graph_sha256"]


def test_accuracy_validated():
    with pytest.raises(InputError, match="torch"):
        build_report(graph(), accuracy={"torch": 93.9})


def test_html_sections_and_escaping(tmp_path):
    make_report(tmp_path, graph(EVIL), trace(EVIL), accuracy={EVIL: 0.5, "eventsim": 1.0})
    text = (tmp_path / "report.html").read_text()
    for _, heading in SECTIONS:
        assert f"<h2>{heading}</h2>" in text, heading
    assert EVIL not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script" not in text.lower()
    assert text.count("data:image/svg+xml;base64,") == 5  # firing, SOPs, chip energy, GPU/ANN energy, raster
    # self-contained: no external resources
    assert not re.search(r'(src|href)="(?!data:|#)', text)
    assert "Davies" in text and "Horowitz" in text and "Merolla" in text
    data = strict_load(tmp_path / "report.json")
    assert EVIL in data["accuracy"] and any(r["node"] == EVIL for r in data["per_layer"])


def test_report_without_trace(tmp_path):
    make_report(tmp_path, graph())
    data = strict_load(tmp_path / "report.json")
    assert data["energy"] == {} and data["latency"] == {} and data["synaptic_ops_per_sample"] is None
    text = (tmp_path / "report.html").read_text()
    for _, heading in SECTIONS:
        assert f"<h2>{heading}</h2>" in text
