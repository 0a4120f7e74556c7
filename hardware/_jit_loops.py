"""The compiled loops of ``spikebridge.hardware.jit`` (imported by it on first use: importing
this module imports numba). Module-level functions, so numba's on-disk cache can hold them.

The 8/4/2/1-event cascades of ``mask_add``, ``value_add`` and ``conv_direct`` are written
out in each loop on purpose: numba vectorises them only as straight-line code over the
output row. One shared helper taking the weight-row indices as an array was slower when
measured (conv 64x64 at 32x32: 42 against 26 ms; int16 event sums: 1.40 against 1.03 ms;
measured while the test suite ran on the other core)."""
import numba
import numpy as np

_cached = numba.njit(cache=True, nogil=True)
_uncached = numba.njit(nogil=True)


def jit(f):
    """numba.njit with its on-disk cache (beside this file, else numba's user cache); where no
    cache location is writable numba refuses cache=True at decoration time, so the loop is
    compiled per process instead (slower start, the same code)."""
    try:
        return _cached(f)
    except RuntimeError:
        return _uncached(f)


@jit
def csr_add(indptr, indices, data, w, y):
    """y[i] += data[k] * w[indices[k]] for k in row i (indptr: absolute offsets, one
    more than y's rows); scipy's csr_matvecs."""
    n = w.shape[1]
    for i in range(indptr.shape[0] - 1):
        for k in range(indptr[i], indptr[i + 1]):
            a = data[k]
            c = indices[k]
            for j in range(n):
                y[i, j] += a * w[c, j]


@jit
def mask_add(x, w, y):
    """y[r] += w[c] for every True x[r, c] (binary events), columns ascending. A row's events
    are listed first without branches (a branch per input mispredicts at 5-20 % activity),
    then added up to 8 per pass over the output row: each element still adds its events one
    at a time in column order (the same sums), with fewer loads and stores of y."""
    n = w.shape[1]
    buf = np.empty(x.shape[1], np.int64)
    for r in range(x.shape[0]):
        m = 0
        for c in range(x.shape[1]):
            buf[m] = c
            m += x[r, c]
        e = 0
        while e + 8 <= m:
            c0 = buf[e + 0]
            c1 = buf[e + 1]
            c2 = buf[e + 2]
            c3 = buf[e + 3]
            c4 = buf[e + 4]
            c5 = buf[e + 5]
            c6 = buf[e + 6]
            c7 = buf[e + 7]
            for j in range(n):
                v = y[r, j] + w[c0, j]
                v = v + w[c1, j]
                v = v + w[c2, j]
                v = v + w[c3, j]
                v = v + w[c4, j]
                v = v + w[c5, j]
                v = v + w[c6, j]
                v = v + w[c7, j]
                y[r, j] = v
            e += 8
        while e + 4 <= m:
            c0 = buf[e + 0]
            c1 = buf[e + 1]
            c2 = buf[e + 2]
            c3 = buf[e + 3]
            for j in range(n):
                v = y[r, j] + w[c0, j]
                v = v + w[c1, j]
                v = v + w[c2, j]
                v = v + w[c3, j]
                y[r, j] = v
            e += 4
        while e + 2 <= m:
            c0 = buf[e + 0]
            c1 = buf[e + 1]
            for j in range(n):
                v = y[r, j] + w[c0, j]
                v = v + w[c1, j]
                y[r, j] = v
            e += 2
        if e < m:
            c0 = buf[e]
            for j in range(n):
                y[r, j] += w[c0, j]


