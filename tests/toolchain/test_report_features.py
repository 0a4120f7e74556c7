"""Report features: first-layer rule stated, user TOML models, sweep (accuracy vs T), measured
ONNX baseline, --compare, `spikebridge report GRAPH.nir`, and the HTML structure check that
stands in for a screenshot in CI (every section present and non-empty, only our own markup)."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import nir
import numpy as np
import pytest

from spikebridge.base.errors import InputError
from spikebridge.toolchain.report import (EXTRA_SECTIONS, SECTIONS, build_report, load_sweep, make_report,
                                          normalise_sweep)
from tests.toolchain.test_report import EVIL, graph, strict_load, trace

REPO = Path(__file__).resolve().parents[2]
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "nav", "a",
                "section", "table", "thead", "tbody", "tr", "th", "td", "img", "ul", "li", "b",
                "span", "div", "code", "details", "summary", "ol"}
TOML = '''name = "mychip"
kind = "chip-style"
[constants.synaptic_op]
value_pj = 10.0
source = "Doe 2030, Table 1"
'''
MEASURED = {"accuracy": 0.9, "latency_seconds_per_sample": 2.5e-5,
            "throughput_samples_per_second": 40000.0, "threads": 1, "provider": "CPUExecutionProvider"}


class Structure(HTMLParser):
    """Tags, attributes, sections (id -> text length and images) of a report page."""

    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.sections, self.stack = set(), [], {}, []
        self.images = []
        self.current = None
        self.text = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs += [(tag, k, v) for k, v in attrs]
        if tag == "section":
            self.current = dict(attrs)["id"]
            self.sections[self.current] = {"text": 0, "images": 0, "tables": 0, "h2": ""}
        if self.current and tag == "img":
            self.sections[self.current]["images"] += 1
            self.images.append(dict(attrs)["src"])
        if self.current and tag == "table":
            self.sections[self.current]["tables"] += 1
        self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self.current:
            s = self.sections[self.current]
            s["text"] += len(data.strip())
            if self.stack and self.stack[-1] == "h2":
                s["h2"] += data


def check_page(text: str, sections) -> Structure:
    """The CI stand-in for a screenshot: parse the page and check its structure."""
    p = Structure()
    p.feed(text)
    p.close()
    assert p.tags <= ALLOWED_TAGS, p.tags - ALLOWED_TAGS
    for tag, k, v in p.attrs:
        assert not k.startswith("on"), (tag, k)
        if k == "href":
            assert v.startswith("#"), v
        if k == "src" and v.startswith("data:image/svg+xml;base64,"):  # figures: SVG that parses as XML
            root = ET.fromstring(base64.b64decode(v.split(",", 1)[1]))
            assert root.tag == "{http://www.w3.org/2000/svg}svg", root.tag
            assert not list(root.iter("{http://www.w3.org/2000/svg}script"))
        elif k == "src":
            assert v.startswith("data:image/png;base64,"), v[:40]
            assert base64.b64decode(v.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    if tuple(sections) == tuple(SECTIONS):  # the report page: registered sections follow the summary card
        sections = [SECTIONS[0], *((k, t) for k, (t, _) in EXTRA_SECTIONS.items()), *SECTIONS[1:]]
    assert [k for k, _ in sections] == list(p.sections), list(p.sections)
    for key, heading in sections:
        s = p.sections[key]
        assert s["h2"] == heading and s["text"] > 20, (key, s)
    return p


def full_report(tmp_path, name="if1", **kw):
    return make_report(tmp_path, graph(name), trace(name), accuracy={"eventsim": 0.5}, seed=1,
                       measured=MEASURED, sweep=[{"timesteps": 1, "accuracy": {"eventsim": 0.3}},
                                                 {"timesteps": 2, "accuracy": {"eventsim": 0.5}}],
                       **kw)


def test_page_structure_and_escaping(tmp_path):
    full_report(tmp_path, EVIL)
    text = (tmp_path / "report.html").read_text()
    p = check_page(text, SECTIONS)
    for key, n in (("layers", 2), ("energy", 2), ("raster", 1), ("sweep", 1)):
        assert p.sections[key]["images"] == n, key
    assert EVIL in "".join(p.text)  # shown as text, never as markup
    assert (tmp_path / "accuracy_vs_T.png").is_file() and (tmp_path / "energy_chip.svg").is_file()


def test_first_layer_rule_selectable_and_stated(tmp_path):
    rep = full_report(tmp_path, first_layer="once")
    assert rep["first_layer"] == "once" and rep["first_layer_rule"].startswith("once:")
    h = rep["energy"]["horowitz-45nm"]
    assert h["first_layer"] == "once" and h["other_first_layer_rule"]["first_layer"] == "per_step"
    assert rep["energy"]["loihi"]["first_layer"] == "per_step"  # chip-style: always per step
    text = (tmp_path / "report.html").read_text()
    assert "First-layer rule used: <b>once:" in text
    with pytest.raises(InputError, match="first-layer"):
        build_report(graph(), trace(), first_layer="twice")


def test_measured_baseline_beside_modelled(tmp_path):
    rep = full_report(tmp_path)
    assert rep["measured"]["onnx"]["latency_seconds_per_sample"] == 2.5e-5
    assert "measured" in rep["measured"]["onnx"]["label"]
    text = (tmp_path / "report.html").read_text()
    lat = text[text.index('<section id="latency">'):text.index('<section id="raster">')]
    assert ">measured<" in lat and "modelled" in lat and ">25.00<" in lat and "(µs)" in lat


def test_sweep_forms_and_rejections(tmp_path):
    a = normalise_sweep(np.array([[4, 0.9], [1, 0.5]]))
    assert a == [{"timesteps": 1, "accuracy": {"accuracy": 0.5}}, {"timesteps": 4, "accuracy": {"accuracy": 0.9}}]
    assert normalise_sweep({"timesteps": [1, 4], "accuracy": [0.5, 0.9]}) == a
    f = tmp_path / "s.json"
    f.write_text(json.dumps([{"timesteps": 2, "accuracy": {"lava": 0.7}}]))
    assert load_sweep(f) == [{"timesteps": 2, "accuracy": {"lava": 0.7}}]
    np.save(tmp_path / "s.npy", np.array([[2, 0.7]]))
    assert load_sweep(tmp_path / "s.npy")[0]["timesteps"] == 2
    for bad in ([], [{"timesteps": 0, "accuracy": 0.5}], [{"timesteps": 2, "accuracy": 1.5}],
                np.zeros((3, 3)), {"timesteps": [1], "accuracy": []}):
        with pytest.raises(InputError):
            normalise_sweep(bad)
    f.write_text("[{\"timesteps\": 2, \"accuracy\": NaN}]")
    with pytest.raises(InputError, match="s.json"):
        load_sweep(f)


def run_cli(*args):
    p = subprocess.run([sys.executable, "-m", "spikebridge", "--no-progress", *map(str, args)],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    return p.returncode, p.stdout, p.stderr


def one_line(err):
    lines = [l for l in err.splitlines() if l.strip()]
    return len(lines) == 1 and lines[0].startswith("error: ")


def test_cli_report_on_any_graph(tmp_path):
    """GRAPH.nir --input X.npy: eventsim runs, the report lands in --out with a user model."""
    g = tmp_path / "g.nir"
    nir.write(str(g), graph())
    x = np.zeros((2, 3, 3), dtype=np.float32)
    x[0] = [[1, 0, 1], [0, 1, 0], [2, 2, 2]]
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "m.toml").write_text(TOML)
    out = tmp_path / "rep"
    code, stdout, err = run_cli("report", g, "--input", tmp_path / "x.npy", "--energy-model",
                                tmp_path / "m.toml", "--first-layer", "once", "--out", out)
    assert code == 0, err
    data = strict_load(out / "report.json")
    assert data["energy"]["mychip"]["source"] == "synaptic_op = 10 pJ [Doe 2030, Table 1]"
    for m in data["energy"].values():
        assert isinstance(m["total_pj_per_sample"], float) and m["source"]
    assert data["latency"]["loihi"]["seconds_per_sample"] > 0
    assert data["first_layer"] == "once" and data["samples"] == 3 and data["accuracy"] == {}
    for f in ("report.html", "firing_rates.png", "synaptic_ops.svg", "energy_chip.svg", "layers.csv"):
        assert (out / f).is_file(), f
    # rejected inputs: one line, exit 3 (input) or 2 (usage), nothing written
    (tmp_path / "bad.toml").write_text(TOML.replace('source = "Doe 2030, Table 1"\n', ""))
    bad = tmp_path / "bad"
    for args, want in ((["--energy-model", tmp_path / "bad.toml"], 3), (["--weight-bits", "12"], 3),
                       (["--max-chips", "0"], 3), (["--sweep-timesteps", "1,2"], 3)):
        code, _, err = run_cli("report", g, "--input", tmp_path / "x.npy", *args, "--out", bad)
        assert code == want and one_line(err), (args, err)
    code, _, err = run_cli("report", g, "--out", bad)
    assert code == 2 and one_line(err), err
    code, _, err = run_cli("report", "--compare", out, tmp_path / "nope", "--out", bad)
    assert code == 3 and one_line(err), err
    assert not bad.exists() or not any(bad.iterdir())


def test_measured_baseline_from_a_hostile_run_json_is_dropped_not_fatal():
    for bad in ("fast", [1, 2], {"latency_seconds_per_sample": "1e-3"},
                {"latency_seconds_per_sample": float("nan")}, {"provider": 3}):
        assert build_report(graph(), trace(), measured=bad)["measured"] == {}
    got = build_report(graph(), trace(), measured={"latency_seconds_per_sample": 1e-3, "x": "<b>"})
    assert got["measured"]["onnx"]["latency_seconds_per_sample"] == 1e-3 and "x" not in got["measured"]["onnx"]


def test_deeply_nested_sweep_json_is_an_input_error(tmp_path):
    f = tmp_path / "deep.json"
    f.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(InputError, match="deep.json"):
        load_sweep(f)
