"""Lower a feed-forward NIR graph to a Lava network plan (numpy only, never imports lava).

The plan is plain data: a JSON-able dict (``Plan.meta``) plus named numpy arrays
(``Plan.arrays``), written as plan.json + plan.npz for the worker on the Lava interpreter.

Lowering, over FLATTENED CHW vectors (so Flatten is a no-op and no XYC transposition
is ever needed):

* every synaptic node (Affine, Linear, Scale, Identity, Flatten, Conv2d, SumPool2d,
  AvgPool2d) is a sparse matrix (COO: rows = output CHW index, cols = input CHW index)
  plus a bias vector;
* every neuron node (IF, LIF, CubaLIF) is one Lava LIF population; all chains of synaptic
  nodes from one source (Input or population) to one target (population or Output)
  become one Lava connection (Dense or Sparse, chosen by the worker) whose matrix is the
  sum of the chains' products (a direct source -> target edge is the identity), so each
  population sits exactly ``depth`` Lava steps of delay behind the Input, depth = 1 +
  the deepest source's depth; a connection from a shallower source (a skip connection:
  paths of different synaptic depth into one neuron) gets ``delay`` = the difference
  and becomes DelayDense / DelaySparse (delays = that many extra steps, exact for binary
  and graded payloads alike);
* the chain biases become the population's ``bias_mant`` (applied every step, as NIR's
  Affine bias is); for a CubaLIF with a current decay the bias must pass through the
  current like any input, so it comes from a constant source (``BIAS_SOURCE``, 1 at
  every step) through its own connection;
* per-neuron parameters are folded exactly so that the Lava population has scalar
  du = 1, dv, vth = 1:

      IF : v <- v + dt*r*I                    -> weights row i *= dt*r_i/theta_i
      LIF: v <- v + dt/tau*(v_leak - v + r*I) -> dv = dt/tau, weights row i *= dv*r_i/theta_i,
                                                 bias_i += dv*v_leak_i/theta_i
      CubaLIF (forward Euler, current first):   i <- (1-du) i + du*w_in*I, du = dt/tau_syn,
           v <- v + dv (v_leak - v + r*i)     -> Lava u = dv*r*i/theta, so weights row i *=
                                                 du*w_in_i*dv*r_i/theta_i, dv = dt/tau_mem
      bias_i /= theta_i, v_init_i /= theta_i, vth = 1
      spike_amplitude a_j of a source population scales column j of its outgoing weights.

  Lava's LIF computes u = u*(1-du) + a_in; v = v*(1-dv) + u + bias; s = v > vth; v[s] = 0,
  which with du = 1 (IF, LIF) or du = dt/tau_syn (CubaLIF) is exactly the forward-Euler
  update above with reset to zero.
* v_init is injected as a one-step input v_init*(1-dv) at the first step of every sample
  window (LIFReset zeroes u and v at that step, then integrates that input).

What Lava's LIF cannot express raises ``UnsupportedError`` listing every problem at once:
subtractive reset (unless ``allow_reset_to_zero``), ``>=`` threshold test, non-zero
v_reset, non-uniform tau / tau_syn, a decay dt/tau outside [0, 1], non-positive
thresholds, v_init on a CubaLIF with a current decay, other node types, and cycles other
than a population's connection to itself.

Graphs of other libraries (``read_as(graph, profile, dt)``, the backends' ``--profile`` /
``--dt``) are read by the profile: eventsim's adaptation (``adapt_graph``) and its kernels'
reading of each neuron (``kernels._neuron_prepare``) are the one interpretation of a
library's conventions, mapped here onto Lava's LIF (``read_neuron_params``): any dt and
integrator, Norse's current jump, v_reset folded into the threshold, ``>=`` as vth =
nextafter(1, 0) (exact in float), LI / CubaLI as a LIF that never fires read as membrane
(fixed point: in units of a bound on |v|, fixedpoint.quantize), a recurrent Dense for a back edge onto the same population. MultiSpike,
subtract reset, snnTorch's late reset to zero and membrane floors are refused, or run as
Lava's neuron with ``allow_reset_to_zero`` (the plan lists each approximation).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spikebridge.base.dialect import META_KEY
from spikebridge.base.errors import UnsupportedError
from spikebridge.hardware.eventsim.adapt import ADAPTED_KEY  # the profile a graph was read with

PLAN_VERSION = 1
RUN_DT_KEY = "spikebridge_run_dt"    # read_as: a run's --dt for a library-profile reading
BIAS_SOURCE = "__one__"  # a source that sends 1 at every step (synaptic biases into a current)

SYNAPTIC = ("Affine", "Linear", "Scale", "Identity", "Flatten", "Conv2d", "SumPool2d", "AvgPool2d")
NEURON = ("IF", "LIF", "CubaLIF")
READOUT_NEURON = ("LI", "CubaLI")  # library profiles: a LIF that never fires, read as membrane
IO = ("Input", "Output")

HINTS = {
    "CubaLI": "leaky integrators are lowered only for graphs read with a library --profile, as membrane readouts",
    "LI": "leaky integrators are lowered only for graphs read with a library --profile, as membrane readouts",
    "I": "integrators without spikes are not lowered",
    "Delay": "Delay has no Lava lowering here",
    "Threshold": "a bare Threshold node has no Lava lowering",
    "NIRGraph": "nested subgraphs are not supported; flatten the graph first",
}


@dataclass
class Coo:
    """A sparse matrix (rows x cols) as COO triples; duplicates are summed."""

    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    shape: tuple[int, int]

    @staticmethod
    def from_dense(w: np.ndarray) -> "Coo":
        w = np.asarray(w, dtype=np.float64)
        r, c = np.nonzero(w)
        return Coo(r.astype(np.int64), c.astype(np.int64), w[r, c], (int(w.shape[0]), int(w.shape[1])))

    @staticmethod
    def diag(d: np.ndarray) -> "Coo":
        d = np.asarray(d, dtype=np.float64).reshape(-1)
        i = np.arange(d.size, dtype=np.int64)
        return Coo(i, i.copy(), d.copy(), (d.size, d.size))

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """y = M @ x for x of shape (cols,) or (cols, K)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            return np.bincount(self.rows, weights=self.vals * x[self.cols], minlength=self.shape[0])
        if self.rows.size and np.unique(self.rows).size == self.rows.size:
            # at most one weight per row (diagonal scalings, Flatten, group selections): one
            # product per output, the same floats as the dense product, without its cost
            y = np.zeros((self.shape[0], x.shape[1]))
            y[self.rows] = self.vals[:, None] * x[self.cols]
            return y
        if self.shape[0] * self.shape[1] <= 4_000_000:
            return self.to_dense() @ x
        y = np.zeros((self.shape[0], x.shape[1]))
        step = max(1, 2_000_000 // max(x.shape[1], 1))
        for s in range(0, self.vals.size, step):
            sl = slice(s, s + step)
            np.add.at(y, self.rows[sl], self.vals[sl, None] * x[self.cols[sl]])
        return y

    def to_dense(self) -> np.ndarray:
        # bincount adds the duplicates in input order, as np.add.at does (same floats), faster
        r, c = self.shape
        flat = np.bincount(self.rows * c + self.cols, weights=np.asarray(self.vals, dtype=np.float64),
                           minlength=r * c)
        return flat.reshape(r, c)

    def scale_rows(self, s: np.ndarray) -> "Coo":
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        return Coo(self.rows, self.cols, self.vals * s[self.rows], self.shape)

    def scale_cols(self, s: np.ndarray) -> "Coo":
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        return Coo(self.rows, self.cols, self.vals * s[self.cols], self.shape)

    def fanout(self) -> np.ndarray:
        """Number of nonzero weights leaving each input (column)."""
        nz = self.vals != 0
        return np.bincount(self.cols[nz], minlength=self.shape[1])


# ----------------------------------------------------------------------------- helpers


def _pair(v, name="") -> tuple[int, int]:
    a = np.asarray(v).reshape(-1)
    if a.size == 1:
        return int(a[0]), int(a[0])
    return int(a[0]), int(a[1])


def _param(node, name, shape, default=None) -> np.ndarray:
    v = getattr(node, name, None)
    if v is None:
        v = default
    a = np.asarray(v, dtype=np.float64)
    return np.broadcast_to(a, shape).astype(np.float64).reshape(-1)


def _meta(node) -> dict:
    md = getattr(node, "metadata", None) or {}
    sb = md.get(META_KEY, {}) if isinstance(md, dict) else {}
    return sb if isinstance(sb, dict) else {}


def _str(v, default):
    if v is None:
        return default
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        v = v.item() if v.size == 1 else v
        if isinstance(v, bytes):
            return v.decode()
    return str(v)


def graph_dt(graph) -> float:
    md = getattr(graph, "metadata", None) or {}
    sb = md.get(META_KEY, {}) if isinstance(md, dict) else {}
    try:
        return float(np.asarray(sb.get("dt", 1.0)))
    except (TypeError, ValueError):
        return 1.0


def conv2d_coo(weight, in_shape, stride=1, padding=0, dilation=1, groups=1) -> tuple[Coo, tuple]:
    """Unroll a 2-D cross-correlation (PyTorch/NIR semantics) to a CHW x CHW matrix."""
    w = np.asarray(weight, dtype=np.float64)
    co, cig, kh, kw = w.shape
    c, h, wd = (int(s) for s in in_shape)
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    if isinstance(padding, (str, bytes)):
        pad = padding.decode() if isinstance(padding, bytes) else padding
        if pad == "valid":
            ph = pw = 0
            ho = (h - dh * (kh - 1) - 1) // sh + 1
            wo = (wd - dw * (kw - 1) - 1) // sw + 1
        else:  # same (PyTorch: left = total // 2)
            ph, pw = dh * (kh - 1) // 2, dw * (kw - 1) // 2
            ho, wo = h, wd
    else:
        ph, pw = _pair(padding)
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if cig * groups != c or co % groups:
        raise ValueError(f"conv weight {w.shape} with groups={groups} does not fit input {in_shape}")
    opg = co // groups
    o = np.arange(co)[:, None, None, None, None, None]
    ci = (o // opg) * cig + np.arange(cig)[None, :, None, None, None, None]
    ky = np.arange(kh)[None, None, :, None, None, None]
    kx = np.arange(kw)[None, None, None, :, None, None]
    oy = np.arange(ho)[None, None, None, None, :, None]
    ox = np.arange(wo)[None, None, None, None, None, :]
    iy = oy * sh - ph + ky * dh
    ix = ox * sw - pw + kx * dw
    full = (co, cig, kh, kw, ho, wo)
    vals = np.broadcast_to(w[:, :, :, :, None, None], full)
    ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < wd) & (w[:, :, :, :, None, None] != 0)
    ok = np.broadcast_to(ok, full)
    rows = np.broadcast_to((o * ho + oy) * wo + ox, full)[ok]
    cols = np.broadcast_to((ci * h + iy) * wd + ix, full)[ok]
    m = Coo(rows.astype(np.int64), cols.astype(np.int64), vals[ok].copy(), (co * ho * wo, c * h * wd))
    return m, (co, ho, wo)


def pool2d_coo(kernel, stride, padding, in_shape, average: bool) -> tuple[Coo, tuple]:
    """Sum (or average, padding counted) pooling as a CHW x CHW matrix."""
    c, h, wd = (int(s) for s in in_shape)
    kh, kw = _pair(kernel)
    sh, sw = _pair(stride if stride is not None else kernel)
    ph, pw = _pair(padding if padding is not None else 0)
    ho = (h + 2 * ph - kh) // sh + 1
    wo = (wd + 2 * pw - kw) // sw + 1
    ch = np.arange(c)[:, None, None, None, None]
    ky = np.arange(kh)[None, :, None, None, None]
    kx = np.arange(kw)[None, None, :, None, None]
    oy = np.arange(ho)[None, None, None, :, None]
    ox = np.arange(wo)[None, None, None, None, :]
    iy = oy * sh - ph + ky
    ix = ox * sw - pw + kx
    full = (c, kh, kw, ho, wo)
    ok = np.broadcast_to((iy >= 0) & (iy < h) & (ix >= 0) & (ix < wd), full)
    rows = np.broadcast_to((ch * ho + oy) * wo + ox, full)[ok]
    cols = np.broadcast_to((ch * h + iy) * wd + ix, full)[ok]
    v = 1.0 / (kh * kw) if average else 1.0
    m = Coo(rows.astype(np.int64), cols.astype(np.int64), np.full(rows.size, v), (c * ho * wo, c * h * wd))
    return m, (c, ho, wo)


def _flatten_shape(shape, start_dim, end_dim):
    shape = [int(s) for s in shape]
    n = len(shape)
    # NIR node shapes carry no batch dimension, but exporters write torch's start_dim=1.
    # Either way the flat CHW order is unchanged; only the nominal shape differs.
    s = int(start_dim) % n if n else 0
    e = int(end_dim) % n if n else 0
    if s > e:
        return tuple(shape)
    return tuple(shape[:s] + [int(np.prod(shape[s:e + 1]))] + shape[e + 1:])


def synaptic_op(node, in_shape: tuple) -> tuple[Coo, np.ndarray, tuple]:
    """(matrix, bias, out_shape) of one stateless synaptic node over flattened CHW vectors."""
    kind = type(node).__name__
    n_in = int(np.prod(in_shape))
    if kind in ("Affine", "Linear"):
        w = np.asarray(node.weight, dtype=np.float64)
        if w.ndim != 2 or w.shape[1] != n_in:
            raise ValueError(f"{kind} weight {w.shape} does not fit input shape {tuple(in_shape)} "
                             "(only 1-D inputs or fully flattened inputs are supported)")
        b = np.zeros(w.shape[0]) if kind == "Linear" else _param(node, "bias", (w.shape[0],), 0.0)
        return Coo.from_dense(w), b, (w.shape[0],)
    if kind == "Scale":
        s = _param(node, "scale", tuple(int(x) for x in in_shape))
        return Coo.diag(s), np.zeros(n_in), tuple(in_shape)
    if kind == "Identity":
        return Coo.diag(np.ones(n_in)), np.zeros(n_in), tuple(in_shape)
    if kind == "Flatten":
        out = _flatten_shape(in_shape, getattr(node, "start_dim", 0), getattr(node, "end_dim", -1))
        return Coo.diag(np.ones(n_in)), np.zeros(n_in), out
    if kind == "Conv2d":
        if len(in_shape) != 3:
            raise ValueError(f"Conv2d needs a (C, H, W) input, got {tuple(in_shape)}")
        m, out = conv2d_coo(node.weight, in_shape, node.stride, node.padding, node.dilation,
                            int(getattr(node, "groups", 1) or 1))
        b = np.repeat(_param(node, "bias", (out[0],), 0.0), out[1] * out[2])
        return m, b, out
    if kind in ("SumPool2d", "AvgPool2d"):
        if len(in_shape) != 3:
            raise ValueError(f"{kind} needs a (C, H, W) input, got {tuple(in_shape)}")
        m, out = pool2d_coo(node.kernel_size, node.stride, node.padding, in_shape, kind == "AvgPool2d")
        return m, np.zeros(m.shape[0]), out
    raise ValueError(f"{kind} is not a synaptic node")


# ----------------------------------------------------------------------------- neurons


@dataclass
class NeuronParams:
    """Folded Lava LIF parameters of one population (vth = 1; du = 1 except CubaLIF)."""

    dv: float
    gain: np.ndarray        # per-neuron factor applied to every incoming weight row (dt*r/theta or dv*r/theta)
    bias_extra: np.ndarray  # folded leak term dv*v_leak/theta (added to the chain bias after gain)
    inv_theta: np.ndarray   # 1/theta
    v_init: np.ndarray      # initial membrane / theta
    amplitude: np.ndarray   # value an output spike carries
    reset: str
    du: float = 1.0
    vth: float = 1.0        # float plan: nextafter(1, 0) reads a '>=' test exactly (v > vth)
    threshold_test: str = "gt"
    approximations: tuple = ()  # what --allow-reset-to-zero changed (library profiles)
    readout: bool = False   # an LI / CubaLI: a LIF that never fires, read as its membrane


def neuron_params(name, node, dt: float, allow_reset_to_zero: bool, problems: list[str]) -> NeuronParams | None:
    kind = type(node).__name__
    shape = tuple(int(s) for s in np.asarray(node.v_threshold).shape) or (1,)
    n = int(np.prod(shape))
    sb = _meta(node)
    before = len(problems)
    reset = _str(sb.get("reset"), "zero")
    if reset not in ("zero", "subtract"):
        problems.append(f"{name}: unknown reset {reset!r}")
    elif reset == "subtract" and not allow_reset_to_zero:
        problems.append(f"{name}: subtractive (soft) reset cannot be expressed by Lava's LIF "
                        "(reset to zero only); pass allow_reset_to_zero=True to run it with reset to zero")
    test = _str(sb.get("threshold_test"), "gt")
    if test != "gt":
        problems.append(f"{name}: threshold test {test!r} is not supported (Lava spikes on v > vth)")
    theta = _param(node, "v_threshold", shape)
    if np.any(~np.isfinite(theta)) or np.any(theta <= 0):
        problems.append(f"{name}: thresholds must be finite and > 0 to be folded into the weights")
    v_reset = getattr(node, "v_reset", None)
    if v_reset is not None and np.any(np.asarray(v_reset, dtype=np.float64) != 0):
        problems.append(f"{name}: v_reset != 0 is not supported (Lava resets v to 0)")
    r = _param(node, "r", shape, 1.0)
    dv = 0.0
    du = 1.0
    extra = np.zeros(n)
    v0 = _param_meta(sb.get("v_init"), shape, 0.0)
    if kind in ("LIF", "CubaLIF"):
        tname = "tau" if kind == "LIF" else "tau_mem"
        tau = _param(node, tname, shape)
        if np.any(tau <= 0) or not np.all(tau == tau[0]):
            problems.append(f"{name}: {tname} must be positive and the same for every neuron (Lava's dv is a scalar)")
        else:
            dv = float(dt / tau[0])
            if not 0 <= dv <= 1:
                problems.append(f"{name}: dv = dt/{tname} = {dt:g}/{tau[0]:g} = {dv:g} is outside [0, 1] "
                                "(Lava's voltage decay; wrong --dt or --profile?)")
        gain = dv * r
        extra = dv * _param(node, "v_leak", shape, 0.0)
    else:
        gain = dt * r
    if kind == "CubaLIF":
        # NIR: tau_syn di/dt = -i + w_in*I. Forward Euler: i <- (1-du) i + du*w_in*I with
        # du = dt/tau_syn, then v <- (1-dv) v + dv (v_leak + r i). Lava's u is dv*r*i/theta:
        # u <- (1-du) u + a_in with a_in = du*w_in*dv*r/theta * I (row-scaled weights).
        ts = _param(node, "tau_syn", shape)
        if np.any(ts <= 0) or not np.all(ts == ts[0]):
            problems.append(f"{name}: tau_syn must be positive and the same for every neuron (Lava's du is a scalar)")
        else:
            du = float(dt / ts[0])
            if not 0 < du <= 1:
                problems.append(f"{name}: dt/tau_syn = {du:g} is outside (0, 1] (Lava's current decay)")
        gain = gain * du * _param(node, "w_in", shape, 1.0)
        if np.any(v0 != 0) and du != 1:
            problems.append(f"{name}: v_init on a CubaLIF with a current decay cannot be expressed "
                            "(Lava injects v_init as a one-step input into u)")
    if len(problems) > before:
        return None
    inv = 1.0 / theta
    amp = _param_meta(sb.get("spike_amplitude"), shape, 1.0)
    return NeuronParams(dv=dv, gain=gain * inv, bias_extra=extra * inv, inv_theta=inv,
                        v_init=v0 * inv, amplitude=amp, reset=reset, du=du)


def _uniform(name, what, a, problems) -> float | None:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    if a.size and not np.all(a == a[0]):
        problems.append(f"{name}: {what} differs between neurons ({a.min():g}..{a.max():g}); Lava's "
                        "decays are one scalar per population")
        return None
    return float(a[0]) if a.size else 0.0


def read_neuron_params(name, node, kp: dict, label: str, dt: float, allow_reset_to_zero: bool,
                       problems: list[str]) -> NeuronParams | None:
    """Lava LIF parameters of a neuron read by a library profile (``label``). ``kp`` is the
    eventsim kernel's reading of the node (``kernels._neuron_prepare``): the ONE place where
    a library's conventions (integrator, dt, reset, threshold test, Norse's current jump,
    sinabs' spike mode and floor, SpikingJelly's v(0) = v_reset) are interpreted. Its update

        IF:       v <- v + s*I                               (s = if_scale)
        LIF, LI:  v <- a*v + c*(v_leak + r*I)
        CubaLIF:  i <- a_s*i + c_s*w_in*I ; v <- a*v + c*(v_leak + r*i)        (euler)
                  j = i + w_in*I ; v <- a*v + c*(v_leak + r*j) ; i <- a_s*j    (Norse jump)

    maps onto Lava's u <- (1-du) u + a_in ; v <- (1-dv) v + u + bias in units of the
    distance from v_reset to theta (v' = (v - v_reset) / (theta - v_reset), reset to 0,
    threshold 1): dv = 1 - a, du = 1 - a_s (1 without a current), incoming weight rows
    times c*r (IF: s; CubaLIF: c*r*c_s*w_in, Norse c*r*w_in) / (theta - v_reset), bias
    (c*v_leak - dv*v_reset) / (theta - v_reset), v(0)' = (v_init - v_reset) / (theta - v_reset).
    An LI / CubaLI is the same LIF with no threshold (``readout``: read as membrane; fixed
    point scales it below its threshold, fixedpoint.quantize)."""
    kind = type(node).__name__
    readout = kind in ("LI", "CubaLI")
    shape = tuple(int(s) for s in np.shape(kp["v_init"])) or (1,)
    n = int(np.prod(shape))
    before = len(problems)
    approx = []

    def flat(v, default=0.0):
        return np.broadcast_to(np.asarray(default if v is None else v, dtype=np.float64), shape).reshape(-1)

    if not readout:
        how = ("; --allow-reset-to-zero runs it as Lava's neuron (one spike, reset to 0 in the spiking "
               "step, no floor) and simulate reports the agreement it costs")
        reset = kp["reset"]
        if reset == "window":
            problems.append(f"{name}: count-then-emit windows are not lowered")
        if kp["multi"]:
            (approx.append("MultiSpike run as a single spike") if allow_reset_to_zero else problems.append(
                f"{name}: MultiSpike (floor(v/theta) spikes per step, profile {label}) cannot be expressed "
                "(Lava's LIF emits one spike)" + how))
        if reset == "subtract":
            (approx.append("subtract reset run as reset to zero") if allow_reset_to_zero else problems.append(
                f"{name}: subtract reset (profile {label}) cannot be expressed by Lava's LIF (reset to "
                "zero only)" + how))
        if kp.get("zero_late"):
            (approx.append("reset one step late run as reset in the spiking step") if allow_reset_to_zero
             else problems.append(f"{name}: reset to zero one step late (profile {label}: the whole next "
                                  "step is zeroed) cannot be expressed by Lava's LIF" + how))
        if kp["v_floor"] is not None:
            (approx.append("membrane floor dropped") if allow_reset_to_zero else problems.append(
                f"{name}: a membrane floor (min_v_mem, profile {label}) has no Lava equivalent" + how))
        theta = flat(kp["thr"])
        vr = flat(kp["v_reset"])
    else:
        theta = np.ones(n)
        vr = np.zeros(n)
    span = theta - vr
    if np.any(~np.isfinite(span)) or np.any(span <= 0):
        problems.append(f"{name}: v_threshold - v_reset must be finite and > 0 to be folded into the weights")
    dv, du = 0.0, 1.0
    extra = np.zeros(n)
    if kind == "IF":
        gain = flat(kp["if_scale"])
    else:
        a = _uniform(name, "the voltage decay", kp["a"], problems)
        if a is not None:
            dv = 1.0 - a
            if not 0 <= dv <= 1:
                tk = "tau" if kind in ("LIF", "LI") else "tau_mem"
                tau = np.asarray(getattr(node, tk), dtype=np.float64).reshape(-1)
                problems.append(f"{name}: dv = 1 - decay = {dv:g} (dt = {dt:g}, {tk} = {tau[0]:g}) is outside "
                                "[0, 1] (Lava's voltage decay; wrong --dt or --profile?)")
        c = flat(kp["c"])
        gain = c * flat(kp["r"], 1.0)
        extra = c * flat(kp.get("v_leak")) - dv * vr
        if kind in ("CubaLIF", "CubaLI"):
            a_s = _uniform(name, "the current decay", kp["a_syn"], problems)
            if a_s is not None:
                du = 1.0 - a_s
                if not 0 < du <= 1:
                    ts = np.asarray(node.tau_syn, dtype=np.float64).reshape(-1)
                    problems.append(f"{name}: du = 1 - current decay = {du:g} (dt = {dt:g}, tau_syn = {ts[0]:g}) "
                                    "is outside (0, 1] (Lava's current decay)")
            w_in = flat(kp["w_in"], 1.0)
            gain = gain * w_in * (1.0 if kp["jump"] else flat(kp["c_syn"]))
    v0 = (flat(kp["v_init"]) - vr)
    if np.any(v0 != 0) and du != 1:
        problems.append(f"{name}: a membrane that does not start at v_reset on a CubaLIF with a current decay "
                        "cannot be expressed (Lava injects v(0) as a one-step input into u)")
    if len(problems) > before:
        return None
    inv = 1.0 / span
    test = "gt" if readout else kp["threshold_test"]
    vth = float(np.inf) if readout else (float(np.nextafter(1.0, 0.0)) if test == "ge" else 1.0)
    amp = flat(kp.get("spike_amplitude"), 1.0)
    return NeuronParams(dv=dv, gain=gain * inv, bias_extra=extra * inv, inv_theta=inv, v_init=v0 * inv,
                        amplitude=amp, reset="zero" if readout else kp["reset"], du=du, vth=vth,
                        threshold_test=test, approximations=tuple(approx), readout=readout)


def reading(graph) -> tuple:
    """(profile, dt) a graph is lowered with: the library profile it was adapted with
    (``eventsim.adapt_graph`` marks the graph) and the run's dt (``with_run_dt``), else
    (None, the spikebridge metadata dt)."""
    md = getattr(graph, "metadata", None) or {}
    label = md.get(ADAPTED_KEY) if isinstance(md, dict) else None
    if label:
        from spikebridge.hardware.eventsim.profiles import get_profile
        prof = get_profile(label)
        if not prof.honour_metadata:
            dt = md.get(RUN_DT_KEY)
            return prof, float(prof.default_dt if dt is None else dt)
    return None, graph_dt(graph)


def read_as(graph, profile=None, dt: float | None = None):
    """``graph`` read with ``profile`` (a library profile: adapted by eventsim.adapt_graph,
    the one place a library's graph-level conventions are applied) and run with ``dt``
    (overrides the profile's and the graph's); what ``lower`` then lowers. Without a
    library profile the dt goes into the spikebridge metadata, as ``--dt`` always did."""
    from spikebridge.hardware.eventsim.adapt import adapt_graph
    from spikebridge.hardware.eventsim.profiles import get_profile
    if profile not in (None, "spikebridge"):
        prof = get_profile(profile)
        if prof.honour_metadata:  # loihi-fixed etc.: read as ours
            profile = None
        else:
            graph = adapt_graph(graph, prof)
            md = graph.metadata if isinstance(graph.metadata, dict) else {}
            if md.get(ADAPTED_KEY) != prof.label:  # adapt_graph marks only graphs it changed
                graph = copy.copy(graph)
                graph.metadata = {**md, ADAPTED_KEY: prof.label}
    if dt is None:
        return graph
    dt = float(dt)
    if not (np.isfinite(dt) and dt > 0):
        raise UnsupportedError(f"dt {dt!r} must be finite and > 0", place="--dt")
    md = dict(graph.metadata or {}) if isinstance(graph.metadata, dict) else {}
    if profile in (None, "spikebridge"):
        sb = dict(md.get(META_KEY) or {})
        sb["dt"] = dt
        md[META_KEY] = sb
    else:
        md[RUN_DT_KEY] = dt
    g = copy.copy(graph)
    g.metadata = md
    return g


def _param_meta(v, shape, default) -> np.ndarray:
    a = np.asarray(default if v is None else v, dtype=np.float64)
    return np.broadcast_to(a, shape).astype(np.float64).reshape(-1)


# ----------------------------------------------------------------------------- graph


@dataclass
class Plan:
    meta: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # main-process only (not written): node matrices for counting, neuron params
    ops: dict[str, tuple[Coo, np.ndarray]] = field(default_factory=dict)
    shapes: dict[str, tuple] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    preds: dict[str, list[str]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    def write(self, directory: str | Path) -> None:
        d = Path(directory)
        (d / "plan.json").write_text(json.dumps(self.meta))
        np.savez(d / "plan.npz", **self.arrays)


def _back_edges(names, succs) -> set[tuple[str, str]]:
    """Edges that close a cycle (to a node on the depth-first stack), visiting nodes in file
    order from the nodes without inputs: a back edge carries the previous step's value."""
    from spikebridge.hardware.graph import back_edges

    roots = [n for n in names if not any(n in succs[m] for m in names)] + list(names)
    return set(back_edges(roots, succs))


def _topo(names, preds, succs, problems, back=frozenset()) -> list[str]:
    indeg = {n: sum((p, n) not in back for p in preds[n]) for n in names}
    order = [n for n in names if indeg[n] == 0]
    i = 0
    while i < len(order):
        for s in succs[order[i]]:
            if (order[i], s) in back:
                continue
            indeg[s] -= 1
            if indeg[s] == 0:
                order.append(s)
        i += 1
    if len(order) < len(names):
        cyc = sorted(n for n in names if indeg[n] > 0)
        problems.append(f"graph has a cycle through {', '.join(cyc)} (only a population's connection back to itself is lowered to Lava)")
    return order


def lower(graph, timesteps: int, allow_reset_to_zero: bool = False, precision: str = "float",
          window: int | None = None) -> Plan:
    """Lower ``graph`` to a Plan for ``timesteps`` steps per sample; raises UnsupportedError.

    A graph read with a library profile (``read_as(graph, "snntorch:reset=zero", dt)``; the
    backends do it with ``--profile``/``--dt``) has its neurons read by the profile
    (``read_neuron_params``); LI / CubaLI nodes become LIFs that never fire, read as membrane
    (readout kind "membrane"). A recurrent connection (a chain of synaptic nodes from a
    population back to itself, a NIR back edge) is a Dense from the population to itself:
    Lava's one step of delay is the back edge's t-1, and its Affine bias is in the
    population's bias from t = 0, as eventsim and the libraries have it."""
    problems: list[str] = []
    prof, dt = reading(graph)
    if precision not in ("float", "fixed"):
        problems.append(f"precision {precision!r} is not 'float' or 'fixed' (fixed: quantise this "
                        "float plan with spikebridge.hardware.loihi.fixedpoint.quantize)")
    nodes = dict(graph.nodes)
    names = list(nodes)
    kinds = {n: type(nodes[n]).__name__ for n in names}
    preds: dict[str, list[str]] = {n: [] for n in names}
    succs: dict[str, list[str]] = {n: [] for n in names}
    for src, dst in graph.edges:
        s, d = src.split(".")[0] if src not in nodes else src, dst.split(".")[0] if dst not in nodes else dst
        if s not in nodes or d not in nodes:
            problems.append(f"edge {src} -> {dst} names a node that does not exist")
            continue
        preds[d].append(s)
        succs[s].append(d)
    neuron_kinds = NEURON + (READOUT_NEURON if prof is not None else ())
    for n in names:
        k = kinds[n]
        if k not in SYNAPTIC + neuron_kinds + IO:
            problems.append(f"{n}: node type {k} is not supported by the Lava backend"
                            + (f" ({HINTS[k]})" if k in HINTS else ""))
    inputs = [n for n in names if kinds[n] == "Input"]
    outputs = [n for n in names if kinds[n] == "Output"]
    if len(inputs) != 1:
        problems.append(f"the Lava backend needs exactly one Input node, found {len(inputs)}")
    if not outputs:
        problems.append("the graph has no Output node")
    back = _back_edges(names, succs)
    order = _topo(names, preds, succs, problems, back)
    if problems:
        raise UnsupportedError("; ".join(problems), place="lava backend")
    fwd = {n: [p for p in preds[n] if (p, n) not in back] for n in names}
    kread: dict[str, dict] = {}
    if prof is not None:  # the eventsim kernels' reading of every neuron (one interpretation)
        from spikebridge.hardware.eventsim.kernels import Context, _neuron_prepare
        from spikebridge.hardware.graph import analyse
        info = analyse(graph)
        ctx = Context(info=info, profile=prof, dt=dt)
        kread = {n: _neuron_prepare(nodes[n], n, ctx) for n in names if kinds[n] in neuron_kinds}
    inp = inputs[0]
    shapes: dict[str, tuple] = {}
    ops: dict[str, tuple[Coo, np.ndarray]] = {}
    nparams: dict[str, NeuronParams] = {}
    t_in = nodes[inp].input_type.get("input") if isinstance(nodes[inp].input_type, dict) else None
    if t_in is None:
        raise UnsupportedError("the Input node has no shape", place=inp)
    shapes[inp] = tuple(int(s) for s in np.asarray(t_in).reshape(-1))
    for n in order:
        if n == inp:
            continue
        k = kinds[n]
        ps = fwd[n]
        if not ps:
            problems.append(f"{n}: node has no input edge")
            continue
        pshapes = [shapes.get(p) for p in ps]
        if any(s is None for s in pshapes):
            continue  # an upstream problem was reported already
        sizes = {int(np.prod(s)) for s in pshapes}
        if len(sizes) != 1:
            problems.append(f"{n}: inputs of different sizes {pshapes} are summed")
            continue
        ishape = pshapes[0]
        if k in SYNAPTIC:
            try:
                m, b, out = synaptic_op(nodes[n], ishape)
            except (ValueError, TypeError, AttributeError) as e:
                problems.append(f"{n}: {e}")
                continue
            ops[n] = (m, b)
            shapes[n] = tuple(int(s) for s in out)
        elif k in neuron_kinds:
            p = (read_neuron_params(n, nodes[n], kread[n], prof.label, dt, allow_reset_to_zero, problems)
                 if prof is not None else neuron_params(n, nodes[n], dt, allow_reset_to_zero, problems))
            if p is None:
                continue
            if p.gain.size != int(np.prod(ishape)):
                problems.append(f"{n}: {p.gain.size} neurons but {int(np.prod(ishape))} inputs")
                continue
            nparams[n] = p
            shp = tuple(int(s) for s in np.shape(kread[n]["v_init"] if n in kread else nodes[n].v_threshold)) or (1,)
            shapes[n] = shp if int(np.prod(shp)) == int(np.prod(ishape)) and len(shp) > 0 else ishape
        elif k == "Output":
            shapes[n] = ishape
    if problems:
        raise UnsupportedError("; ".join(problems), place="lava backend")

    # Which "source" each synaptic region hangs from, and the chains (paths) into each sink.
    def is_source(n):
        return kinds[n] == "Input" or kinds[n] in neuron_kinds

    def paths_into(n):
        """All synaptic paths ending at n's inputs: list of (source, [syn nodes from source to n])."""
        out = []
        for p in preds[n]:
            if is_source(p):
                out.append((p, []))
            else:
                for src, chain in paths_into(p):
                    out.append((src, chain + [p]))
        return out

    bias_memo: dict[str, np.ndarray] = {}

    def bias_at(n) -> np.ndarray:
        """Output of synaptic node n when every source is zero."""
        if n not in bias_memo:
            m, b = ops[n]
            acc = np.zeros(m.shape[1])
            for p in preds[n]:
                if not is_source(p) and (p, n) not in back:
                    acc = acc + bias_at(p)
            bias_memo[n] = m.matvec(acc) + b
        return bias_memo[n]

    depth: dict[str, int] = {inp: 0}
    arrays: dict[str, np.ndarray] = {}
    conns = []
    pops = []
    readouts = []
    sinks = [n for n in order if kinds[n] in neuron_kinds or kinds[n] == "Output"]
    for n in sinks:
        paths = paths_into(n)
        if kinds[n] == "Output" and len(preds[n]) == 1 and is_source(preds[n][0]):
            src = preds[n][0]
            if kinds[src] == "Input":
                problems.append(f"{n}: Output fed straight from Input is not a network")
                continue
            kind = "membrane" if kinds[src] in READOUT_NEURON else "spikes"
            readouts.append({"name": n, "kind": kind, "source": src, "size": int(np.prod(shapes[n])),
                             "shape": list(shapes[n]), "depth": depth[src]})
            continue
        size = int(np.prod(shapes[n]))
        direct = [src for src, chain in paths if len(chain) == 0]
        bad = [s for s in direct if int(np.prod(shapes[s])) != size]
        if bad:
            problems.append(f"{n}: fed directly by {', '.join(bad)} of a different size")
            continue
        # Every (source, target) pair is one Lava connection, i.e. one step of delay; a target
        # fed by sources of different depth (skip connections) sits behind the deepest one,
        # and the connections from shallower sources are delayed by the difference
        # (DelayDense/DelaySparse with delays = that difference: exact for any payload).
        loops = sorted({src for src, _ in paths if src not in depth})
        if any(src != n for src in loops):
            problems.append(f"{n}: fed back by {', '.join(s for s in loops if s != n)} (a back edge from a "
                            "later population; only a population's connection to itself is lowered)")
            continue
        if n in loops and kinds[n] in READOUT_NEURON:
            problems.append(f"{n}: a recurrent leaky integrator is not lowered")
            continue
        d = max(depth[src] for src, _ in paths if src != n) + 1
        depth[n] = d
        bias = np.zeros(size)
        for p in preds[n]:
            if not is_source(p):
                bias = bias + bias_at(p)
        syn_bias = None
        if kinds[n] in neuron_kinds:
            prm = nparams[n]
            row_scale = prm.gain
            if prm.du != 1 and np.any(bias != 0):
                # CubaLIF: a synaptic bias feeds the current (it is filtered by du like any
                # input), so it cannot be the neuron's bias: a constant source (BIAS_SOURCE,
                # 1 at every step) feeds it through its own connection.
                syn_bias = bias * prm.gain
                bias = prm.bias_extra.copy()
            else:
                bias = bias * prm.gain + prm.bias_extra
        else:
            row_scale = None
        # group paths by source
        by_src: dict[str, list[list[str]]] = {}
        for src, chain in paths:
            by_src.setdefault(src, []).append(chain)
        for src, chains in by_src.items():
            if kinds[src] in READOUT_NEURON:
                problems.append(f"{src}: a leaky integrator (no spikes) feeds {n}; it is lowered only as a "
                                "membrane readout into an Output")
                continue
            cid = f"c{len(conns)}"
            terms = []
            for j, chain in enumerate(chains):
                factors = []
                if kinds[src] in neuron_kinds:
                    amp = nparams[src].amplitude
                    if not np.all(amp == 1):
                        factors.append(Coo.diag(amp))
                factors += [ops[c][0] for c in chain]
                if not chain:  # a direct edge (identity shortcut): an identity connection
                    factors.append(Coo.diag(np.ones(size)))
                if row_scale is not None:
                    factors.append(Coo.diag(row_scale))
                keys = []
                for i, f in enumerate(factors):
                    key = f"{cid}_t{j}_f{i}"
                    arrays[key + "_rows"] = f.rows
                    arrays[key + "_cols"] = f.cols
                    arrays[key + "_vals"] = f.vals
                    arrays[key + "_shape"] = np.asarray(f.shape, dtype=np.int64)
                    keys.append(key)
                terms.append(keys)
            conn = {"id": cid, "source": src, "target": n, "terms": terms,
                    "chains": chains, "rows": size, "cols": int(np.prod(shapes[src])),
                    "delay": 0 if src == n else int(d - 1 - depth[src])}
            if src == n:  # Lava's one step of delay is the back edge's t-1
                conn["recurrent"] = True
            conns.append(conn)
        if syn_bias is not None:
            cid = f"c{len(conns)}"
            f = Coo.from_dense(syn_bias.reshape(-1, 1))
            key = f"{cid}_t0_f0"
            arrays[key + "_rows"], arrays[key + "_cols"], arrays[key + "_vals"] = f.rows, f.cols, f.vals
            arrays[key + "_shape"] = np.asarray(f.shape, dtype=np.int64)
            # a constant needs no delay: it arrives from Lava step 2 on, before any window starts
            conns.append({"id": cid, "source": BIAS_SOURCE, "target": n, "terms": [[key]], "chains": [],
                          "rows": size, "cols": 1, "delay": 0})
        if kinds[n] in neuron_kinds:
            prm = nparams[n]
            arrays[f"{n}__bias"] = bias
            arrays[f"{n}__vinit"] = prm.v_init * (1.0 - prm.dv)
            pop = {"name": n, "size": size, "shape": list(shapes[n]), "du": prm.du, "dv": prm.dv,
                   "kind": kinds[n], "vth": prm.vth, "depth": d, "has_vinit": bool(np.any(prm.v_init != 0)),
                   "reset": prm.reset}
            if prm.threshold_test != "gt":
                pop["threshold_test"] = prm.threshold_test
            if prm.approximations:
                pop["approximations"] = list(prm.approximations)
            if prm.readout:
                pop["readout"] = True
            if n in loops:
                pop["recurrent"] = True
            pops.append(pop)
        else:
            arrays[f"{n}__bias"] = bias
            readouts.append({"name": n, "kind": "analog", "size": size, "shape": list(shapes[n]), "depth": d})
    if problems:
        raise UnsupportedError("; ".join(problems), place="lava backend")

    max_depth = max([p["depth"] for p in pops] + [r["depth"] for r in readouts] + [0])
    T = int(timesteps)
    P = int(window) if window is not None else T
    if any(p.get("recurrent") for p in pops):
        # a recurrent population's spike at a window's last step would reach the next
        # sample's first step (LIFReset zeroes u and v, then adds a_in): leave idle steps
        # after every sample, the last of which gates the population (the worker's GATE)
        P = max(P, T + max_depth + 1)
    if P < T:
        raise ValueError(f"window {P} < timesteps {T}")
    meta = {
        "version": PLAN_VERSION,
        "precision": "float",
        "timesteps": T,
        "window": P,
        "max_depth": max_depth,
        "dt": dt,
        "profile": prof.label if prof is not None else None,
        "input": {"name": inp, "size": int(np.prod(shapes[inp])), "shape": list(shapes[inp])},
        "populations": pops,
        "connections": [{k: v for k, v in c.items() if k != "chains"} for c in conns],
        "readouts": readouts,
        "num_message_bits": 24,
    }
    return Plan(meta=meta, arrays=arrays, ops=ops, shapes=shapes, kinds=kinds, preds=preds, order=order)
