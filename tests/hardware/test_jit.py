"""The compiled event loops (hardware/jit.py) against the scipy loops they replace, bit for
bit, and the switch that turns them off.

jit.py claims bit-identical results on every CPU: each output element adds its events'
terms one at a time, in input order, with no fused multiply-add. Every check below uses
real-valued (non-dyadic) weights and non-unit event values, so a different order of
summation or a fused multiply-add changes low bits and fails ``np.array_equal``; the
first test shows that the data is order-sensitive, so the equalities here can fail.

The compiled loops are built directly (jit._build) and swapped in and out of
jit._KERNELS, so these tests run the same whatever SPIKEBRIDGE_NO_JIT says; numba is a
declared dependency, so a missing numba fails them (never skips). A spy records which loop
ran, so a caller that stops using the loops cannot make a comparison pass vacuously.

KNOWN MISMATCH OFF x86-64 (not seen on x86; these tests should fail on ARM; do not weaken them):
scipy 1.17.1's aarch64 wheels (manylinux and macOS arm64) compile csr_matvecs<int, float>
and <int, double> with fused multiply-adds (fmla/fmadd, no fmul/fadd in their disassembly),
while the numba loops round the product and the sum separately (their x86 code has no FMA
even on an FMA-capable CPU). On ARM the jit and scipy paths then differ in the last bits for
non-unit event values (analog inputs, csr_add, value_add, the conv path's analog cases);
binary events (a product by 1.0) stay identical. The x86-64 wheel's _sparsetools has no FMA.
"""
from __future__ import annotations

import collections
import os
import subprocess
import sys
import zlib
from pathlib import Path

import nir
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse._sparsetools import csr_matvecs

from spikebridge.hardware import jit
from spikebridge.hardware.eventsim import kernels, simulate
from spikebridge.hardware.eventsim import simulator as sim
from spikebridge.hardware.eventsim.profiles import get_profile
from spikebridge.hardware.graph import analyse
from tests.hardware.test_eventsim_fast import _assert_same_trace, _forced, _spikes, conv_net, dense_net

REPO = Path(__file__).resolve().parents[2]
SB = "spikebridge"
WIDTHS = (1, 7, 64, 513)  # output widths: scalar tail, one partial vector, full vectors, odd
FLOATS = (np.float32, np.float64)


class _Spy:
    """The compiled loops, counting the calls of each (proves the compiled path ran)."""

    def __init__(self, loops):
        self.loops, self.calls = loops, collections.Counter()

    def __getattr__(self, name):
        f = getattr(self.loops, name)

        def call(*args):
            self.calls[name] += 1
            return f(*args)
        return call


@pytest.fixture(scope="module")
def loops():
    k = jit._build()
    assert k is not None, "numba is a declared dependency: the compiled loops must build"
    return k


@pytest.fixture
def use_jit(monkeypatch, loops):
    """use_jit(True): callers get the compiled loops (a _Spy, returned); use_jit(False):
    kernels() is None, callers take the scipy path. Restored after the test."""
    def switch(on):
        spy = _Spy(loops) if on else None
        monkeypatch.setattr(jit, "_KERNELS", [spy])
        assert jit.kernels() is spy
        return spy
    return switch


def _values(rng, shape, dtype):
    """Non-unit, non-dyadic values of both signs, magnitudes spread over ~3 decades."""
    v = rng.normal(size=shape) * np.exp(rng.uniform(-3.5, 3.5, size=shape))
    return v.astype(dtype)


# (rows, inputs, density, empty-row fraction): empty rows, zero events, one column, wide rows
EVENT_SHAPES = [(0, 5, 0.5, 0.0), (9, 1, 0.6, 0.0), (16, 40, 0.0, 0.0), (40, 130, 0.15, 0.4),
                (5, 600, 0.9, 0.2)]


def _event_input(rng, rows, cols, density, empty):
    """A bool event mask with the given density and whole empty rows."""
    x = rng.random((rows, cols)) < density
    x[rng.random(rows) < empty] = False
    return x


def _cases(seed):
    rng = np.random.default_rng(seed)
    for dtype in FLOATS:
        for n in WIDTHS:
            for rows, cols, density, empty in EVENT_SHAPES:
                yield rng, dtype, n, _event_input(rng, rows, cols, density, empty)


# -- the data is order-sensitive --------------------------------------------------------------

