"""Simulation profiles as data: how a backend reads the continuous-time NIR nodes.

A profile is a small frozen dataclass; add new ones (snntorch, norse, sinabs,
spikingjelly, lava-float, loihi-fixed) to ``PROFILES`` with the fields they need.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UnsupportedError


@dataclass(frozen=True)
class Profile:
    """How to discretise and read a NIR graph.

    name:            registry key.
    honour_metadata: read node.metadata['spikebridge'] (reset, threshold_test, v_init,
                     spike_amplitude) and graph metadata dt; when False every neuron is
                     plain NIR (reset to v_reset, v > theta, v(0) = 0, spikes of 1).
    dt_from_graph:   take dt from graph.metadata['spikebridge']['dt'] when present.
    default_dt:      dt when neither the caller nor (if allowed) the graph gives one.
    decay:           'euler': v <- v + dt/tau * (v_leak - v + r*I) (forward Euler);
                     'exact': v <- a*v + (1-a)*(v_leak + r*I), a = exp(-dt/tau).
    default_reset / default_threshold_test: what a neuron without our metadata does.
    """

    name: str
    honour_metadata: bool
    dt_from_graph: bool
    default_dt: float = 1.0
    decay: str = "euler"
    default_reset: str = "zero"
    default_threshold_test: str = "gt"
    description: str = ""


PROFILES: dict[str, Profile] = {
    "spikebridge": Profile(
        name="spikebridge", honour_metadata=True, dt_from_graph=True,
        description="forward Euler, dt from graph metadata (else 1.0), honours the "
                    "'spikebridge' node metadata (docs/nir-conventions.md)"),
    "nir": Profile(
        name="nir", honour_metadata=False, dt_from_graph=False,
        description="strict plain NIR: forward Euler, dt 1.0 unless given, ignores "
                    "every metadata field"),
}


def get_profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise UnsupportedError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}",
                               None, "profile") from None
