"""One run function and one set of run flags for every command (hardware/backends.py).

- `report GRAPH --profile LIB --input X` works on every peer graph (it crashed on 6 of 15 when
  report did not apply the profile's graph adaptation that simulate did), and gives the
  library's own output;
- a flag the chosen backend does not honour is refused in one line with exit code 3, in
  simulate, report and inspect alike, and never leaves an output file;
- the old CLI spellings resolve to the registered backends;
- run_graph from Python: batching, limit, sharding and Prepared give the same Trace.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spikebridge.base.errors import InputError
from spikebridge.hardware.backends import (BACKENDS, OptionError, RunOptions, prepare, resolve_backend,
                                           run_graph)
from spikebridge.toolchain.cli import main

PEERS = Path(__file__).resolve().parents[1] / "data" / "peers"
CASES = sorted(f"{p.parent.name}/{p.name}" for p in PEERS.glob("*/*") if (p / "graph.nir").is_file())


def test_the_peer_corpus_has_defaults_and_non_default_settings():
    assert len(CASES) >= 33  # 15 library-default cases + 18 with settings the files do not record


@pytest.mark.parametrize("case", CASES)
def test_report_runs_every_peer_graph_with_its_profile(case, tmp_path, capsys):
    from tests.conformance.cases import membrane_tolerance, peer_meta, peer_profile
    d = PEERS / case
    lib = peer_profile(case)  # the library's name, with options where the file cannot say them
    out = tmp_path / "r"
    assert main(["--no-progress", "report", str(d / "graph.nir"), "--profile", lib, "--input",
                 str(d / "input.npy"), "--out", str(out)]) == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert rep["inputs"]["profile"] == lib
    # the report's counts come from the same run simulate does: the library's output reproduced
    sim = tmp_path / "s.npz"
    assert main(["--no-progress", "simulate", str(d / "graph.nir"), "--profile", lib, "--input",
                 str(d / "input.npy"), "--out", str(sim)]) == 0
    y = np.load(d / "expected.npy")
    with np.load(sim) as z:
        if peer_meta(case).get("output") == "membrane":
            from spikebridge.hardware.graph import load_graph
            bound = membrane_tolerance(load_graph(d / "graph.nir"), y)
            assert np.max(np.abs(z["output"].reshape(y.shape) - y)) <= bound
        else:
            np.testing.assert_array_equal(z["output"].reshape(y.shape), y)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for k in ("synaptic_ops_per_sample", "macs_per_sample", "spikes_per_sample", "samples", "timesteps"):
        assert rep[k] == summary[k], k
    assert rep["spikes_per_sample"] > 0 or peer_meta(case).get("output") == "membrane"


REFUSED = [  # (flags, words the one-line error must contain)
    (["--precision", "fixed"], ["--precision fixed", "eventsim", "loihi-fixed"]),
    (["--threshold-groups"], ["--threshold-groups", "eventsim"]),
    (["--allow-reset-to-zero"], ["--allow-reset-to-zero", "eventsim"]),
    (["--backend", "lava", "--workers", "2"], ["--workers", "lava-float"]),
    (["--backend", "lava", "--batch-size", "8"], ["--batch-size", "lava-float"]),
    (["--backend", "lava", "--profile", "snntorch"], ["subtract reset (profile snntorch)", "--allow-reset-to-zero"]),
    (["--backend", "lava", "--profile", "loihi-fixed"], ["--profile loihi-fixed", "lava-float"]),
    (["--backend", "lava-float", "--precision", "fixed"], ["--precision fixed", "lava-float"]),
    (["--backend", "loihi-fixed", "--profile", "snntorch:reset_delay=false"],
     ["subtract reset (profile snntorch:reset_delay=false)", "--allow-reset-to-zero"]),
    (["--profile", "brian"], ["unknown profile"]),
    (["--workers", "0"], ["--workers"]),
    (["--backend", "lava", "--precision", "float32"], ["--precision float32", "lava-float"]),
    (["--profile", "snntorch", "--precision", "float32"], ["float32"]),
]


@pytest.mark.parametrize("flags,words", REFUSED, ids=[" ".join(f) for f, _ in REFUSED])
@pytest.mark.parametrize("command", ["simulate", "report"])
def test_a_flag_the_backend_does_not_honour_is_refused(command, flags, words, tmp_path, capsys):
    d = PEERS / "snntorch" / "dense_leaky"
    out = tmp_path / ("o.npz" if command == "simulate" else "rep")
    code = main(["--no-progress", command, str(d / "graph.nir"), "--input", str(d / "input.npy"),
                 "--out", str(out), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and err[0].startswith("error: "), err
    for w in words:
        assert w in err[0], (w, err[0])
    assert not out.exists()


def test_inspect_takes_the_same_graph_flags_and_checks_every_backend(capsys):
    d = PEERS / "norse" / "dense_lif_cuba"
    assert main(["inspect", str(d / "graph.nir"), "--profile", "norse"]) == 0
    text = capsys.readouterr().out
    for b in BACKENDS:
        assert f"\n{b}: " in text, b
    assert "eventsim: runs this graph" in text and "lava-float: runs this graph" in text
    assert main(["inspect", str(d / "graph.nir"), "--profile", "norse", "--backend", "eventsim",
                 "--dt", "2e-6"]) == 0
    text = capsys.readouterr().out
    assert "eventsim: runs this graph" in text and "lava-float" not in text
    assert main(["inspect", str(d / "graph.nir"), "--backend", "eventsim", "--precision", "fixed"]) == 0
    assert "eventsim: cannot run it: --precision fixed" in capsys.readouterr().out


def test_cli_spellings_resolve_to_registered_backends():
    assert resolve_backend("lava")[0].name == "lava-float"
    assert resolve_backend("lava", RunOptions(precision="fixed"))[0].name == "lava-fixed"
    be, o = resolve_backend("eventsim", RunOptions(profile="loihi-fixed"))
    assert be.name == "loihi-fixed" and o.profile is None and not o.threshold_groups
    be, o = resolve_backend("eventsim", RunOptions(profile="loihi-fixed-groups"))
    assert be.name == "loihi-fixed" and o.threshold_groups
    with pytest.raises(OptionError):
        resolve_backend("brian")


def _dense_graph():
    from tests.conformance.cases import dense_lif
    g, x, _ = dense_lif()
    rng = np.random.default_rng(3)
    return g, rng.random((6, 40, 16)) < 0.3


def test_run_graph_batches_limits_and_shards_identically():
    g, x = _dense_graph()
    ref = run_graph(g, x, "eventsim")
    for opts in (RunOptions(batch_size=7), RunOptions(batch_size=7, workers=2)):
        tr = run_graph(g, x, "eventsim", opts)
        np.testing.assert_array_equal(tr.outputs["output"], ref.outputs["output"])
        for n, c in ref.counts.items():
            for k, v in c.items():
                np.testing.assert_array_equal(tr.counts[n][k], v)
    assert run_graph(g, x, "eventsim", RunOptions(batch_size=7, workers=2)).meta["shards"] == 2
    tr = run_graph(g, x, "eventsim", RunOptions(limit=5))
    assert tr.batch == 5
    np.testing.assert_array_equal(tr.outputs["output"], ref.outputs["output"][:, :5])
    prep = prepare(g, "loihi-fixed")
    a = run_graph(prep, x)
    b = run_graph(g, x, "loihi-fixed", RunOptions(batch_size=9, workers=2))
    np.testing.assert_array_equal(a.outputs["output"], b.outputs["output"])
    assert a.backend == "eventsim" and a.profile == "loihi-fixed"  # trace labels as before


def test_dt_reaches_the_loihi_plan():
    g, x = _dense_graph()
    a = run_graph(g, x, "loihi-fixed")
    b = run_graph(g, x, "loihi-fixed", RunOptions(dt=0.5))
    assert not np.array_equal(a.outputs["output"], b.outputs["output"])
    e = run_graph(g, x, "eventsim", RunOptions(dt=0.5))
    assert e.meta["dt"] == 0.5
    with pytest.raises(InputError):
        run_graph(g, x, "loihi-fixed", RunOptions(dt=-1.0))


def test_max_memory_is_checked_for_every_backend():
    g, x = _dense_graph()
    for b in BACKENDS:
        with pytest.raises(InputError, match="memory"):
            run_graph(g, x, b, RunOptions(max_memory=1000))


def test_limit_means_the_first_samples_of_an_input_file_too(tmp_path, capsys):
    d = PEERS / "sinabs" / "dense_iaf_lif"
    x = np.load(d / "input.npy")
    assert x.shape[1] > 2
    assert main(["--no-progress", "simulate", str(d / "graph.nir"), "--profile", "sinabs", "--input",
                 str(d / "input.npy"), "--limit", "2", "--out", str(tmp_path / "o.npz")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["samples"] == 2
    y = np.load(d / "expected.npy")
    with np.load(tmp_path / "o.npz") as z:
        out = z["output"]
    full = run_graph(str(d / "graph.nir"), x, "eventsim", RunOptions(profile="sinabs"))
    np.testing.assert_array_equal(out, full.outputs[next(iter(full.outputs))][:, :2])
    assert full.outputs[next(iter(full.outputs))].size == y.size


def test_eventsim_float32_reaches_the_simulator_from_the_cli(tmp_path, capsys):
    """--precision float32 reaches eventsim's float32 path (spikebridge/nir profiles). Dyadic
    weights and binary inputs make every sum exact in float32 and float64, so the two runs
    must agree exactly; the trace says which arithmetic ran."""
    import nir
    rng = np.random.default_rng(3)
    w = (rng.integers(-32, 33, (16, 12)) / 64).astype(np.float32)
    g = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([12])}),
                            "fc": nir.Linear(weight=w),
                            "lif": nir.IF(r=np.ones(16), v_threshold=np.full(16, 0.75)),
                            "output": nir.Output(output_type={"output": np.array([16])})},
                     edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")])
    gp, xp = tmp_path / "g.nir", tmp_path / "x.npy"
    nir.write(gp, g)
    x = (rng.random((6, 5, 12)) < 0.3).astype(np.float32)
    np.save(xp, x)
    runs = {}
    for prec in ("float", "float32"):
        assert main(["--no-progress", "simulate", str(gp), "--input", str(xp), "--precision", prec,
                     "--out", str(tmp_path / f"{prec}.npz")]) == 0
        runs[prec] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        with np.load(tmp_path / f"{prec}.npz") as z:
            runs[prec]["y"] = z["output"]
    assert runs["float"]["synaptic_ops_per_sample"] == runs["float32"]["synaptic_ops_per_sample"]
    np.testing.assert_array_equal(runs["float"]["y"], runs["float32"]["y"])
    assert runs["float"]["y"].sum() > 0
    from spikebridge.hardware.backends import RunOptions, run_graph
    assert run_graph(g, x, "eventsim", RunOptions(precision="float32")).meta["precision"] == "float32"
    assert run_graph(g, x, "eventsim", RunOptions()).meta["precision"] == "float64"


def test_a_foreign_graph_without_profile_warns_in_one_line_naming_the_library(tmp_path, capsys):
    """No --profile on an snnTorch graph: one `warning:` line naming snntorch and the flag
    to pass (read at --dt 1e-4 its decays are in range, so it runs and exits 0)."""
    d = PEERS / "snntorch" / "dense_leaky"
    assert main(["--no-progress", "simulate", str(d / "graph.nir"), "--input", str(d / "input.npy"),
                 "--dt", "1e-4", "--out", str(tmp_path / "o.npz")]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("warning: ") and "--profile snntorch" in err[0], err


@pytest.mark.parametrize("dt", [float("nan"), float("inf"), 0.0, -1e-3])
def test_loihi_backends_refuse_a_bad_dt_as_an_option_error(dt):
    """--dt reaches the Loihi lowering through loihi_graph: a non-finite or non-positive dt
    is the user's option error (exit 3), refused before any lowering."""
    from spikebridge.hardware.backends import loihi_graph
    g, _ = _dense_graph()
    with pytest.raises(OptionError, match="--dt .* must be finite and > 0"):
        loihi_graph(g, RunOptions(dt=dt))
    assert loihi_graph(g, RunOptions(dt=2.0)).metadata["spikebridge"]["dt"] == 2.0
