"""The compiled loops of ``spikebridge.hardware.jit`` (imported by it on first use: importing
this module imports numba). Module-level functions, so numba's on-disk cache can hold them."""
import numba

jit = numba.njit(cache=True, nogil=True)


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
def conv_taps(ip, ind, dat, wm, tap_idx, tap_off, cin, tile, y):
    """The phase-grid conv event loop of one phase: for each output tile, each tap
    (tap_idx[t], flat offset tap_off[t]) and each grid row r of the tile, y[r] += the
    events of grid row r + offset through that tap's weights (rows tap*cin + c of wm)."""
    nrow = y.shape[0]
    n = wm.shape[1]
    for r0 in range(0, nrow, tile):
        r1 = min(r0 + tile, nrow)
        for t in range(tap_idx.shape[0]):
            base = tap_idx[t] * cin
            off = tap_off[t]
            e = min(r1, nrow - off)
            for r in range(r0, e):
                for k in range(ip[r + off], ip[r + off + 1]):
                    a = dat[k]
                    c = base + ind[k]
                    for j in range(n):
                        y[r, j] += a * wm[c, j]


@jit
def mask_add(x, w, y):
    """y[r] += w[c] for every True x[r, c] (binary events), columns ascending."""
    n = w.shape[1]
    for r in range(x.shape[0]):
        for c in range(x.shape[1]):
            if x[r, c]:
                for j in range(n):
                    y[r, j] += w[c, j]


@jit
def value_add(x, w, y):
    """y[r] += x[r, c] * w[c] for every nonzero x[r, c] (x in w's dtype), columns ascending."""
    n = w.shape[1]
    for r in range(x.shape[0]):
        for c in range(x.shape[1]):
            a = x[r, c]
            if a != 0:
                for j in range(n):
                    y[r, j] += a * w[c, j]
