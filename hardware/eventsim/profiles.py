"""Simulation profiles as data: how a backend reads the continuous-time NIR nodes.

NIR stores continuous-time neurons and no dt; every library that writes NIR means its
own discrete-time update by them. A profile names one such reading. Adding one is one
entry in ``PROFILES`` (``register_profile``); the kernels read only the fields below.

Profile strings (one syntax for every command and for Python):

    LIB[:opt=val[,opt=val]]     e.g.  snntorch:reset=zero   sinabs:spike=single,floor=-1

``get_profile`` / ``parse_profile`` read them; ``LIBRARY_OPTIONS`` lists each library's
options (``describe_options(lib)`` prints them), every default being the library's own:

    snntorch      reset=subtract|zero  reset_delay=true|false  dt=<s> (1e-4)
    norse         export_dt=auto|<s> (to_nir's dt; auto: from the magnitude of tau)  dt=<s> (1e-3)
    sinabs        spike=multi|single  reset=subtract|zero  floor=none|-threshold|<v>
                  norm_input=layer|true|false  dt=<steps> (1)
    spikingjelly  decay_input=file|true|false  v_reset=file|<v>  dt=<s> (1e-4)
    nir, spikebridge   dt=<s>

A bad string raises one UnsupportedError line naming the valid options and values.
``detect.describe_reading(graph, profile)`` says how a graph will be read (``inspect``).

How each library profile was established (its exporter, then its own simulation of the
exported graph, compared with ours on fixed inputs) is in scripts/peer_graphs/ and the
conformance data under tests/data/peers/<library>/.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from spikebridge.base.errors import UnsupportedError

INTEGRATORS = ("euler", "exact")
RESETS = (None, "zero", "subtract")
RESET_TIMINGS = ("same_step", "next_step", "same_step_guarded")
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
                     v[t+1] = beta*v[t] + I - s[t]*theta; for 'zero' this is identical);
                     'same_step_guarded' (snnTorch reset_delay=False): subtract in the
                     spiking step, but the spike test sees v - theta*(v[t-1] > theta).
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
    v_init_reset:    every membrane starts at its v_reset (SpikingJelly), not at 0.
    v_floor:         membrane floor applied after the reset (sinabs min_v_mem): None (no floor),
                     a number, or "-threshold" (each neuron's -v_threshold, sinabs' from_nir).
    source:          library and version the convention was learned from.
    spec:            the profile string it was built from ("snntorch:reset=zero"); equal to
                     ``name`` for a registry entry read without options.
    options:         the options the library profile was given, resolved, as (name, value)
                     pairs; the graph-level ones (Norse's tau convention, SpikingJelly's
                     decay_input / v_reset overrides) are applied by adapt_graph.
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
    v_init_reset: bool = False
    v_floor: float | str | None = None
    source: str = ""
    description: str = ""
    spec: str = ""
    options: tuple = ()

    def __post_init__(self):
        for f, allowed in (("integrator", INTEGRATORS), ("reset", RESETS),
                           ("reset_timing", RESET_TIMINGS), ("threshold_test", THRESHOLD_TESTS),
                           ("current_input", CURRENT_INPUTS), ("if_input", IF_INPUTS)):
            if getattr(self, f) not in allowed:
                raise ValueError(f"profile {self.name}: {f}={getattr(self, f)!r} not in {allowed}")
        if not (self.default_dt > 0) or self.synaptic_delay < 0:
            raise ValueError(f"profile {self.name}: default_dt > 0 and synaptic_delay >= 0")
        if not (self.v_floor is None or self.v_floor == "-threshold"
                or isinstance(self.v_floor, (int, float))):
            raise ValueError(f"profile {self.name}: v_floor must be None, a number or '-threshold'")

    @property
    def label(self) -> str:
        """What traces and reports call this reading: the spec when options were given."""
        return self.spec or self.name

    def option(self, key: str):
        """The resolved value of a library option (its default when none was given)."""
        got = dict(self.options)
        if key in got:
            return got[key]
        return next((o.default for o in LIBRARY_OPTIONS.get(self.name, ()) if o.name == key), None)

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
    integrator="euler", reset="zero", threshold_test="ge", v_init_reset=True,
    source="spikingjelly 2.0 (activation_based/nir_exchange.py, neuron.py)",
    description="tau = tau_steps*dt, dt = 1e-4, IF r = 1/dt, Euler; hard reset to v_reset; "
                "spike if v >= theta; the membrane starts at v_reset"))
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


# -- options: what a library's exporter does not record -----------------------------------
#
# One syntax for every command:  --profile LIB[:opt=val[,opt=val]]   e.g. snntorch:reset=zero
# Every option's default is the library's own default, so a bare library name reads a graph
# exported with default settings exactly as before.

@dataclass(frozen=True)
class Option:
    """One named option of a profile. ``values``: the allowed words; ``number``: a finite
    float is allowed too (``positive``: > 0). ``doc`` says which library setting it is."""

    name: str
    default: str
    values: tuple = ()
    number: bool = False
    positive: bool = False
    doc: str = ""

    def allowed(self) -> str:
        words = list(self.values) + ([f"<number{' > 0' if self.positive else ''}>"]
                                     if self.number else [])
        return "|".join(words)

    def parse(self, raw: str, spec: str) -> str:
        v = raw.strip()
        if v in self.values:
            return v
        if self.number:
            try:
                f = float(v)
            except ValueError:
                f = None
            if f is not None and np.isfinite(f) and (f > 0 or not self.positive):
                return repr(f)
        raise UnsupportedError(f"profile {spec!r}: {self.name}={raw!r} is not allowed; "
                               f"{self.name} takes {self.allowed()}", None, "profile")


_DT = lambda default, doc: Option("dt", default, ("default",) if default == "graph" else (),  # noqa: E731
                                  number=True, positive=True, doc=doc)

LIBRARY_OPTIONS: dict[str, tuple[Option, ...]] = {
    "snntorch": (
        Option("reset", "subtract", ("subtract", "zero"),
               doc="snn.Leaky/Synaptic reset_mechanism (the exporter writes v_reset = 0 for both)"),
        Option("reset_delay", "true", ("true", "false"),
               doc="reset_delay: true (default) resets one step late: subtract theta inside the "
                   "next update; with reset=zero, Synaptic/RLeaky/RSynaptic zero the whole next "
                   "step (a plain Leaky zeroes, then integrates: the same spikes as false); "
                   "false resets in the spiking step"),
        _DT("0.0001", "the exporter's dt (snnTorch 1.0 hard-codes 1e-4 s: tau = dt/(1-beta))"),
    ),
    "norse": (
        Option("export_dt", "auto", ("auto",), number=True, positive=True,
               doc="the dt given to to_nir (the file's tau = export_dt * true tau, norse#411); "
                   "auto: 0.001 (to_nir's default) when the smallest tau is below 1 ms, else "
                   "1.0 (to_nir(..., dt=1.0): true time constants in seconds)"),
        _DT("0.001", "Norse's simulation step (the cells' dt, 1e-3 s by default)"),
    ),
    "sinabs": (
        Option("spike", "multi", ("multi", "single"),
               doc="spike_fn: MultiSpike (floor(v/theta) spikes per step, the default) or SingleSpike"),
        Option("reset", "subtract", ("subtract", "zero"),
               doc="reset_fn: MembraneSubtract (default) or MembraneReset (to the file's v_reset, 0)"),
        Option("floor", "none", ("none", "-threshold"), number=True,
               doc="min_v_mem, the membrane floor applied after the reset: none (the layers' "
                   "default), a number (sinabs.from_model sets -1), or -threshold (each "
                   "neuron's -v_threshold: what sinabs.from_nir builds)"),
        Option("norm_input", "layer", ("layer", "true", "false"),
               doc="norm_input (the exporter writes r = 1 either way): layer = each layer's "
                   "default (LIF true: v = a*v + (1-a)*I; ExpLeak, written as LI, false: "
                   "v = a*v + I); true/false for every LIF and LI"),
        _DT("1.0", "one time step (sinabs' tau is in steps)"),
    ),
    "spikingjelly": (
        Option("decay_input", "file", ("file", "true", "false"),
               doc="LIFNode decay_input; file: read from r (the exporter writes r = 1 for true, "
                   "r = tau_steps for false); true/false overrides it"),
        Option("v_reset", "file", ("file",), number=True,
               doc="the hard-reset value v_reset (also the leak target); file: the file's "
                   "v_reset / v_leak as the exporter wrote them"),
        _DT("0.0001", "the exporter's dt (export_to_nir(..., dt=1e-4) by default)"),
    ),
    "nir": (_DT("1.0", "the step length in the file's time unit"),),
    "spikebridge": (_DT("graph", "default: the graph's metadata dt (else 1.0)"),),
}


def _with_options(base: Profile, spec: str, given: dict[str, str]) -> Profile:
    """The library profile with its resolved options applied (``given`` validated)."""
    opts = {o.name: given.get(o.name, o.default) for o in LIBRARY_OPTIONS[base.name]}
    ch: dict = {}
    if opts.get("dt") not in (None, "default", "graph"):
        ch["default_dt"] = float(opts["dt"])
        if base.name == "norse":  # the file's taus are brought to to_nir's default convention
            ch["default_dt"] = float(opts["dt"]) * 1e-3  # by adapt_graph: read at dt * 1e-3
        if base.dt_from_graph and "dt" in given:
            ch["dt_from_graph"] = False
    name = base.name
    if name == "snntorch":
        if opts["reset"] == "zero":  # one step late: Synaptic/RLeaky/RSynaptic zero the next step
            ch.update(reset="zero",
                      reset_timing="next_step" if opts["reset_delay"] == "true" else "same_step")
        else:
            ch.update(reset="subtract",
                      reset_timing="next_step" if opts["reset_delay"] == "true"
                      else "same_step_guarded")
    elif name == "sinabs":
        ch["multi_spike"] = opts["spike"] == "multi"
        ch["reset"] = opts["reset"]
        f = opts["floor"]
        ch["v_floor"] = None if f == "none" else (f if f == "-threshold" else float(f))
    return replace(base, spec=spec, options=tuple(opts.items()), **ch)


def parse_profile(spec: str) -> Profile:
    """``LIB[:opt=val[,opt=val]]`` -> Profile. One-line UnsupportedError (exit 3) naming the
    valid profiles, options and values on any mistake."""
    text = str(spec).strip()
    name, sep, rest = text.partition(":")
    name = name.strip()
    if name not in PROFILES:
        raise UnsupportedError(f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))} "
                               "(syntax LIB[:opt=val[,opt=val]])", None, "profile")
    base = PROFILES[name]
    if not sep:
        return base
    table = {o.name: o for o in LIBRARY_OPTIONS.get(name, ())}
    if not table:
        raise UnsupportedError(f"profile {name!r} takes no options; profiles with options: "
                               f"{', '.join(sorted(LIBRARY_OPTIONS))}", None, "profile")
    usage = ", ".join(f"{o.name}={o.allowed()}" for o in table.values())
    given: dict[str, str] = {}
    for item in rest.split(","):
        if not item.strip():
            continue
        k, eq, v = item.partition("=")
        k = k.strip()
        if not eq or k not in table:
            raise UnsupportedError(f"profile {text!r}: {item.strip()!r} is not an option of "
                                   f"{name}; options: {usage}", None, "profile")
        if k in given:
            raise UnsupportedError(f"profile {text!r}: option {k} given twice", None, "profile")
        given[k] = table[k].parse(v, text)
    canon = name + (":" + ",".join(f"{k}={given[k]}" for k in table if k in given) if given else "")
    return _with_options(base, canon, given)


def describe_options(name: str) -> str:
    """One line per option of profile ``name`` (its values, default and meaning)."""
    return "\n".join(f"  {o.name}={o.allowed()} (default {o.default}): {o.doc}"
                      for o in LIBRARY_OPTIONS.get(name, ()))


def get_profile(profile: str | Profile) -> Profile:
    """A registered profile by name, or ``LIB:opt=val,...`` with options (parse_profile)."""
    if isinstance(profile, Profile):
        return profile
    if profile in PROFILES:
        return PROFILES[profile]
    return parse_profile(profile)
