"""`spikebridge bench train` end to end on a tiny budget: both methods train in their own
worker processes and the JSON carries every documented field (the numbers themselves are
a benchmark's, never asserted here)."""
from __future__ import annotations

import json

from tests.toolchain.test_cli import assert_one_line_error, run


def test_bench_train_json_fields_and_ratios(tmp_path):
    out = tmp_path / "bench.json"
    code, stdout, err = run("bench", "train", "--dataset", "digits", "--arch", "mlp", "--epochs", "1",
                            "--limit", "96", "--limit-test", "40", "--batch-size", "32", "--pairs", "2:2,2:3",
                            "--parallel", "2", "--out", out)
    assert code == 0, err
    res = json.loads(stdout)
    assert res == json.loads(out.read_text())
    runs = {(r["method"], r["timesteps"]): r for r in res["runs"]}
    assert set(runs) == {("snn2ann", 2), ("bptt", 2), ("bptt", 3)}
    for r in runs.values():
        assert r["train_samples"] == 96 and r["test_samples"] == 40 and r["iterations"] == 3
        assert r["seconds_per_epoch"] > 0 and r["cpu_seconds_per_epoch"] > 0
        assert len(r["epoch_seconds"]) == len(r["epoch_cpu_seconds"]) == 1 and len(r["load_average"]) == 2
        assert 0.0 <= r["snn_test_accuracy"] <= 1.0 and r["memory_kind"] == "rss"
        assert r["spikes_per_sample"] >= 0
    c = {(x["snn2ann_T"], x["bptt_T"]): x for x in res["comparisons"]}
    assert set(c) == {(2, 2), (2, 3)}
    s, b = runs[("snn2ann", 2)], runs[("bptt", 3)]
    assert c[(2, 3)]["cpu_time_ratio"] == s["cpu_seconds_per_epoch"] / b["cpu_seconds_per_epoch"]
    for (ts, tb), x in c.items():  # spikes per sample, SNN2ANN / BPTT (None if BPTT never fired)
        bs = runs[("bptt", tb)]["spikes_per_sample"]
        assert list(x)[:5] == ["snn2ann_T", "bptt_T", "time_ratio", "cpu_time_ratio", "memory_ratio"]
        assert x["spike_ratio"] == (runs[("snn2ann", ts)]["spikes_per_sample"] / bs if bs > 0 else None)
    assert c[(2, 3)]["accuracy_difference"] == s["snn_test_accuracy"] - b["snn_test_accuracy"]
    assert res["notes"] and "BatchNorm" in res["notes"][0]  # 3 iterations: flagged


def test_bench_train_compare_rows_spike_ratio():
    from spikebridge.benchmarks.bench_train import compare

    rs = {"seconds_per_epoch": 1.0, "cpu_seconds_per_epoch": 2.0, "peak_memory_mib": 10.0,
          "spikes_per_sample": 300.0, "snn_test_accuracy": 0.9}
    rb = {"seconds_per_epoch": 4.0, "cpu_seconds_per_epoch": 4.0, "peak_memory_mib": 40.0,
          "spikes_per_sample": 1200.0, "snn_test_accuracy": 0.95}
    row = compare(5, 8, rs, rb)
    assert row["spike_ratio"] == 0.25 and row["time_ratio"] == 0.25 and row["memory_ratio"] == 0.25
    assert row["cpu_time_ratio"] == 0.5 and row["accuracy_difference"] == 0.9 - 0.95
    assert compare(5, 8, rs, {**rb, "spikes_per_sample": 0.0})["spike_ratio"] is None


def test_bench_train_bad_pairs_is_one_line_error(tmp_path):
    code, _, err = run("bench", "train", "--pairs", "4-4", "--out", tmp_path / "x.json")
    assert_one_line_error(code, err)
    assert "--pairs" in err and not (tmp_path / "x.json").exists()