def test_the_data_makes_the_order_of_summation_visible():
    """Summing the same events in reverse order changes results in both float types: the
    equalities below would catch a loop that reorders its events (or fuses its adds)."""
    rng = np.random.default_rng(0)
    for dtype in FLOATS:
        x = _event_input(rng, 40, 130, 0.15, 0.0)
        v = np.where(x, _values(rng, x.shape, dtype), 0).astype(dtype)
        w = _values(rng, (130, 64), dtype)
        fwd = sp.csr_matrix(v) @ w
        rev = sp.csr_matrix(v[:, ::-1]) @ w[::-1]
        assert not np.array_equal(fwd, rev), dtype
        if dtype == np.float32:  # one rounding per term (a fused multiply-add) differs too
            fma = np.zeros((40, 64), np.float32)
            for k in range(130):  # exact float64 product and sum, rounded once to float32
                fma = (fma + v[:, k:k + 1].astype(np.float64) * w[k].astype(np.float64)).astype(np.float32)
            assert not np.array_equal(fwd, fma)


# -- each loop against the scipy computation it replaces --------------------------------------

@pytest.mark.parametrize("index", [np.int32, np.int64])
def test_csr_add_equals_scipy(loops, index):
    """csr_add == scipy's CSR x dense product (from zero) and == csr_matvecs (adding into a
    nonzero output), also on an offset row-pointer slice (absolute offsets, as the conv
    path passes it)."""
    for rng, dtype, n, x in _cases(1):
        a = sp.csr_matrix(np.where(x, _values(rng, x.shape, dtype), 0).astype(dtype))
        ip, ind = a.indptr.astype(index), a.indices.astype(index)
        w = _values(rng, (x.shape[1], n), dtype)
        y = np.zeros((x.shape[0], n), dtype)
        loops.csr_add(ip, ind, a.data, w, y)
        ref = a @ w
        assert ref.dtype == dtype and np.array_equal(y, ref), (dtype, n, x.shape)
        y0 = _values(rng, y.shape, dtype)
        y, ref = y0.copy(), y0.copy()
        loops.csr_add(ip, ind, a.data, w, y)
        csr_matvecs(x.shape[0], x.shape[1], n, ip, ind, a.data, w.reshape(-1), ref.reshape(-1))
        assert np.array_equal(y, ref), (dtype, n, x.shape)
        if x.shape[0] >= 4:  # rows 2.. of the output from rows 2.. of A: indptr starts past 0
            y, ref = y0[2:].copy(), y0[2:].copy()
            loops.csr_add(ip[2:], ind, a.data, w, y)
            csr_matvecs(x.shape[0] - 2, x.shape[1], n, ip[2:], ind, a.data, w.reshape(-1), ref.reshape(-1))
            assert np.array_equal(y, ref), (dtype, n, x.shape)


def test_mask_add_and_value_add_equal_scipy(loops):
    """mask_add (bool events) and value_add (valued events) == the events as a scipy CSR
    matrix in the weights' dtype times the weights."""
    for rng, dtype, n, x in _cases(2):
        w = _values(rng, (x.shape[1], n), dtype)
        y = np.zeros((x.shape[0], n), dtype)
        loops.mask_add(x, w, y)
        assert np.array_equal(y, sp.csr_matrix(x.astype(dtype)) @ w), (dtype, n, x.shape)
        v = np.where(x, _values(rng, x.shape, dtype), 0).astype(dtype)
        y = np.zeros((x.shape[0], n), dtype)
        loops.value_add(v, w, y)
        assert np.array_equal(y, sp.csr_matrix(v) @ w), (dtype, n, x.shape)
        if x.shape[1] > 2:  # a strided (non-contiguous) input, as a view of a larger array
            y = np.zeros((x.shape[0], n), dtype)
            loops.value_add(v[:, ::2], w[::2], y)
            assert np.array_equal(y, sp.csr_matrix(v[:, ::2]) @ w[::2]), (dtype, n, x.shape)


def test_subnormal_terms_are_not_flushed(loops):
    """Products and sums in the subnormal range, equal to scipy's: a loop built to flush
    subnormals to zero (a denormal-flushing compile flag) would lose them. (Both paths run
    in one process under one FP environment: this checks the loops' build, not the CPU's
    flush mode.)"""
    rng = np.random.default_rng(3)
    for dtype, tiny in ((np.float32, 1e-41), (np.float64, 1e-312)):
        x = _event_input(rng, 12, 50, 0.4, 0.0)
        v = np.where(x, _values(rng, x.shape, dtype), 0).astype(dtype)
        w = (_values(rng, (50, 7), np.float64) * tiny).astype(dtype)
        assert np.any((w != 0) & (np.abs(w) < np.finfo(dtype).tiny))
        for name, xin in (("mask_add", x), ("value_add", v)):
            y = np.zeros((12, 7), dtype)
            getattr(loops, name)(xin, w, y)
            ref = sp.csr_matrix(xin.astype(dtype)) @ w
            assert np.any(ref != 0) and np.array_equal(y, ref), (name, dtype)


