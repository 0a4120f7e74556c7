"""Simulation profiles as data: how a backend reads the continuous-time NIR nodes.

NIR stores continuous-time neurons and no dt; every library that writes NIR means its
own discrete-time update by them. A profile names one such reading. Adding one is one
entry in ``PROFILES`` (``register_profile``); the kernels read only the fields below.

How each library profile was established (its exporter, then its own simulation of the
exported graph, compared with ours on fixed inputs) is in scripts/peer_graphs/ and the
conformance data under tests/data/peers/<library>/.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from spikebridge.base.errors import UnsupportedError

INTEGRATORS = ("euler", "exact")
RESETS = (None, "zero", "subtract")
RESET_TIMINGS = ("same_step", "next_step")
THRESHOLD_TESTS = (None, "gt", "ge")
CURRENT_INPUTS = ("euler", "jump")
IF_INPUTS = ("dt", "step")


@dataclass(frozen=True)
class Profile:
    """How to discretise and read a NIR graph (one step of length dt, t = 1..T).

    name:            registry key.
    honour_metadata: read node.metadata['spikebridge'] (reset, threshold_test, v_init,
                     spike_amplitude); when False every neuron has v(0) = 0 and spikes of 1.
    dt_from_graph:   take dt from graph.metadata['spikebridge']['dt'] when present.
    default_dt:      dt when neither the caller (``--dt``) nor (if allowed) the graph gives one.
    integrator:      'euler':  v <- v + dt/tau * (v_leak - v + r*I)   (forward Euler);
                     'exact':  v <- a*v + (1-a)*(v_leak + r*I), a = exp(-dt/tau).
    reset:           None: what the file says (our metadata when honoured, else v <- v_reset);
                     'zero' (v <- v_reset) or 'subtract' (v <- v - theta) forces one.
    reset_timing:    'same_step': the reset follows the spike at once;
                     'next_step': it is applied inside the next update (snnTorch:
                     v[t+1] = beta*v[t] + I - s[t]*theta; for 'zero' this is identical).
    threshold_test:  None: the file's (our metadata, else '>'); 'gt' (>) or 'ge' (>=).
    current_input:   CubaLIF / CubaLI: 'euler': i <- i + dt/tau_syn*(w_in*I - i), then the
                     membrane integrates the new current; 'jump' (Norse): j = i + w_in*I
                     (unscaled), the membrane integrates j, then i <- j - dt/tau_syn*j.
    if_input:        IF: 'dt': v <- v + dt*r*I (plain NIR); 'step': v <- v + r*I (dt ignored).
    synaptic_delay:  steps of delay per Lava connection (Lava delivers a_out at t what
                     arrived at t-1). Feed-forward graphs follow the Lava lowering: a chain
                     of synaptic nodes between two neuron populations (or Input/Output) is
                     one connection, a target sits behind its deepest source and shallower
                     (skip) paths are delayed to match, each population starts fresh when
                     its input arrives (LIFReset), the bias is not delayed
                     (simulator.lava_offsets). Graphs with cycles: every synaptic node
                     delays its input.
    multi_spike:     sinabs MultiSpike: a neuron emits floor(v/theta) spikes in one step
                     (a graded output) and subtracts that many thetas.
    strip_io_dims:   the exporter writes its trace sample's batch/time dimensions into the
                     Input/Output shapes; drop them (spikebridge.hardware.eventsim.adapt.adapt_graph).
    source:          library and version the convention was learned from.
    """

    name: str
    honour_metadata: bool
    dt_from_graph: bool
    default_dt: float = 1.0
    integrator: str = "euler"
    reset: str | None = None
    reset_timing: str = "same_step"
    threshold_test: str | None = None
    current_input: str = "euler"
    if_input: str = "dt"
    synaptic_delay: int = 0
    multi_spike: bool = False
    strip_io_dims: bool = False
    source: str = ""
    description: str = ""

    def __post_init__(self):
        for f, allowed in (("integrator", INTEGRATORS), ("reset", RESETS),
                           ("reset_timing", RESET_TIMINGS), ("threshold_test", THRESHOLD_TESTS),
                           ("current_input", CURRENT_INPUTS), ("if_input", IF_INPUTS)):
            if getattr(self, f) not in allowed:
                raise ValueError(f"profile {self.name}: {f}={getattr(self, f)!r} not in {allowed}")
        if not (self.default_dt > 0) or self.synaptic_delay < 0:
            raise ValueError(f"profile {self.name}: default_dt > 0 and synaptic_delay >= 0")

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


PROFILES: dict[str, Profile] = {}


def register_profile(profile: Profile) -> Profile:
    """Add (or replace) a profile in the registry; returns it."""
    PROFILES[profile.name] = profile
    return profile


register_profile(Profile(
    name="spikebridge", honour_metadata=True, dt_from_graph=True,
    description="our exports: forward Euler, dt from graph metadata (else 1.0), honours "
                "the 'spikebridge' node metadata (docs/nir-conventions.md)"))
register_profile(Profile(
    name="nir", honour_metadata=False, dt_from_graph=False,
    description="strict plain NIR: forward Euler, dt 1.0 unless given, reset to v_reset, "
                "v > theta, ignores every metadata field"))
register_profile(Profile(
    name="snntorch", honour_metadata=False, strip_io_dims=True, dt_from_graph=False, default_dt=1e-4,
    integrator="euler", reset="subtract", reset_timing="next_step", threshold_test="gt",
    source="snntorch 1.0.0 (export_nir.py, _neurons/leaky.py, synaptic.py)",
    description="snn.Leaky/Synaptic: tau = dt/(1-beta) with dt = 1e-4, r = tau/dt, so Euler "
                "gives v = beta*v + I; the file says v_reset = 0 but Leaky's default reset "
                "subtracts theta, one step late (reset_delay); spike if v > theta"))
register_profile(Profile(
    name="norse", honour_metadata=False, strip_io_dims=True, dt_from_graph=False, default_dt=1e-6,
    integrator="euler", reset="zero", threshold_test="gt", current_input="jump",
    if_input="step",
    source="norse 1.1 (torch/utils/export_nir.py, functional/lif.py, lif_box.py, iaf.py)",
    description="LIFCell -> CubaLIF, LIFBoxCell -> LIF; Norse runs Euler at dt = 1e-3 but "
                "writes tau = dt/tau_inv (= dt*tau), so the file is read at dt = 1e-6; "
                "CubaLIF: the input jumps into the current unscaled, the membrane integrates "
                "that current, then it decays; reset to v_reset; v > theta; IF: v += I "
                "(dt ignored)"))
register_profile(Profile(
    name="sinabs", honour_metadata=False, strip_io_dims=True, dt_from_graph=False, default_dt=1.0,
    integrator="exact", reset="subtract", threshold_test="ge", multi_spike=True,
    source="sinabs 3.1 (nir.py, layers/lif.py, activation/)",
    description="tau in time steps, exact exponential decay a = exp(-1/tau) (LIF "
                "norm_input: v = a*v + (1-a)*I); IAF v += I; MultiSpike: floor(v/theta) "
                "spikes per step (v >= theta), reset by subtracting them"))
register_profile(Profile(
    name="spikingjelly", honour_metadata=False, strip_io_dims=True, dt_from_graph=False, default_dt=1e-4,
    integrator="euler", reset="zero", threshold_test="ge",
    source="spikingjelly 2.0 (activation_based/nir_exchange.py, neuron.py)",
    description="tau = tau_steps*dt, dt = 1e-4, IF r = 1/dt, Euler; hard reset to v_reset; "
                "spike if v >= theta"))
register_profile(Profile(
    name="lava-float", honour_metadata=False, dt_from_graph=True, default_dt=1.0,
    integrator="euler", reset="zero", threshold_test="gt", synaptic_delay=1,
    source="lava-nc 0.10.0 floating_pt LIF/Dense/Conv (hardware/loihi/plan.py lowering)",
    description="Lava floating_pt: u = u(1-du) + a_in, v = v(1-dv) + u + bias with du = "
                "dt/tau_syn (1 without a current), dv = dt/tau; reset to 0; v > vth; every "
                "Lava connection (a chain of synaptic nodes between populations) delays by one "
                "step, skip connections are delayed to the deepest path, each population "
                "starts when its input arrives (raw, unaligned outputs)"))
register_profile(Profile(
    name="loihi-fixed", honour_metadata=True, dt_from_graph=True, default_dt=1.0,
    source="lava-nc 0.10.0 fixed_pt PyLifResetModelBitAcc / PyDenseModelBitAcc / PySparseModelBitAcc",
    description="Loihi fixed point, bit-exact with Lava fixed_pt: the graph quantised by "
                "spikebridge.hardware.loihi.fixedpoint and run by the integer model of hardware/loihi "
                "(aligned outputs; whole-graph, not node by node)"))
register_profile(Profile(
    name="loihi-fixed-groups", honour_metadata=True, dt_from_graph=True, default_dt=1.0,
    source="lava-nc 0.10.0 fixed_pt (as loihi-fixed)",
    description="loihi-fixed with threshold groups: populations whose per-neuron thresholds "
                "spread their folded rows over more than 4x are split into LIF processes with "
                "their own vth (hardware/loihi/groups.py); bit-exact with `--backend lava "
                "--precision fixed --threshold-groups`"))


def get_profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise UnsupportedError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}",
                               None, "profile") from None
