"""Spike encodings of static samples: one numpy definition for simulate, report and training.

``encode(x, encoding, timesteps, rng=...)`` turns static samples ``x`` (N, *shape) into a
time-major sequence (T, N, *shape). Intensities are used as given, with no per-sample
normalisation; ``rate`` and ``latency`` clip them to [0, 1] (the datasets of
``spikebridge.models.datasets`` are already scaled to [0, 1]; a user's 0..255 array must be
divided by 255 first, else everything above 1 saturates). The conventions follow snnTorch's
``spikegen`` (rate, latency with ``linear=True, normalize=True, clip=True``, delta with
``padding=False``), rewritten here:

direct
    the analog sample at every step: s[t] = x (a read-only broadcast view, dtype kept).
rate
    Bernoulli per step and element with p = clip(x, 0, 1): s[t] = u[t] < p, u[t] ~ U[0, 1)
    drawn from ``rng`` (numpy Generator; seeded by the caller's ``--seed``). p = 0 never
    fires, p = 1 fires at every step; E[mean_t s[t]] = p. Output bool.
latency
    time to first spike, one spike per element at step
    t(x) = floor((1 - clip(x, 0, 1)) * (T - 1) + 1/2)  (round half up),
    so x = 1 fires at step 0, brighter fires earlier (t is non-increasing in x), and an
    element with x <= 0 never fires (snnTorch's ``clip=True`` for inputs below threshold;
    our threshold is 0). T = 1: every positive element fires at step 0. Output bool.
delta
    a spike where the sequence rises by at least ``DELTA_THRESHOLD`` (0.1, snnTorch's
    default) from one step to the next, the step before the first being zero (snnTorch's
    ``padding=False``): s[t] = (seq[t] - seq[t-1]) >= threshold, seq[-1] = 0, applied to the
    direct sequence of a static sample. A static image changes only at its onset, so this is
    one on-spike frame at step 0 where x >= 0.1 and silence afterwards: the deterministic
    "on" events of the image appearing, as an event camera would see it. (Delta over the rate
    sequence would only re-encode Bernoulli noise, so it is not used.) ``delta_sequence``
    applies the same rule to any time-major sequence (off spikes optional). Output bool.

All four return (T, N, *shape); rate, latency and delta are binary (bool), so their input
layer is costed as synaptic operations (hardware/eventsim/counts.py).
"""
from __future__ import annotations

import numpy as np

from spikebridge.base.errors import InputError

ENCODINGS = ("direct", "rate", "latency", "delta")
DELTA_THRESHOLD = 0.1


class EncodingWarning(UserWarning):
    """An encoding given on the command line differs from the one the graph was trained with."""


def check_encoding(name) -> str:
    """``name`` if it is a known encoding, else InputError naming the known ones."""
    if name not in ENCODINGS:
        raise InputError(f"unknown encoding {name!r}; use one of {', '.join(ENCODINGS)}", place="--encoding")
    return name


def rate(x: np.ndarray, timesteps: int, rng: np.random.Generator) -> np.ndarray:
    """Bernoulli spikes with p = clip(x, 0, 1) at each of ``timesteps`` steps (module doc)."""
    p = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    out = np.empty((int(timesteps), *p.shape), dtype=bool)
    for t in range(int(timesteps)):  # one step's draws at a time: the same stream as one (T, ...) draw
        np.less(rng.random(p.shape), p, out=out[t])
    return out


def latency_steps(x: np.ndarray, timesteps: int) -> np.ndarray:
    """The spike step of each element (int64, same shape as x); -1 where it never fires."""
    xc = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    t = np.floor((1.0 - xc) * (int(timesteps) - 1) + 0.5).astype(np.int64)
    return np.where(xc > 0, t, -1)


def latency(x: np.ndarray, timesteps: int) -> np.ndarray:
    """One spike per element at ``latency_steps`` (module doc); none where x <= 0."""
    t = latency_steps(x, timesteps)
    return np.arange(int(timesteps)).reshape((-1,) + (1,) * t.ndim) == t[None]


def delta_sequence(seq: np.ndarray, threshold: float = DELTA_THRESHOLD, off_spike: bool = False) -> np.ndarray:
    """Spikes where a time-major ``seq`` (T, ...) rises by >= threshold over one step (the
    step before the first is zero). ``off_spike``: also -1 where it falls by >= threshold
    (int8 output); otherwise bool."""
    s = np.asarray(seq, dtype=np.float64)
    prev = np.concatenate([np.zeros_like(s[:1]), s[:-1]])
    d = s - prev
    on = d >= threshold
    if not off_spike:
        return on
    return on.astype(np.int8) - (d <= -threshold).astype(np.int8)


def delta(x: np.ndarray, timesteps: int, threshold: float = DELTA_THRESHOLD) -> np.ndarray:
    """``delta_sequence`` of the direct sequence of static ``x`` (module doc)."""
    x = np.asarray(x)
    return delta_sequence(np.broadcast_to(x[None], (int(timesteps), *x.shape)), threshold)


def encode(x: np.ndarray, encoding: str, timesteps: int, rng: np.random.Generator | None = None,
           seed: int | None = 0) -> np.ndarray:
    """Static samples ``x`` (N, *shape) -> (T, N, *shape) with ``encoding`` (module doc).
    ``rng`` (rate only): the generator to draw from; else one seeded with ``seed``."""
    check_encoding(encoding)
    T = int(timesteps)
    if T < 1:
        raise InputError("timesteps must be at least 1", place="--timesteps")
    x = np.asarray(x)
    if encoding == "direct":
        return np.broadcast_to(x[None], (T, *x.shape))
    if encoding == "rate":
        return rate(x, T, rng if rng is not None else np.random.default_rng(seed))
    if encoding == "latency":
        return latency(x, T)
    return delta(x, T)