def test_integer_sums_wrap_like_numpy_int32(loops):
    """int16 weights (and int16 values) into an int32 output: every sum wraps modulo 2^32
    exactly as numpy's int32 sum of the same terms; sums beyond int32 are forced."""
    rng = np.random.default_rng(4)
    big = np.int16(32767)
    # mask_add: 70000 events of one sign in row 0 exceed 2^31 (|w| >= 30000 each)
    K = 70000
    x = _event_input(rng, 3, K, 0.5, 0.0)
    x[0] = True
    w = rng.integers(30000, 32768, size=(K, 5)).astype(np.int16)
    w[:, 1] = -w[:, 1]
    w[:, 4] = rng.integers(-32768, 32768, size=K)
    y = np.zeros((3, 5), np.int32)
    loops.mask_add(x, w, y)
    exact = x.astype(np.int64) @ w.astype(np.int64)
    assert np.any(exact != exact.astype(np.int32)), "the case must overflow int32"
    assert np.array_equal(y, x.astype(np.int32) @ w.astype(np.int32))
    # value_add: products near 2^30, a few events wrap
    x = _event_input(rng, 20, 64, 0.3, 0.2)
    v = np.where(x, rng.integers(-32768, 32768, size=x.shape), 0).astype(np.int16)
    v[0, :8] = big
    for n in WIDTHS:
        w = rng.integers(-32768, 32768, size=(64, n)).astype(np.int16)
        w[:8] = big
        y = np.zeros((20, n), np.int32)
        loops.value_add(v, w, y)
        exact = v.astype(np.int64) @ w.astype(np.int64)
        assert np.any(exact != exact.astype(np.int32))
        assert np.array_equal(y, v.astype(np.int32) @ w.astype(np.int32)), n


# -- the callers with the loops on and off ------------------------------------------------------

@pytest.mark.parametrize("x_dtype", [bool, np.float32, np.float64])
@pytest.mark.parametrize("w_dtype", FLOATS)
def test_event_matmul_jit_equals_scipy_path(use_jit, x_dtype, w_dtype):
    """event_matmul with the compiled loops == its scipy path (events_csr @ wt), with and
    without the caller's nonzero mask, in the weights' dtype."""
    for rng, _, n, x in _cases(5):
        xv = x if x_dtype is bool else np.where(x, _values(rng, x.shape, x_dtype), 0).astype(x_dtype)
        w = _values(rng, (x.shape[1], n), w_dtype)
        for mask in (None, x):
            spy = use_jit(True)
            got = kernels.event_matmul(xv, w, mask)
            assert spy.calls["mask_add" if x_dtype is bool else "value_add"] == 1
            use_jit(False)
            ref = kernels.event_matmul(xv, w, mask)
            assert got.dtype == ref.dtype == w_dtype
            assert np.array_equal(got, ref), (n, x.shape, mask is None)


def _conv_params(rng, cin, hw, cout, kernel, stride, pad, dil, groups):
    """Prepared float32 params of one Conv2d (or Conv1d for a 1-tuple hw), real weights."""
    wshape = (cout, cin // groups, *kernel)
    w = rng.normal(size=wshape) * 0.3
    w[rng.random(wshape) < 0.2] = 0.0
    cls = nir.Conv2d if len(hw) == 2 else nir.Conv1d
    conv = cls(input_shape=hw if len(hw) == 2 else hw[0], weight=w, stride=stride, padding=pad,
               dilation=dil, groups=groups, bias=rng.normal(size=cout))
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([cin, *hw])), "conv": conv,
                            "output": nir.Output(None)},
                     edges=[("input", "conv"), ("conv", "output")], type_check=False)
    info = analyse(g)
    ctx = kernels.Context(info=info, profile=get_profile(SB), dt=1.0, precision="float32")
    return kernels.KERNELS[info.types["conv"]].prepare(g.nodes["conv"], "conv", ctx)


def _im2col64(p, w, x2, n):
    """The conv of x2 through weights w in float64 by im2col + BLAS, (rows, positions, C_out)."""
    q = {k: v for k, v in p.items() if k != "_wmats"}
    q.update(w=w, dtype=np.dtype(np.float64))
    y = kernels.conv_forward_im2col(q, x2.astype(np.float64).reshape(n, *p["in_shape"]), bias=False)
    return np.moveaxis(y, 1, -1).reshape(n, -1, y.shape[1])