@jit
def value_add(x, w, y):
    """y[r] += x[r, c] * w[c] for every nonzero x[r, c], columns ascending (x in w's dtype, or
    int32 for integer weights: each product then widens before the add wraps into y); events
    added up to 8 per pass over the output row, as in ``mask_add``."""
    n = w.shape[1]
    buf = np.empty(x.shape[1], np.int64)
    for r in range(x.shape[0]):
        m = 0
        for c in range(x.shape[1]):
            buf[m] = c
            m += x[r, c] != 0
        e = 0
        while e + 8 <= m:
            a0 = x[r, buf[e + 0]]
            c0 = buf[e + 0]
            a1 = x[r, buf[e + 1]]
            c1 = buf[e + 1]
            a2 = x[r, buf[e + 2]]
            c2 = buf[e + 2]
            a3 = x[r, buf[e + 3]]
            c3 = buf[e + 3]
            a4 = x[r, buf[e + 4]]
            c4 = buf[e + 4]
            a5 = x[r, buf[e + 5]]
            c5 = buf[e + 5]
            a6 = x[r, buf[e + 6]]
            c6 = buf[e + 6]
            a7 = x[r, buf[e + 7]]
            c7 = buf[e + 7]
            for j in range(n):
                v = y[r, j] + a0 * w[c0, j]
                v = v + a1 * w[c1, j]
                v = v + a2 * w[c2, j]
                v = v + a3 * w[c3, j]
                v = v + a4 * w[c4, j]
                v = v + a5 * w[c5, j]
                v = v + a6 * w[c6, j]
                v = v + a7 * w[c7, j]
                y[r, j] = v
            e += 8
        while e + 4 <= m:
            a0 = x[r, buf[e + 0]]
            c0 = buf[e + 0]
            a1 = x[r, buf[e + 1]]
            c1 = buf[e + 1]
            a2 = x[r, buf[e + 2]]
            c2 = buf[e + 2]
            a3 = x[r, buf[e + 3]]
            c3 = buf[e + 3]
            for j in range(n):
                v = y[r, j] + a0 * w[c0, j]
                v = v + a1 * w[c1, j]
                v = v + a2 * w[c2, j]
                v = v + a3 * w[c3, j]
                y[r, j] = v
            e += 4
        while e + 2 <= m:
            a0 = x[r, buf[e + 0]]
            c0 = buf[e + 0]
            a1 = x[r, buf[e + 1]]
            c1 = buf[e + 1]
            for j in range(n):
                v = y[r, j] + a0 * w[c0, j]
                v = v + a1 * w[c1, j]
                y[r, j] = v
            e += 2
        if e < m:
            a0 = x[r, buf[e]]
            c0 = buf[e]
            for j in range(n):
                y[r, j] += a0 * w[c0, j]


@jit
def loihi_scan(a_in, fu, fv, bias, vth, u_replaced, v_kept, uv_max, spk, v_rec, u_rec):
    """The integer LIF of Lava's fixed_pt models over all S steps, as ``fast.run_qplan_fast``'s
    numpy loop computes it (the same wrap points):
    u = fold24(wrap32(decay(u, fu) + wrap32(a_in << 6))) (no decay term where u is replaced),
    v = clip(wrap32(wrap32(decay(v, fv) + u) + bias), +-(uv_max - 1)), spike v > vth, v = 0
    where it spiked. a_in (S, B, n) int32; fu, fv, bias, vth (n,) int64; spk (S, B, n) bool;
    v_rec / u_rec: (S, B, n) int64 to record v (after the reset) / u, or shape (0, 0, 0).
    int64 throughout, wrap32(x) as (x << 32) >> 32 (arithmetic shift: the sign-extended low 32
    bits); steps outermost, neurons innermost and branch-free, so the compiler vectorises it."""
    S, B, n = a_in.shape
    lim = uv_max - 1
    two = 2 * uv_max
    rec_v = v_rec.shape[0] > 0
    rec_u = u_rec.shape[0] > 0
    u = np.zeros((B, n), np.int64)
    v = np.zeros((B, n), np.int64)
    for j in range(S):
        for b in range(B):
            ub = u[b]
            vb = v[b]
            ab = a_in[j, b]
            sb = spk[j, b]
            for i in range(n):
                d = (np.int64(ab[i]) << 38) >> 32  # wrap32(a_in << 6)
                if not u_replaced:
                    p = ub[i] * fu[i]
                    q = np.abs(p) >> 12
                    d = (((-q if p < 0 else q) + d) << 32) >> 32
                ui = d - two if d > uv_max else d  # fold24, one step
                ui = ui + two if ui <= -uv_max else ui
                vi = vb[i]
                if not v_kept:
                    p = vi * fv[i]
                    q = np.abs(p) >> 12
                    vi = ((-q if p < 0 else q) << 32) >> 32
                vi = (((((vi + ui) << 32) >> 32) + bias[i]) << 32) >> 32
                vi = min(max(vi, -lim), lim)
                s = vi > vth[i]
                sb[i] = s
                vi = 0 if s else vi
                vb[i] = vi
                ub[i] = ui
            if rec_v:
                v_rec[j, b] = vb
            if rec_u:
                u_rec[j, b] = ub


