"""Issue 17: the summary card (first on the page, in report.json and on stdout), figures as SVG
(parsed as XML) and 200-dpi PNG, one row per layer, SI units per column, CSV tables equal to
report.json, each cited work once, labels that cannot mislead, the section hook, and
`spikebridge report CHECKPOINT_DIR` end to end (the CI stand-in for looking at the page)."""
from __future__ import annotations

import csv
import json
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from spikebridge.toolchain import report as R
from tests.toolchain.test_report import EVIL, graph, strict_load, trace
from tests.toolchain.test_report_features import check_page

REPO = Path(__file__).resolve().parents[2]
MEASURED = {"accuracy": 0.7, "latency_seconds_per_sample": 2.5e-5, "throughput_samples_per_second": 4e4}


def _report(tmp_path, **kw):
    kw.setdefault("accuracy", {"torch": 0.9, "eventsim": 0.875, "onnx_ann": 0.7})
    kw.setdefault("model_info", {"method": "snn2ann", "arch": "mlp", "dataset": "digits"})
    return R.make_report(tmp_path, graph(), trace(), measured=MEASURED, **kw)


class Body(HTMLParser):
    """The order of the body's top-level elements: (tag, id, class)."""

    def __init__(self):
        super().__init__()
        self.depth, self.top, self.in_body = 0, [], False

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.in_body, self.depth = True, 0
            return
        if self.in_body:
            if self.depth == 0:
                a = dict(attrs)
                self.top.append((tag, a.get("id"), a.get("class")))
            if tag not in ("meta", "img", "br"):
                self.depth += 1

    def handle_endtag(self, tag):
        if self.in_body and tag != "body" and tag not in ("meta", "img", "br"):
            self.depth -= 1


def test_summary_card_is_the_first_content_element(tmp_path):
    _report(tmp_path)
    text = (tmp_path / "report.html").read_text()
    b = Body()
    b.feed(text)
    assert b.top[0][0] == "h1" and b.top[1] == ("section", "summary", "card"), b.top[:3]
    check_page(text, R.SECTIONS)  # every section present and non-empty, only our markup
    card = text[text.index('<section id="summary"'):text.index("</section>")]
    for want in ("torch (the SNN in PyTorch)", "90.00%", "loihi", "µJ", "µs", "synaptic ops per inference",
                 "spikes per inference", "SNN / ANN energy", "horowitz-45nm",
                 "shared-weight ANN branch (not trained as an ANN)", "method snn2ann", "arch mlp", "T = 2"):
        assert want in card, want


def test_summary_numbers_come_from_the_report(tmp_path):
    rep = _report(tmp_path)
    s = strict_load(tmp_path / "report.json")["summary"]
    assert list(strict_load(tmp_path / "report.json"))[:2] == ["schema_version", "summary"]
    chips = s["energy"]["chip_models"]
    assert set(chips) == {n for n, r in rep["energy"].items() if r["kind"] == "chip-style"}
    assert "horowitz-45nm" not in chips and "cpu" not in chips  # chip models only
    for n, c in chips.items():
        assert c["uj_per_inference"] == pytest.approx(rep["energy"][n]["total_pj_per_sample"] * 1e-6)
    vals = [c["uj_per_inference"] for c in chips.values()]
    assert s["energy"]["spread_uj"]["min"] == min(vals) and s["energy"]["spread_uj"]["max"] == max(vals)
    assert s["latency"]["seconds_per_inference"] == rep["latency"]["loihi"]["seconds_per_sample"]
    assert "modelled" in s["latency"]["label"] and "measured" in s["measured_latency"]["label"]
    assert s["snn_over_ann_energy_ratio"]["value"] == rep["energy"]["horowitz-45nm"]["snn_over_ann_ratio"]
    assert s["snn_over_ann_energy_ratio"]["model"] == "horowitz-45nm"
    assert s["synaptic_ops_per_inference"] == 4.0 and s["spikes_per_inference"] == 2.5
    acc = {a["backend"]: a for a in s["accuracy"]}
    assert acc["onnx_ann"]["label"].startswith("shared-weight ANN branch (not trained as an ANN)")
    lines = R.summary_lines(s)
    assert lines[0].startswith("summary: snn2ann mlp, T = 2, digits")
    energy_lines = [l for l in lines if l.strip().startswith("energy") and "µJ/inference" in l]
    assert len(energy_lines) == len(chips) and all("modelled" in l for l in energy_lines)
    assert any("SNN/ANN" in l and "horowitz-45nm" in l for l in lines)


