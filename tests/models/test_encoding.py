"""Spike encodings (spikebridge/base/encoding.py) and their use in training (models/config.py
encode_batch, BPTTNet, the method check of models/train.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spikebridge.base.encoding import (DELTA_THRESHOLD, delta, delta_sequence, encode, latency, latency_steps,
                                       rate)
from spikebridge.base.errors import InputError
from spikebridge.models.config import encode_batch


def test_rate_mean_equals_intensity_within_hoeffding_bound():
    """Each element's T*N draws are Bernoulli(p): Hoeffding's inequality for the mean of n
    i.i.d. [0, 1] variables, P(|mean - p| >= eps) <= 2 exp(-2 n eps^2), with the failure
    probability set to 1e-9 gives eps = sqrt(ln(2e9) / (2n)). (The seed makes the draw fixed;
    the bound is what any seed passes with probability 1 - 1e-9 per intensity.)"""
    p = np.array([0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    T, N = 50, 2000
    x = np.broadcast_to(p, (N, p.size))
    s = rate(x, T, np.random.default_rng(123))
    assert s.dtype == np.bool_ and s.shape == (T, N, p.size)
    n = T * N
    eps = math.sqrt(math.log(2 / 1e-9) / (2 * n))
    means = s.mean(axis=(0, 1))
    assert np.all(np.abs(means - p) <= eps), (means, eps)
    assert means[0] == 0.0 and means[-1] == 1.0  # p = 0 never fires, p = 1 always
    # clipped to [0, 1]: below 0 never fires, above 1 always
    s = rate(np.array([[-0.5, 1.5]]), 10, np.random.default_rng(0))
    assert not s[..., 0].any() and s[..., 1].all()


def test_rate_is_seeded():
    x = np.random.default_rng(0).random((5, 3))
    a, b = encode(x, "rate", 6, seed=7), encode(x, "rate", 6, seed=7)
    assert np.array_equal(a, b) and not np.array_equal(a, encode(x, "rate", 6, seed=8))


@pytest.mark.parametrize("T", [1, 2, 5, 16])
def test_latency_first_spike_monotone_in_intensity(T):
    x = np.linspace(0.0, 1.0, 257)[None]  # one sample, increasing intensity
    s = latency(x, T)
    assert s.shape == (T, 1, 257) and s.dtype == np.bool_
    counts = s.sum(axis=0)[0]
    assert counts[0] == 0 and np.all(counts[1:] == 1)  # zero never fires; others exactly once
    first = np.argmax(s[:, 0, 1:], axis=0)  # first spike step of each positive intensity
    assert np.all(np.diff(first) <= 0)  # brighter -> no later
    assert first[-1] == 0 and (T == 1 or first[0] == T - 1)  # x = 1 at step 0; faintest at the end
    # the documented formula: t = floor((1 - x) (T - 1) + 1/2)
    assert np.array_equal(first, np.floor((1 - x[0, 1:]) * (T - 1) + 0.5).astype(int))
    assert np.array_equal(latency_steps(np.array([-1.0, 0.0, 2.0]), T), [-1, -1, 0])


def test_delta_on_a_constructed_sequence():
    seq = np.array([0.0, 0.5, 0.5625, 0.25, 1.0, 1.0])[:, None]  # (T, 1): exact binary fractions
    on = delta_sequence(seq, threshold=0.125)
    assert on[:, 0].tolist() == [False, True, False, False, True, False]
    both = delta_sequence(seq, threshold=0.125, off_spike=True)
    assert both[:, 0].tolist() == [0, 1, 0, -1, 1, 0]
    assert delta_sequence(np.array([[0.0], [0.125]]), 0.125)[1, 0]  # a rise of exactly the threshold fires
    # first step compared with zero (snnTorch's padding=False)
    assert delta_sequence(np.array([[0.3], [0.3]]), 0.125)[:, 0].tolist() == [True, False]


def test_delta_of_a_static_image_is_its_onset():
    x = np.array([[0.0, 0.05, DELTA_THRESHOLD, 0.7]])
    s = delta(x, 4)
    assert s[0, 0].tolist() == [False, False, True, True]
    assert not s[1:].any()


def test_direct_is_the_repeated_sample():
    x = np.random.default_rng(0).random((3, 2)).astype(np.float32)
    d = encode(x, "direct", 5)
    assert d.dtype == np.float32 and np.array_equal(d, np.stack([x] * 5))


def test_unknown_encoding_is_input_error():
    with pytest.raises(InputError, match="unknown encoding"):
        encode(np.zeros((1, 2)), "poisson", 3)


def test_training_batch_encoding_equals_numpy():
    """The training hook encodes with the same numpy definitions (rate: the same draws)."""
    x = torch.rand(6, 1, 4, 4)
    for enc in ("rate", "latency", "delta", "direct"):
        got = encode_batch(x, enc, 5, np.random.default_rng(3), sample_ndim=3)
        want = encode(x.numpy(), enc, 5, rng=np.random.default_rng(3))
        assert got.shape == (5, 6, 1, 4, 4) and got.dtype == torch.float32
        assert np.array_equal(got.numpy(), want.astype(np.float32)), enc
    frames = torch.rand(6, 5, 1, 4, 4)  # (B, T, ...) event frames: passed through, made time-major
    got = encode_batch(frames, "rate", 5, np.random.default_rng(3), sample_ndim=3)
    assert torch.equal(got, frames.transpose(0, 1))


def test_bptt_net_trains_on_the_encoded_sequence():
    """BPTTNet(encoding=rate) on static x == the same weights fed the rate frames (B, T, ...)."""
    from spikebridge.models.architectures import build_spec
    from spikebridge.models.bptt import BPTTNet

    spec = build_spec("mlp", (1, 8, 8), 10)
    torch.manual_seed(0)
    enc = BPTTNet(spec, (1, 8, 8), 4, encoding="rate", seed=11, v_threshold=0.05)  # low: it spikes
    plain = BPTTNet(spec, (1, 8, 8), 4, v_threshold=0.05)
    plain.load_state_dict(enc.state_dict())
    x = torch.rand(3, 1, 8, 8)
    frames = torch.from_numpy(encode(x.numpy(), "rate", 4, seed=11).astype(np.float32)).transpose(0, 1)
    with torch.no_grad():
        a, _ = enc.eval()(x)
        b, _ = plain.eval()(frames)
        c, _ = plain(x)  # direct: differs from the rate-encoded run
    _, counts = plain(frames)
    assert sum(float(k.sum()) for k in counts) > 0  # the comparison sees spikes
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_methods_that_cannot_encode_are_refused_in_one_line(tmp_path):
    from spikebridge.models.train import TrainConfig, train

    for method in ("snn2ann", "qcfs", "parallel", "bridge", "lasnn", "ann"):
        with pytest.raises(InputError) as e:
            train(TrainConfig(method=method, arch="mlp", encoding="rate", epochs=1), tmp_path / method,
                  progress=False)
        msg = str(e.value)
        assert "\n" not in msg and f"method {method}" in msg and "bptt" in msg
        assert not (tmp_path / method / "model.json").exists()


def test_rate_draws_for_the_global_batch_then_slices():
    x = torch.rand(8, 4)
    whole = encode_batch(x, "rate", 3, np.random.default_rng(5), sample_ndim=1)
    part = encode_batch(x[2:5], "rate", 3, np.random.default_rng(5), sample_ndim=1, rows=(2, 8))
    assert torch.equal(part, whole[:, 2:5])


@pytest.mark.slow
def test_rate_training_two_processes_match_one_process(tmp_path):
    """bptt --encoding rate in 2 gloo processes == one process (draws for the global batch)."""
    import subprocess
    import sys

    from tests.models.test_distributed import COMMON, REPO, _assert_same, _free_port, _one_process, _torchrun_env

    _one_process("bptt", tmp_path / "one", encoding="rate")
    port = _free_port()
    script = ("from spikebridge.models.train import TrainConfig, train\n"
              f"cfg = TrainConfig(method='bptt', encoding='rate', **{COMMON!r})\n"
              f"cfg.extra['limit_test'] = {COMMON['limit_test']}\n"
              f"train(cfg, {str(tmp_path / 'two')!r}, progress=False)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=_torchrun_env(r, 2, port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-3000:] for o in outs]
    _assert_same(tmp_path / "one", tmp_path / "two")