CONV_CASES = [  # (C_in, spatial, C_out, kernel, stride, padding, dilation, groups)
    (3, (12, 12), 7, (3, 3), 1, 1, 1, 1),
    (16, (9, 11), 64, (3, 3), 2, 1, 1, 1),
    (70, (6, 6), 33, (3, 2), 1, (2, 1), 2, 1),
    (5, (10, 10), 70, (5, 5), 2, 2, (1, 2), 1),
    (8, (8, 8), 12, (3, 3), (1, 2), 0, 1, 2),
    (4, (20,), 9, (3,), 2, 1, 2, 1),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("events", [0.0, 0.005, 0.05, 0.3, "analog"])
def test_conv32_events_jit_equals_scipy_path(use_jit, monkeypatch, case, events):
    """The float32 conv event path compiled (conv_direct: event by event straight from the
    input) == its Python phase-grid tile loop over scipy's csr_matvecs, bit for bit:
    strides 1 and 2, padding, dilation, groups,
    binary and analog events, the caller's mask or none, default and small output tiles."""
    cin, hw, cout, kernel, stride, pad, dil, groups = case
    rng = np.random.default_rng(zlib.crc32(repr((case, events)).encode()))
    p = _conv_params(rng, cin, hw, cout, kernel, stride, pad, dil, groups)
    n = 6
    size = cin * int(np.prod(hw))
    density = 0.1 if events == "analog" else events
    on = rng.random((n, size)) < density
    x2 = np.where(on, _values(rng, on.shape, np.float32), 0) if events == "analog" else on
    x2 = x2.astype(np.float32)
    ref64 = _im2col64(p, p["w"], x2, n)
    for tile_bytes in (kernels._EVENT_TILE_BYTES, 0):  # the scipy loop's tiles; 0: the smallest, 64 rows
        monkeypatch.setattr(kernels, "_EVENT_TILE_BYTES", tile_bytes)
        for mask in (None, on):
            spy = use_jit(True)
            got = kernels._conv32_events(p, x2, mask).copy()  # a view of a reused scratch buffer
            assert spy.calls["conv_direct"] >= 1 and sum(spy.calls.values()) == spy.calls["conv_direct"]
            use_jit(False)
            ref = kernels._conv32_events(p, x2, mask).copy()
            assert got.dtype == ref.dtype == np.float32
            assert np.array_equal(got, ref), (case, events, tile_bytes, mask is None)
    # and both compute the convolution (not two equal wrong answers): float32 rounding of
    # at most fan-in terms, relative to the summed magnitudes
    fan_in = int(np.prod(p["w"].shape[1:]))
    mag = _im2col64(p, np.abs(p["w"]), np.abs(x2), n)
    assert np.all(np.abs(got - ref64) <= fan_in * 2.0 ** -23 * mag), (case, events)


def test_csr_add_product_jit_equals_csr_matvecs(use_jit):
    """_csr_add_product (the conv path's accumulate step) with the loops on == off, adding
    into a nonzero output through an offset row-pointer slice."""
    rng = np.random.default_rng(6)
    for _, dtype, n, x in _cases(7):
        if x.shape[0] < 2:
            continue
        a = sp.csr_matrix(np.where(x, _values(rng, x.shape, dtype), 0).astype(dtype))
        w = _values(rng, (x.shape[1], n), dtype)
        y0 = _values(rng, (x.shape[0] - 1, n), dtype)
        out = []
        for on in (True, False):
            spy = use_jit(on)
            y = y0.copy()
            kernels._csr_add_product(a.indptr[1:], a.indices, a.data, x.shape[1], w, y)
            assert not on or spy.calls["csr_add"] == 1
            out.append(y)
        assert np.array_equal(out[0], out[1]), (dtype, n, x.shape)


# -- whole runs --------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_simulate_identical_with_jit_on_and_off(use_jit, monkeypatch, precision):
    """Whole runs (a residual CNN and an MLP, real-valued weights, spike and analog inputs)
    forced down the event paths, with the compiled loops and without: simulate's outputs,
    spikes and counts identical, and every node's activation (the synaptic currents,
    where a changed low bit shows before any spike flips) identical bit for bit."""
    rng = np.random.default_rng(9)
    _forced(monkeypatch, "events")

    def analog(*shape):  # sparse analog frames, different every step (no direct encoding)
        return rng.normal(size=shape) * (rng.random(shape) < 0.2)
    # (the Affine layer of conv_net takes the event path from T x B >= 29 rows on)
    runs = [(conv_net(rng, dyadic=False), _spikes(rng, 5, 8, (3, 12, 12), 0.15)),
            (conv_net(rng, dyadic=False), analog(4, 8, 3, 12, 12)),
            (dense_net(rng, dyadic=False), _spikes(rng, 6, 8, (300,), 0.1)),
            (dense_net(rng, dyadic=False), analog(6, 8, 300))]
    for g, x in runs:
        res = {}
        for on in (True, False):
            spy = use_jit(on)
            trace = simulate(g, x, profile=SB, precision=precision)
            acts, *_ = sim.run(g, x, SB, None, analyse(g), precision)
            res[on] = trace, acts
            if on:
                assert spy.calls, "the compiled loops must run"
                if precision == "float32" and "conv1" in g.nodes:
                    assert spy.calls["conv_direct"] > 0
        (a, acts_on), (b, acts_off) = res[True], res[False]
        assert sum(int(s.sum()) for s in b.spikes.values()) > 0, "the case must spike"
        _assert_same_trace(a, b)
        for n in acts_off:
            assert acts_on[n].dtype == acts_off[n].dtype, n
            np.testing.assert_array_equal(acts_on[n], acts_off[n], err_msg=n)


# -- the switch -------------------------------------------------------------------------------

def _kernels_in_subprocess(no_jit: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != "SPIKEBRIDGE_NO_JIT"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if no_jit:
        env["SPIKEBRIDGE_NO_JIT"] = "1"
    code = ("from spikebridge.hardware import jit; k = jit.kernels(); "
            "print('none' if k is None else sorted(vars(k)))")
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_no_jit_environment_turns_the_loops_off():
    """SPIKEBRIDGE_NO_JIT=1: kernels() is None (callers take the scipy path); without it the
    compiled loops are there (numba is a dependency: its absence fails here, not skips)."""
    assert _kernels_in_subprocess(True) == "none"
    loops = sorted(vars(jit._build()))
    assert len(loops) >= 8 and {"mask_add", "conv_direct", "loihi_scan", "neuron_scan"} <= set(loops)
    assert _kernels_in_subprocess(False) == str(loops)


def test_event_counts_per_step_jit_equals_numpy(monkeypatch):
    """counts.nonzero_per_step (the per-step event counts every synaptic-op count is made of):
    the compiled batch sum == numpy's, on bool masks, float activations, a broadcast (direct
    encoding) input and a batch above 2^16 rows."""
    from spikebridge.hardware.eventsim import counts
    rng = np.random.default_rng(11)
    cases = [rng.random((5, 7, 3, 4, 4)) < 0.2,
             rng.normal(size=(4, 9, 30)) * (rng.random((4, 9, 30)) < 0.3),
             np.broadcast_to(rng.random((1, 6, 50)) < 0.5, (8, 6, 50)),
             rng.random((2, (1 << 16) + 3, 3)) < 0.5]
    for x in cases:
        on = counts.nonzero_per_step(x)
        monkeypatch.setattr(jit, "_KERNELS", [None])
        off = counts.nonzero_per_step(x)
        monkeypatch.undo()
        assert on.dtype == off.dtype == np.int64 and on.shape == off.shape == (x.shape[0],) + x.shape[2:]
        np.testing.assert_array_equal(on, off)
        np.testing.assert_array_equal(on, (np.asarray(x) != 0).sum(axis=1))


def test_loops_load_where_no_cache_location_is_writable():
    """numba refuses cache=True at decoration time when no cache location is writable (a
    read-only install, no writable home): the loops must still load, compiled per process."""
    env = {k: v for k, v in os.environ.items() if k != "SPIKEBRIDGE_NO_JIT"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    code = ("import numba.core.caching as c, numpy as np\n"
            "c.CacheImpl._locator_classes = []  # no location can hold a cache\n"
            "try:\n"
            "    numba.njit(cache=True)(lambda: 0)\n"
            "    raise SystemExit('numba accepted cache=True without a locator: the test is void')\n"
            "except RuntimeError:\n"
            "    pass\n"
            "from spikebridge.hardware import jit\n"
            "k = jit.kernels()\n"
            "x = np.array([[True, False, True]]); w = np.arange(6, dtype=np.float32).reshape(3, 2)\n"
            "y = np.zeros((1, 2), np.float32); k.mask_add(x, w, y)\n"
            "print(y.tolist())\n")
    code = "import numba\n" + code
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    assert r.stdout.strip() == "[[4.0, 6.0]]"