@jit
def neuron_scan(drive, out, v, a, has_a, thr, ge, subtract, v_reset, amp, smask):
    """eventsim's same-step IF / LIF over T steps (kernels._neuron_scan's loop, the same float
    operations in the same order): per step v = a*v (LIF), v = v + drive, s = v >= thr (or >),
    v = v - s*thr (subtract) or where(s, v_reset, v), out = s*amp. drive, out (T, B, n): the
    drive in (it may be out itself: step t reads drive[t] before writing out[t]; or (1, B, n):
    the same drive at every step), the outputs
    out; v (B, n) updated in place; a, thr, v_reset, amp: (n,) in v's dtype; smask (T, B, n)
    bool: the spikes. Neurons innermost (the compiler vectorises them)."""
    T, B, n = out.shape
    for t in range(T):
        for b in range(B):
            vb = v[b]
            db = drive[t if drive.shape[0] > 1 else 0, b]
            ob = out[t, b]
            sb = smask[t, b]
            for i in range(n):
                vi = vb[i]
                if has_a:
                    vi = a[i] * vi
                vi = vi + db[i]
                s = vi >= thr[i] if ge else vi > thr[i]
                one = v.dtype.type(1.0) if s else v.dtype.type(0.0)
                if subtract:
                    vi = vi - one * thr[i]
                elif s:
                    vi = v_reset[i]
                vb[i] = vi
                sb[i] = s
                ob[i] = one * amp[i]