def test_onnx_label_depends_on_the_method():
    assert R.backend_label("onnx_ann", "snn2ann").startswith("shared-weight ANN branch (not trained as an ANN)")
    assert "trained as an ANN" in R.backend_label("onnx_ann", "ann") and "not" not in R.backend_label("onnx_ann", "ann")
    assert "unrolled" in R.backend_label("onnx_ann", "bridge")
    assert R.backend_label("onnx_ann", None) != R.backend_label("onnx_ann", "snn2ann")
    assert R.backend_label("torch") == "torch (the SNN in PyTorch)"


def test_si_units():
    assert R.energy_unit([5.0, 900.0]) == ("pJ", 1.0)
    assert R.energy_unit([1.5e5, 2e6, 3e3]) == ("nJ", 1e3)  # median 1.5e5 pJ
    assert R.fmt_energy(1.596e5) == "159.6 nJ" and R.fmt_energy(3.063e6) == "3.063 µJ"
    assert R.fmt_energy(999.96) == "1.000 nJ"
    assert R.fmt_time(3.752e-4) == "375.2 µs" and R.fmt_time(2.5e-3) == "2.500 ms" and R.fmt_time(4e-8) == "40.00 ns"
    assert R.fmt_energy(None) == "n/a"


def test_one_row_per_layer_and_totals_kept(tmp_path):
    rep = _report(tmp_path)
    rows = rep["layers"]
    assert [r["layer"] for r in rows] == ["if1", "if2"]
    assert rows[0]["synapse_nodes"] == ["fc1"] and rows[1]["synapse_nodes"] == ["fc2"]
    assert rows[0]["macs_per_sample"] == 9.0 and rows[0]["spikes_per_sample"] == 2.0
    assert rows[1]["synaptic_ops_per_sample"] == 4.0 and rows[1]["neurons"] == 2
    for key in ("synaptic_ops_per_sample", "macs_per_sample", "spikes_per_sample"):
        assert sum(r[key] for r in rows) == pytest.approx(rep[key])
    assert sum(r["ann_macs_per_sample"] for r in rows) == rep["ann_macs_per_sample"]
    text = (tmp_path / "report.html").read_text()
    layers = text[text.index('<section id="layers">'):text.index('<section id="energy">')]
    assert layers.count("<tr>") == 1 + len(rows) and "n/a" not in layers


def test_figures_svg_and_200dpi_png(tmp_path):
    _report(tmp_path)
    svgs = sorted(tmp_path.glob("*.svg"))
    assert {p.stem for p in svgs} >= {"firing_rates", "synaptic_ops", "energy_chip", "energy_gpu_ann", "spike_raster"}
    for p in svgs:
        root = ET.parse(p).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg", p
        png = p.with_suffix(".png").read_bytes()
        i = png.index(b"pHYs")
        x, y, unit = struct.unpack(">IIB", png[i + 4:i + 13])
        assert unit == 1 and round(x * 0.0254) == 200 == round(y * 0.0254), p
    # the chip figure: the chip-style models only, on linear axes
    chip = (tmp_path / "energy_chip.svg").read_text()
    assert "loihi" in chip and "truenorth" in chip and "horowitz" not in chip and "(linear)" in chip
    gpu = (tmp_path / "energy_gpu_ann.svg").read_text()
    assert "horowitz-45nm: SNN" in gpu and "cpu: the ANN on the device" in gpu and "loihi" not in gpu


