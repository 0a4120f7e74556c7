"""Which library a NIR graph most likely came from, what its profile will assume, and
whether the chosen reading makes arithmetic sense.

    detect_library(graph) -> (library or None, [reasons])
    foreign_graph_note(graph, profile) -> one line or None   (no --profile on a foreign graph)
    norse_export_dt(graph) -> (export_dt, reason)             (norse#411: the tau convention)
    describe_reading(graph, profile, dt=None) -> [lines]      (what `inspect --profile` prints)
    check_decays(graph, info, profile, dt)                    (refuses dt/tau outside [0, 1])

The evidence is what each library's exporter writes (shared/design.md, "How other
libraries write NIR"): snnTorch 1.0 LIF r = tau/1e-4 and CubaLIF w_in = tau_syn/1e-4,
RLeaky/RSynaptic as a nested graph {input, lif, w_rec, output}; Norse 1.1 r = 1,
w_in = 1, tau = export_dt * tau (1e-5 s for 10 ms with to_nir's default) and a batch axis
in the Input type; sinabs 3.1 tau in steps (>= 1), r = 1, its time axis in the Input
type; SpikingJelly 2.0 IF r = 1/dt = 1e4, LIF tau = tau_steps * 1e-4 with r = 1 or
tau_steps, v_leak = v_reset.
"""
from __future__ import annotations

import numpy as np

from spikebridge.base.dialect import META_KEY, node_type
from spikebridge.base.errors import GraphError

from .profiles import LIBRARY_OPTIONS, Profile, get_profile

LIBRARIES = ("snntorch", "norse", "sinabs", "spikingjelly")
NORSE_TO_NIR_DT = 1e-3      # to_nir's default dt (file tau = dt * true tau)
NORSE_MIN_TRUE_TAU = 1e-3   # a true tau below Norse's 1 ms step cannot be simulated by it