@jit
def conv_direct(x, wp, geo, phases, y):
    """The float conv event path straight from the input, no event lists: x (n, C_in, H, W)
    (bool spikes, or values in wp's dtype), wp (C_in, kh*kw, C_out) the weights per channel
    and tap (row-major taps), geo = (stride_h, stride_w, dil_h, dil_w, lo_h, lo_w, kw),
    phases (P, 2) the phase plan's order of (row, column) tap phases, y (n, OH, OW, C_out)
    zeroed: every nonzero x[s, c, i, j] adds x * wp[c, tap] to each output it reaches.
    Inputs are visited phase by phase (the residues of i + lo_h and j + lo_w modulo the
    stride), row-major within a phase, channels ascending within a position, so an output's
    terms arrive by phase, tap and channel: the order of the phase-grid loop of
    ``kernels._conv32_events`` (bit-identical)."""
    n, cin, H, W = x.shape
    OH, OW, cout = y.shape[1], y.shape[2], y.shape[3]
    sh, sw, dh, dw, lh, lw, kw = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6]
    nt = wp.shape[1]
    kh = nt // kw
    y2 = y.reshape(n * OH * OW, cout)
    w2 = wp.reshape(cin * nt, cout)
    buf = np.empty(cin, np.int64)
    av = np.empty(cin, wp.dtype)
    orow = np.empty(nt, np.int64)
    otap = np.empty(nt, np.int64)
    # per input row i (column j): the taps ky that reach an output row oy, ky ascending (no
    # divisions in the event loop)
    ny = np.zeros(H, np.int64)
    kyt = np.empty((H, kh), np.int64)
    oyt = np.empty((H, kh), np.int64)
    for i in range(H):
        for ky in range(kh):
            num = i + lh - ky * dh
            if num >= 0 and num % sh == 0 and num // sh < OH:
                kyt[i, ny[i]] = ky
                oyt[i, ny[i]] = num // sh
                ny[i] += 1
    nx = np.zeros(W, np.int64)
    kxt = np.empty((W, kw), np.int64)
    oxt = np.empty((W, kw), np.int64)
    for j in range(W):
        for kx in range(kw):
            num = j + lw - kx * dw
            if num >= 0 and num % sw == 0 and num // sw < OW:
                kxt[j, nx[j]] = kx
                oxt[j, nx[j]] = num // sw
                nx[j] += 1
    ry = np.empty(H, np.int64)  # the phase residue of each input row and column
    for i in range(H):
        ry[i] = (i + lh) % sh
    rx = np.empty(W, np.int64)
    for j in range(W):
        rx[j] = (j + lw) % sw
    af = np.empty(H * W, np.uint8)
    act = af.reshape(H, W)
    xf = x.reshape(n, cin, H * W)
    for s in range(n):
        # which positions have any event (channel rows are contiguous: a vectorised OR), so
        # a sparse input costs its events, not a strided look at every channel of every position
        af[:] = 0
        for c in range(cin):
            xc = xf[s, c]
            for q in range(H * W):
                af[q] |= xc[q] != 0
        for ph in range(phases.shape[0]):
            py, px = phases[ph, 0], phases[ph, 1]
            for i in range(H):
                if ry[i] != py:
                    continue
                for j in range(W):
                    if rx[j] != px or not act[i, j]:
                        continue
                    m = 0
                    for c in range(cin):
                        buf[m] = c
                        m += x[s, c, i, j] != 0
                    if m == 0:
                        continue
                    # the outputs this position reaches: (output row, tap), few (<= taps)
                    nr = 0
                    for a_ in range(ny[i]):
                        base = (s * OH + oyt[i, a_]) * OW
                        for b_ in range(nx[j]):
                            orow[nr] = base + oxt[j, b_]
                            otap[nr] = kyt[i, a_] * kw + kxt[j, b_]
                            nr += 1
                    for e in range(m):  # the events' values in wp's dtype (bool -> 1.0)
                        av[e] = wp.dtype.type(x[s, buf[e], i, j])
                    for r in range(nr):  # each reached output row adds the events' taps,
                        row = orow[r]    # up to 8 events per pass over the row (the same
                        tt = otap[r]     # sequence of adds per element, fewer loads and stores)
                        e = 0
                        while e + 8 <= m:
                            a0 = av[e + 0]
                            r0 = buf[e + 0] * nt + tt
                            a1 = av[e + 1]
                            r1 = buf[e + 1] * nt + tt
                            a2 = av[e + 2]
                            r2 = buf[e + 2] * nt + tt
                            a3 = av[e + 3]
                            r3 = buf[e + 3] * nt + tt
                            a4 = av[e + 4]
                            r4 = buf[e + 4] * nt + tt
                            a5 = av[e + 5]
                            r5 = buf[e + 5] * nt + tt
                            a6 = av[e + 6]
                            r6 = buf[e + 6] * nt + tt
                            a7 = av[e + 7]
                            r7 = buf[e + 7] * nt + tt
                            for q in range(cout):
                                v = y2[row, q] + a0 * w2[r0, q]
                                v = v + a1 * w2[r1, q]
                                v = v + a2 * w2[r2, q]
                                v = v + a3 * w2[r3, q]
                                v = v + a4 * w2[r4, q]
                                v = v + a5 * w2[r5, q]
                                v = v + a6 * w2[r6, q]
                                v = v + a7 * w2[r7, q]
                                y2[row, q] = v
                            e += 8
                        while e + 4 <= m:
                            a0 = av[e + 0]
                            r0 = buf[e + 0] * nt + tt
                            a1 = av[e + 1]
                            r1 = buf[e + 1] * nt + tt
                            a2 = av[e + 2]
                            r2 = buf[e + 2] * nt + tt
                            a3 = av[e + 3]
                            r3 = buf[e + 3] * nt + tt
                            for q in range(cout):
                                v = y2[row, q] + a0 * w2[r0, q]
                                v = v + a1 * w2[r1, q]
                                v = v + a2 * w2[r2, q]
                                v = v + a3 * w2[r3, q]
                                y2[row, q] = v
                            e += 4
                        while e + 2 <= m:
                            a0 = av[e + 0]
                            r0 = buf[e + 0] * nt + tt
                            a1 = av[e + 1]
                            r1 = buf[e + 1] * nt + tt
                            for q in range(cout):
                                y2[row, q] = (y2[row, q] + a0 * w2[r0, q]) + a1 * w2[r1, q]
                            e += 2
                        if e < m:
                            a0 = av[e]
                            r0 = buf[e] * nt + tt
                            for q in range(cout):
                                y2[row, q] += a0 * w2[r0, q]


@jit
def batch_counts(m, out):
    """out[t, i] += the number of True m[t, b, i] over b (eventsim's per-step event counts)."""
    T, B, n = m.shape
    for t in range(T):
        for b in range(B):
            mb = m[t, b]
            for i in range(n):
                out[t, i] += mb[i]


@jit
def nchw_bias(z, b, out):
    """out[s, q, p] = z[s, p, q] + b[q]: a conv's channels-last sums, biased, channels first."""
    n, P, C = z.shape
    for s in range(n):
        for q in range(C):
            bq = b[q]
            for p in range(P):
                out[s, q, p] = z[s, p, q] + bq