def test_csv_tables_equal_the_json(tmp_path):
    rep = _report(tmp_path)
    text = (tmp_path / "report.html").read_text()

    def rows(name):
        with open(tmp_path / f"{name}.csv", newline="") as f:
            return list(csv.DictReader(f))

    for name in ("accuracy", "layers", "energy", "energy_by_operation", "energy_by_layer", "latency",
                 "mapping_loihi", "constants"):
        assert f'data-csv="{name}.csv"' in text, name  # every table on the page has its CSV
    acc = {r["backend"]: r for r in rows("accuracy")}
    assert {k: float(v["accuracy"]) for k, v in acc.items()} == rep["accuracy"]
    assert acc["onnx_ann"]["label"] == rep["accuracy_labels"]["onnx_ann"]
    for r, j in zip(rows("layers"), rep["layers"], strict=True):
        assert r["layer"] == j["layer"] and int(r["neurons"]) == j["neurons"]
        for key in ("synaptic_ops_per_sample", "macs_per_sample", "spikes_per_sample", "firing_rate"):
            assert float(r[key]) == j[key], key
    en = {r["model"]: r for r in rows("energy")}
    assert set(en) == set(rep["energy"])
    for n, r in en.items():
        assert float(r["total_pj_per_sample"]) == rep["energy"][n]["total_pj_per_sample"]
    for r in rows("energy_by_operation"):
        assert float(r["pj_per_sample"]) == rep["energy"][r["model"]]["per_operation_pj_per_sample"][
            r["operation"] + "_pj_per_sample"]
    for r in rows("energy_by_layer"):
        assert float(r["pj_per_sample"]) == rep["energy"][r["model"]]["per_node_pj_per_sample"][r["node"]]
    lat = rows("latency")
    assert float(lat[0]["seconds_per_sample"]) == rep["latency"]["loihi"]["seconds_per_sample"]
    assert lat[1]["kind"] == "measured" and float(lat[1]["seconds_per_sample"]) == 2.5e-5


def test_each_cited_work_once_and_collapsible(tmp_path):
    rep = _report(tmp_path)
    cites, rows = R.citations(rep)
    assert len(cites) == len(set(cites)) and len(cites) < len(rows)
    assert sum("keras-spiking" in c and "Degnan" in c for c in cites) == 1  # cpu, gpu, arm: one work
    assert sum(c.startswith("Davies et al.") for c in cites) == 1  # energy and latency constants: one work
    text = (tmp_path / "report.html").read_text()
    method = text[text.index('<section id="method">'):]
    assert method.count("<details>") == 3  # rules, constants, provenance
    assert method.count("Degnan, Marr and Hasler") == 1
    assert R.split_source("Davies et al., 'Loihi: a processor', IEEE Micro 38(1) 2018, Table 2: spike") == (
        "Davies et al., 'Loihi: a processor', IEEE Micro 38(1) 2018", "Table 2: spike")
    assert R.split_source("assumption: 8 bits") == ("assumption: 8 bits", "")
    assert R.split_source("Hoeppner et al., 'Power', TCAS-I 66(8):2973-2986, 2019 (arXiv:1903.08941); SpiNNaker: x") == (
        "Hoeppner et al., 'Power', TCAS-I 66(8):2973-2986, 2019 (arXiv:1903.08941)", "SpiNNaker: x")


def test_section_hook_renders_after_the_summary(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "EXTRA_SECTIONS", {})
    R.register_section("custom", "A registered section",
                       lambda rep: None if "custom" not in rep else f"<p>{R._e(rep['custom'])}</p>")
    rep = R.build_report(graph(), trace())
    assert 'id="custom"' not in R.render_html(rep, {})  # no key: no section
    rep["custom"] = EVIL
    text = R.render_html(rep, {})
    assert text.index('id="summary"') < text.index('id="custom"') < text.index('id="accuracy"')
    assert EVIL not in text and '<a href="#custom">' in text


# ------------------------------------------------------------------ report CHECKPOINT_DIR