def _arr(v) -> np.ndarray | None:
    if v is None:
        return None
    try:
        return np.asarray(v, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None


def _close(a, b, rtol=1e-4) -> bool:
    a, b = _arr(a), _arr(b)
    if a is None or b is None or a.size == 0:
        return False
    a, b = np.broadcast_arrays(a, b)
    return bool(np.allclose(a, b, rtol=rtol, atol=0))


def _walk(graph, prefix=""):
    """(name, node) of every node, nested graphs included."""
    for name, node in graph.nodes.items():
        yield prefix + name, node
        if node_type(node) == "NIRGraph":
            yield from _walk(node, prefix + name + ".")


def has_spikebridge_metadata(graph) -> bool:
    md = graph.metadata if isinstance(getattr(graph, "metadata", None), dict) else {}
    if META_KEY in md:
        return True
    return any(META_KEY in (getattr(n, "metadata", None) or {}) for _, n in _walk(graph))


def _taus(node) -> list[np.ndarray]:
    return [a for a in (_arr(getattr(node, k, None)) for k in ("tau", "tau_mem", "tau_syn"))
            if a is not None and a.size]


def detect_library(graph) -> tuple[str | None, list[str]]:
    """The library whose exporter most likely wrote ``graph`` and the evidence, or
    (None, []) when nothing points to one (our own exports carry metadata instead)."""
    votes = {lib: 0 for lib in LIBRARIES}
    why: dict[str, list[str]] = {lib: [] for lib in LIBRARIES}

    def vote(lib, n, reason):
        votes[lib] += n
        if reason not in why[lib]:
            why[lib].append(reason)

    for name, node in _walk(graph):
        t = node_type(node)
        if t == "NIRGraph" and {"lif", "w_rec"} <= set(node.nodes):
            vote("snntorch", 3, f"{name}: nested graph {{lif, w_rec}} (RLeaky/RSynaptic export)")
        r = _arr(getattr(node, "r", None))
        if t == "IF" and r is not None:
            if _close(r, 1e4):
                vote("spikingjelly", 2, f"{name}: IF r = 1e4 (1/dt, dt = 1e-4)")
            elif _close(r, 1.0):
                # Norse keeps IAFCell's scalar parameters; sinabs expands them to the layer
                # (weak: plain NIR's IF too; counted once per graph, not per node)
                lib = ("norse" if np.ndim(node.r) == 0 and np.ndim(node.v_threshold) == 0
                       else "sinabs")
                if not any("IF r = 1" in w for w in why[lib]):
                    vote(lib, 1, f"{name}: IF r = 1 with "
                                 + ("scalar" if lib == "norse" else "per-neuron") + " parameters")
        if t in ("LIF", "LI") and r is not None:
            tau = _arr(node.tau)
            if tau is None or not tau.size or np.any(tau <= 0):
                continue
            if _close(r, tau / 1e-4) and not _close(r, 1.0):
                vote("snntorch", 2, f"{name}: {t} r = tau/1e-4 (beta = 1 - 1e-4/tau)")
                vote("spikingjelly", 1, f"{name}: {t} r = tau/1e-4 (decay_input=False)")
            elif _close(r, 1.0):
                tmax = float(tau.max())
                if tmax < 1e-4:
                    vote("norse", 2, f"{name}: {t} r = 1, tau {tmax:.3g} s < 1e-4 (to_nir's dt*tau)")
                elif tmax < 1e-3:  # below Norse's 1 ms step, above its dt*tau range
                    vote("spikingjelly", 2, f"{name}: {t} r = 1, tau = tau_steps * 1e-4")
                elif tmax < 1.0:
                    vote("norse", 1, f"{name}: {t} r = 1, tau {tmax:.3g} in seconds")
                else:
                    vote("sinabs", 2, f"{name}: {t} r = 1, tau {tmax:.3g} >= 1 (time steps)")
        if t == "CubaLIF":
            w_in = _arr(node.w_in)
            if _close(w_in, 1.0) and _close(r, 1.0):
                vote("norse", 2, f"{name}: CubaLIF r = 1, w_in = 1")
            elif _close(w_in, _arr(node.tau_syn) / 1e-4):
                vote("snntorch", 2, f"{name}: CubaLIF w_in = tau_syn/1e-4")
        vr, vl = _arr(getattr(node, "v_reset", None)), _arr(getattr(node, "v_leak", None))
        if t == "LIF" and vr is not None and vl is not None and np.any(vr != 0) and _close(vr, vl):
            vote("spikingjelly", 2, f"{name}: v_leak = v_reset != 0")
    for name, node in graph.nodes.items():  # leading batch/time axes in the Input type
        if node_type(node) != "Input":
            continue
        shape = _arr(node.input_type.get("input")) if isinstance(node.input_type, dict) else None
        if shape is None:
            continue
        shape = tuple(int(v) for v in shape)
        succ = [b for a, b in graph.edges if a == name]
        extra = False
        for s in succ:
            nd = graph.nodes.get(s)
            w = getattr(nd, "weight", None)
            if w is None:
                continue
            w = np.asarray(w)
            if node_type(nd) in ("Affine", "Linear"):
                extra = len(shape) == 2 and shape[-1] == w.shape[1]
            elif node_type(nd) in ("Conv1d", "Conv2d"):  # (N, C_in, *spatial)
                extra = len(shape) == w.ndim and shape[1] == w.shape[1] * int(nd.groups)
        if extra:
            vote("norse", 1, f"{name}: Input {shape} keeps a leading batch/time axis")
            vote("sinabs", 1, f"{name}: Input {shape} keeps a leading batch/time axis")
    best = max(votes.values())
    top = [k for k in LIBRARIES if votes[k] == best]
    if best < 2:  # one weak hint (an IF with r = 1 is plain NIR too) names no library
        return None, []
    if len(top) > 1:  # a tie (IF r = 1 and a leading Input axis: Norse or sinabs)
        return None, [f"{k}: {why[k][0]}" for k in top if why[k]]
    return top[0], why[top[0]]


def candidates(graph) -> list[str]:
    """The libraries tied for the most evidence (one when detect_library names it)."""
    lib, why = detect_library(graph)
    if lib is not None:
        return [lib]
    return [w.split(":", 1)[0] for w in why]


def foreign_graph_note(graph, profile: str | Profile) -> str | None:
    """One line when a graph without spikebridge metadata is read with the spikebridge
    profile (no --profile): the library it most likely came from and what to pass."""
    prof = get_profile(profile)
    if prof.name != "spikebridge" or has_spikebridge_metadata(graph):
        return None
    lib, why = detect_library(graph)
    if lib is None and why:
        libs = [w.split(":", 1)[0] for w in why]
        return (f"graph has no spikebridge metadata and looks like a {' or '.join(libs)} export "
                f"({why[0].split(': ', 1)[1]}); it is being read with spikebridge semantics: pass "
                + " or ".join(f"--profile {k}" for k in libs) + " (with options: see --help)")
    if lib is None:
        return ("graph has no spikebridge metadata and no library's exporter signature; read "
                "with the spikebridge profile (plain NIR, forward Euler); if another library "
                f"wrote it pass --profile LIB[:options] (LIB: {', '.join(LIBRARIES)})")
    opts = ",".join(f"{o.name}={o.allowed()}" for o in LIBRARY_OPTIONS[lib] if o.name != "dt")
    return (f"graph has no spikebridge metadata and looks like a {lib} export ({why[0]}"
            f"{'; ...' if len(why) > 1 else ''}); it is being read with spikebridge semantics: "
            f"pass --profile {lib} (options: {opts}, dt=<s>)")


def norse_export_dt(graph) -> tuple[float, str]:
    """The dt Norse's to_nir was given (norse#411): file tau = export_dt * true tau. A true
    tau below Norse's 1 ms step cannot be what was simulated, so the smallest tau tells:
    below 1e-3 -> to_nir's default 1e-3 (tau = dt*tau), else 1.0 (true time constants)."""
    taus = [t for _, n in _walk(graph) if node_type(n) in ("LIF", "CubaLIF", "LI", "CubaLI")
            for t in _taus(n)]
    if not taus:
        return NORSE_TO_NIR_DT, "no time constant in the graph: to_nir's default dt 1e-3 assumed"
    tmin = float(min(float(t.min()) for t in taus))
    if tmin < NORSE_MIN_TRUE_TAU:
        return NORSE_TO_NIR_DT, (f"smallest tau {tmin:.3g} < 1e-3: written by to_nir's default "
                                 "(tau = dt * tau, norse#411), export_dt=0.001")
    return 1.0, (f"smallest tau {tmin:.3g} >= 1e-3: true time constants in seconds "
                 "(to_nir(..., dt=1.0)), export_dt=1.0")


def describe_reading(graph, profile: str | Profile, dt: float | None = None) -> list[str]:
    """How ``profile`` reads ``graph``: the profile string, every option with its value and
    where the value came from (given, library default, detected from the file), and the
    assumptions the file cannot confirm. ``inspect --profile`` prints these lines."""
    prof = get_profile(profile)
    lines = [f"reading: profile {prof.label} ({prof.source or 'spikebridge'})",
             f"  {prof.description}"]
    given = dict(prof.options) if prof.spec else {}
    explicit = set(prof.spec.partition(":")[2].split(",")) if prof.spec else set()
    explicit = {e.partition("=")[0] for e in explicit if e}
    for o in LIBRARY_OPTIONS.get(prof.name, ()):
        v = given.get(o.name, o.default)
        src = "given" if o.name in explicit else "library default (the file does not say)"
        if o.name == "dt" and v == "graph":
            src = "the graph's metadata dt, else 1.0"
        extra = ""
        if prof.name == "norse" and o.name == "export_dt" and v == "auto":
            ed, why = norse_export_dt(graph)
            extra, src = f" -> {ed:g}", f"detected: {why}"
        if prof.name == "spikingjelly" and o.name == "decay_input" and v == "file":
            lif_r = [(n, _arr(node.r), _arr(node.tau)) for n, node in _walk(graph)
                     if node_type(node) == "LIF"]
            seen = sorted({"true" if _close(r, 1.0) else "false" for _, r, _ in lif_r})
            src = "read from the file's r" + (f": {', '.join(seen)}" if seen else " (no LIF)")
        lines.append(f"  option {o.name}={v}{extra}: {src}")
    md = graph.metadata.get(META_KEY) if isinstance(getattr(graph, "metadata", None), dict) else None
    if dt is not None:
        lines.append(f"  dt: {dt:g} (--dt)")
    elif prof.dt_from_graph and isinstance(md, dict) and "dt" in md:
        lines.append(f"  dt: {float(md['dt']):g} (the graph's metadata)")
    else:
        lines.append(f"  dt: {prof.default_dt:g} (profile"
                     + (", the file stores none)" if prof.name != "norse" else
                        ": Norse's dt * 1e-3, the taus brought to to_nir's default)"))
    assume = [f"reset {prof.reset or 'as the file says (v_reset)'}"
              + (", one step late" if prof.reset == "subtract" and prof.reset_timing == "next_step" else "")
              + (", one step late in CubaLIF and self-looped LIF nodes (snnTorch Synaptic/RLeaky/"
                 "RSynaptic: the whole next step zeroed); LIF: zeroed, then integrates"
                 if prof.reset == "zero" and prof.reset_timing == "next_step" else "")
              + (" (snnTorch reset_delay=False: the spike test sees v - theta where the "
                 "stored membrane was above theta)" if prof.reset_timing == "same_step_guarded" else ""),
              f"threshold test {'>=' if prof.threshold_test == 'ge' else '>'}",
              f"integrator {prof.integrator}"]
    if prof.multi_spike:
        assume.append("multi-spike (floor(v/theta) spikes per step)")
    if prof.v_floor is not None:
        assume.append(f"membrane floor {prof.v_floor}")
    if prof.name != "spikebridge" and not prof.honour_metadata:
        assume.append("spikebridge node metadata ignored; v(0) = 0")
    lines.append("  assumes: " + "; ".join(assume))
    note = foreign_graph_note(graph, prof)
    if note:
        lines.append("  warning: " + note)
    elif not has_spikebridge_metadata(graph):
        lib, why = detect_library(graph)
        if lib and lib != prof.name:
            lines.append(f"  note: the file looks like a {lib} export ({why[0]}), "
                         f"read with {prof.label}")
    return lines


def check_decays(graph, info, profile: str | Profile, dt: float) -> None:
    """Refuse a reading whose forward-Euler decays leave [0, 1]: dt/tau (and dt/tau_syn)
    above 1 makes v <- (1 - dt/tau) v flip sign each step, which no library computes; it
    means the wrong --profile or --dt. One GraphError naming every node and its numbers."""
    prof = get_profile(profile)
    if prof.integrator != "euler":
        return
    bad = []
    for n in info.order:
        node = graph.nodes[n]
        t = info.types[n]
        keys = {"LIF": ("tau",), "LI": ("tau",), "CubaLIF": ("tau_mem", "tau_syn"),
                "CubaLI": ("tau_mem", "tau_syn")}.get(t, ())
        for k in keys:
            tau = _arr(getattr(node, k, None))
            if tau is None or not tau.size:
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                c = dt / tau
            worst = float(np.max(np.abs(c - 0.5)))
            if not np.isfinite(c).all() or worst > 0.5 + 1e-12:
                i = int(np.argmax(np.where(np.isfinite(c), np.abs(c - 0.5), np.inf)))
                bad.append(f"node {n!r} ({t}) dt/{k} = {dt:g}/{tau[i]:g} = {c[i]:g} "
                           f"(decay 1 - dt/{k} = {1 - c[i]:g})")
    if bad:
        raise GraphError("decay outside [0, 1] for profile " + prof.label + ": " + "; ".join(bad)
                         + " (wrong --profile, profile option or --dt?)", info.file, "graph")
