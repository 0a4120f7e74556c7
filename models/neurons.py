"""Spiking neurons as pure step functions, with thin module wrappers.

Step functions follow ``step(x, v, params) -> (spikes, v_next)``; parameters are named
the way NIR names them (``v_threshold``, ``v_reset``, ``tau``, ``r``, ``v_leak``) so an
exporter copies fields instead of translating them.

Discrete time, forward Euler with step ``dt`` (our exports use dt = 1, r = 1):

    IF:   v <- v + dt * r * x
    LIF:  v <- v + dt / tau * (v_leak - v + r * x)
    spike s = v > v_threshold   (or >= with threshold_test="ge")
    reset "zero":     v <- v_reset where s          (hard reset)
    reset "subtract": v <- v - v_threshold where s  (soft reset)

Thresholds may be scalars or per-neuron tensors of the layer's output shape.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

RESETS = ("zero", "subtract")
TESTS = ("gt", "ge")


@dataclass(frozen=True)
class NeuronConfig:
    reset: str = "zero"
    threshold_test: str = "gt"
    dt: float = 1.0

    def __post_init__(self):
        if self.reset not in RESETS:
            raise ValueError(f"reset must be one of {RESETS}, not {self.reset!r}")
        if self.threshold_test not in TESTS:
            raise ValueError(f"threshold_test must be one of {TESTS}, not {self.threshold_test!r}")


def fire(v: torch.Tensor, v_threshold, threshold_test: str = "gt") -> torch.Tensor:
    """Heaviside spike decision (no surrogate; see spikebridge.models.bptt for the differentiable one)."""
    return (v >= v_threshold) if threshold_test == "ge" else (v > v_threshold)


def apply_reset(v: torch.Tensor, s: torch.Tensor, v_threshold, reset: str, v_reset=0.0) -> torch.Tensor:
    s = s.to(v.dtype)
    if reset == "subtract":
        return v - s * v_threshold
    return v * (1.0 - s) + s * v_reset


def if_step(x, v, v_threshold, cfg: NeuronConfig = NeuronConfig(), r=1.0, v_reset=0.0):
    """One IF step. Returns (spikes as x.dtype, next membrane)."""
    v = v + cfg.dt * r * x
    s = fire(v, v_threshold, cfg.threshold_test).to(x.dtype)
    return s, apply_reset(v, s, v_threshold, cfg.reset, v_reset)


def lif_step(x, v, v_threshold, tau, cfg: NeuronConfig = NeuronConfig(), r=1.0, v_leak=0.0, v_reset=0.0):
    """One LIF step (forward Euler of tau dv/dt = v_leak - v + r x)."""
    v = v + cfg.dt / tau * (v_leak - v + r * x)
    s = fire(v, v_threshold, cfg.threshold_test).to(x.dtype)
    return s, apply_reset(v, s, v_threshold, cfg.reset, v_reset)


def run_if(currents: torch.Tensor, v_threshold, cfg: NeuronConfig = NeuronConfig(), v_init=0.0,
           membrane_dropout: float = 0.0, training: bool = False) -> torch.Tensor:
    """Run IF neurons over time-major currents (T, B, ...) -> spikes (T, B, ...).

    ``membrane_dropout`` (SNN2ANN): in training, the membrane carried to the next step
    is passed through dropout, m(t) = Dropout(u(t) * (1 - s(t))).
    """
    v = torch.zeros_like(currents[0]) + v_init
    out = torch.empty_like(currents)
    for t in range(currents.shape[0]):
        s, v = if_step(currents[t], v, v_threshold, cfg)
        if membrane_dropout > 0 and training:
            v = nn.functional.dropout(v, membrane_dropout, training=True)
        out[t] = s
    return out


class IF(nn.Module):
    """IF neurons over a time-major tensor (T, B, ...); threshold is a buffer."""

    def __init__(self, v_threshold, cfg: NeuronConfig = NeuronConfig(), v_init=0.0):
        super().__init__()
        self.register_buffer("v_threshold", torch.as_tensor(v_threshold, dtype=torch.float32))
        self.cfg = cfg
        self.v_init = v_init

    def forward(self, currents: torch.Tensor) -> torch.Tensor:
        return run_if(currents, self.v_threshold, self.cfg, self.v_init)
