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
    c = {(x["snn2ann_T"], x["bptt_T"]): x for x in res["comparisons"]}
    assert set(c) == {(2, 2), (2, 3)}
    s, b = runs[("snn2ann", 2)], runs[("bptt", 3)]
    assert c[(2, 3)]["cpu_time_ratio"] == s["cpu_seconds_per_epoch"] / b["cpu_seconds_per_epoch"]
    assert c[(2, 3)]["accuracy_difference"] == s["snn_test_accuracy"] - b["snn_test_accuracy"]
    assert res["notes"] and "BatchNorm" in res["notes"][0]  # 3 iterations: flagged


def test_bench_train_bad_pairs_is_one_line_error(tmp_path):
    code, _, err = run("bench", "train", "--pairs", "4-4", "--out", tmp_path / "x.json")
    assert_one_line_error(code, err)
    assert "--pairs" in err and not (tmp_path / "x.json").exists()