def run_cli(*args, timeout=900):
    p = subprocess.run([sys.executable, "-m", "spikebridge", "--no-progress", *map(str, args)],
                       capture_output=True, text=True, cwd=REPO, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def _checkpoint(tmp_path):
    import shutil

    from tests._trained import trained_checkpoint
    ck = tmp_path / "ckpt"
    shutil.copytree(trained_checkpoint("mlp"), ck)
    return ck


def _check_checkpoint_report(out, ck, want_backends):
    data = strict_load(out / "report.json")
    assert set(data["accuracy"]) == want_backends, data["accuracy"]
    assert data["samples"] == 24 and data["model"]["method"] == "snn2ann" and data["model"]["arch"] == "mlp"
    assert data["accuracy_labels"]["onnx_ann"].startswith("shared-weight ANN branch (not trained as an ANN)")
    assert data["extra"]["checkpoint"] == str(ck)
    assert data["summary"]["energy"]["chip_models"]["loihi"]["uj_per_inference"] > 0
    # the NeuroBench metrics were computed with the run's input (neurobench.json), not from counts alone
    assert data["neurobench"]["membrane_updates"] is not None and data["neurobench"]["membrane_updates"] > 0
    assert (out / "neurobench.json").is_file()
    for f in ("graph.nir", "model.onnx", "run.json", "eventsim.npz", "report.html", "layers.csv", "energy_chip.svg"):
        assert (out / f).is_file(), f
    b = Body()
    b.feed((out / "report.html").read_text())
    assert b.top[1] == ("section", "summary", "card")
    return data


@pytest.mark.slow
def test_report_checkpoint_dir_without_lava(tmp_path):
    """`report CHECKPOINT_DIR --limit 24 --skip-lava`: torch, eventsim, the ANN branch; the page
    says Lava was not selected; `report` of the written run directory rebuilds the same report."""
    ck = _checkpoint(tmp_path)
    code, out, err = run_cli("report", ck, "--limit", "24", "--skip-lava")
    assert code == 0, err
    data = _check_checkpoint_report(ck / "report", ck, {"torch", "eventsim", "onnx_ann"})
    assert abs(data["accuracy"]["torch"] - data["accuracy"]["eventsim"]) <= 2 / 24
    assert data["not_run"] == {"lava": "not selected", "lava_fixed": "not selected"}
    html = (ck / "report" / "report.html").read_text()
    assert html.count("not selected") >= 2  # the page says why Lava has no accuracy
    assert out.splitlines()[0].startswith("summary: snn2ann mlp, T = 4, digits (24 samples)")
    assert "shared-weight ANN branch (not trained as an ANN)" in out and "µJ/inference (modelled, loihi" in out
    code, out2, err = run_cli("report", ck / "report")  # the run directory it wrote
    assert code == 0, err
    assert strict_load(ck / "report" / "report.json")["accuracy"] == data["accuracy"]
    # refusals: one line each, nothing run
    for args, want in ((["--backend", "lava"], 2), (["--backends", "bogus"], 3), (["--input", "x.npy"], 2)):
        code, _, err = run_cli("report", ck, *args, "--out", tmp_path / "bad")
        assert code == want and len(err.strip().splitlines()) == 1 and err.startswith("error: "), (args, err)
    assert not (tmp_path / "bad" / "report.json").exists()


@pytest.mark.slow
@pytest.mark.lava
def test_report_checkpoint_dir_every_backend(tmp_path):
    ck = _checkpoint(tmp_path)
    code, out, err = run_cli("report", ck, "--limit", "24", "--out", tmp_path / "rep")
    assert code == 0, err
    data = _check_checkpoint_report(tmp_path / "rep", ck, {"torch", "eventsim", "lava", "lava_fixed", "onnx_ann"})
    assert data["not_run"] == {}
    assert abs(data["accuracy"]["lava"] - data["accuracy"]["eventsim"]) <= 1 / 24
    assert "Lava fixed point" in out
