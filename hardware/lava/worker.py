"""Lava worker on the Lava interpreter (Python 3.10, lava-nc 0.10.0, numpy < 2).

    python worker.py JOBDIR              one job, then exit
    python worker.py --serve WORKDIR     persistent: job directories on stdin, "<code> <dir>" on stdout

reads  JOBDIR/plan.json, JOBDIR/plan.npz (plain arrays), JOBDIR/inputs.npy (T, batch, n_in)
writes JOBDIR/out.npz (renamed into place when complete) and JOBDIR/out.json (timings),
       or JOBDIR/error.txt: one line "Type: message"; progress in JOBDIR/progress.txt.

Standalone on purpose: imports only stdlib, numpy, scipy and lava (never spikebridge).

All samples of a chunk run in ONE compiled network (class Net). Sample k occupies source
steps kP+1 .. kP+T (P = window >= T); the network runs in periods of
L = ceil(((nb-1)P + T + D) / P) * P steps (whole windows), one period per job: the
FileSource sends column (t-1) % L of the job's input file (reloaded at each period start),
every Dense/Sparse outputs at step t what it received at t-1, so a population behind d
synaptic layers sees sample k's step j at Lava step kP + j + d + 1 (mod L), where the
WindowSink records it; sinks write their arrays at every t % L == 0. LIFReset zeroes u
and v when time_step % P == (1 + d) % P, before integrating, so every window starts clean.
Spikes a population emits after its window (bias-driven) reach the next layer no later
than the reset that opens that layer's next window: no leakage between samples or jobs.
A persistent worker keeps the last Net running (paused) and reuses it for the next job
with the same plan and batch (no recompilation).

The process exits through os._exit after writing results or the error line: stop() after
an error inside a process model can hang, and a runtime left unstopped hangs interpreter exit.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import traceback

STOP_GRACE_S = 20.0
PARENT_POLL_S = 0.5

# A recording sink that keeps only the window steps it needs and writes them with np.save
# at the last step: Var.get() costs ~30-60 us per value, this costs nothing per value.
# Lava's compiler imports every module beside a custom Process, so the worker writes this
# module into its own directory of the job dir and imports it from there.
SINK_MODULE = """
import os
import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class WindowSink(AbstractProcess):
    \"\"\"Records a_in at Lava step t = k*window + j + 1 + delay (j < timesteps, k < samples),
    modulo ``period`` (the network runs period after period, one job each), into an array
    (timesteps, samples, n) saved to ``path`` at every step t with t % period == 0.\"\"\"

    def __init__(self, *, shape, timesteps, samples, window, delay, period, path, binary):
        super().__init__(shape=shape, timesteps=timesteps, samples=samples, window=window,
                         delay=delay, period=period, path=path, binary=binary)
        self.a_in = InPort(shape=shape)


class FileSource(AbstractProcess):
    \"\"\"Sends column (t-1) % period of the (n, period) array in ``path``, reloaded at the
    first step of every period (a reused network gets a new job's input by a new file).\"\"\"

    def __init__(self, *, shape, period, path):
        super().__init__(shape=shape, period=period, path=path)
        self.s_out = OutPort(shape=shape)


class _AbstractFileSource(PyLoihiProcessModel):
    s_out = None

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.period, self.path = proc_params["period"], proc_params["path"]
        self.data = None

    def run_spk(self):
        i = (self.time_step - 1) % self.period
        if i == 0 or self.data is None:
            self.data = np.load(self.path, allow_pickle=False)
        self.s_out.send(self.data[:, i])


@implements(proc=FileSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyFileSourceFloat(_AbstractFileSource):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)


@implements(proc=FileSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyFileSourceFixed(_AbstractFileSource):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32)


class _AbstractWindowSink(PyLoihiProcessModel):
    a_in = None

    def __init__(self, proc_params):
        super().__init__(proc_params)
        p = proc_params
        self.T, self.nb, self.P = p["timesteps"], p["samples"], p["window"]
        self.delay, self.period, self.path = p["delay"], p["period"], p["path"]
        dtype = bool if p["binary"] else np.float64
        self.buf = np.zeros((self.T, self.nb) + tuple(p["shape"]), dtype=dtype)

    def run_spk(self):
        data = self.a_in.recv()
        i = (self.time_step - 1 - self.delay) % self.period
        k, j = divmod(i, self.P)
        if j < self.T and k < self.nb:
            self.buf[j, k] = data
        if self.time_step % self.period == 0:
            tmp = self.path + ".tmp.npy"
            np.save(tmp, self.buf)
            os.replace(tmp, self.path)


@implements(proc=WindowSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyWindowSinkFloat(_AbstractWindowSink):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)


@implements(proc=WindowSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyWindowSinkFixed(_AbstractWindowSink):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32)
"""


def _import_sink(job: str):
    mod = sys.modules.get("spikebridge_window_sink")
    if mod is not None:  # persistent worker: imported once from its work dir
        return mod
    d = os.path.join(job, "procs")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "spikebridge_window_sink.py")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(SINK_MODULE)
    if d not in sys.path:
        sys.path.insert(0, d)
    import spikebridge_window_sink

    return spikebridge_window_sink


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                if int(st[st.rindex(")") + 2:].split()[2]) == pgid:
                    pids.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return pids


def _zombie(pid: int) -> bool:
    """Dead but not reaped (a killed child of this process): nothing left to kill."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        return st[st.rindex(")") + 2:].split()[0] in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return True


def _shm_of(pids) -> set:
    found = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    i = line.find("/dev/shm/")
                    if i >= 0:
                        found.add(line[i:].strip().replace(" (deleted)", ""))
        except OSError:
            pass
    return found


_SEEN_SHM: set = set()  # shared memory the group mapped after a job: unlinked on every exit path


def _remember_group_shm() -> None:
    """Record the /dev/shm segments this worker's group maps now (after a job). A process
    model that exits on its own before a sweep no longer shows them in /proc/PID/maps."""
    _SEEN_SHM.update(_shm_of(_group_pids(os.getpgid(0))))


def _sweep_group() -> None:
    """Kill every other member of this worker's process group and unlink the shared memory it
    maps or mapped after a job. Lava's runtime may still be forking process models while this
    runs: kill until two consecutive scans find no other member of the group."""
    import signal

    me = os.getpid()
    pgid = os.getpgid(0)
    shm = set(_SEEN_SHM)
    quiet = 0
    for _ in range(200):
        pids = [p for p in _group_pids(pgid) if p != me and not _zombie(p)]
        shm |= _shm_of(pids + [me])
        if not pids:
            quiet += 1
            if quiet >= 2:
                break
        else:
            quiet = 0
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.02)
    for path in shm:
        try:
            os.unlink(path)
        except OSError:
            pass


def _watch_parent(job: str) -> None:
    """If the supervising parent dies (even by SIGKILL), kill this worker's whole group,
    remove its shared memory and the job directory: no orphans whatever happens upstream."""
    import shutil

    parent = os.getppid()

    def loop():
        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != parent:
                _sweep_group()
                shutil.rmtree(job, ignore_errors=True)
                os._exit(137)

    threading.Thread(target=loop, name="parent-watchdog", daemon=True).start()


def _one_line(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}"
    return " ".join(msg.split())[:2000]


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _matrix(arrs, terms, rows, cols, fixed=False):
    """Sum over terms of the product of each term's factors (applied first to last).
    Fixed point: one term of one integer factor (the quantised weights)."""
    import numpy as np
    from scipy.sparse import csr_matrix

    if fixed:
        (key,), = terms
        shp = tuple(int(s) for s in arrs[key + "_shape"])
        m = csr_matrix((arrs[key + "_vals"].astype(np.int32), (arrs[key + "_rows"], arrs[key + "_cols"])),
                       shape=shp, dtype=np.int32)
        m.sum_duplicates()
        return m
    total = csr_matrix((rows, cols))
    for keys in terms:
        m = None
        for k in keys:
            shp = tuple(int(s) for s in arrs[k + "_shape"])
            f = csr_matrix((arrs[k + "_vals"], (arrs[k + "_rows"], arrs[k + "_cols"])), shape=shp)
            m = f if m is None else f @ m
        total = total + m
    total.sum_duplicates()
    total.eliminate_zeros()
    return total.astype(np.float64)


ERROR_PATH = None  # set by main(): JOBDIR/error.txt
_WORKDIR = None  # persistent worker: where networks keep their files across jobs


def _report_error(e: BaseException) -> None:
    """Write the one-line error (once) so it survives a hanging stop()."""
    if ERROR_PATH and not os.path.exists(ERROR_PATH):
        try:
            _write_atomic(ERROR_PATH, (_one_line(e) + "\n").encode())
        except OSError:
            pass


def _stop(runtime_owner, grace_s: float) -> None:
    """stop() with a watchdog: if it hangs, leave through os._exit (the supervisor kills the group)."""
    timer = threading.Timer(grace_s, lambda: os._exit(3))
    timer.daemon = True
    timer.start()
    try:
        runtime_owner.stop()
    finally:
        timer.cancel()


class Net:
    """One compiled Lava network for a plan and a number of samples per run. It runs in
    periods of ``period`` steps (a multiple of the window); each period is one job: a new
    input file, RunSteps(period), the sinks' files. A persistent worker keeps the last Net
    running (paused) and reuses it for the next job with the same plan and batch."""

    def __init__(self, meta, arrs, nb: int, ndir: str):
        import numpy as np
        from lava.magma.core.run_configs import Loihi2SimCfg
        from lava.proc.dense.process import DelayDense, Dense
        from lava.proc.io.source import RingBuffer as Source
        from lava.proc.lif.process import LIFReset
        from lava.proc.sparse.process import DelaySparse, Sparse
        from scipy.sparse import csr_matrix

        procs = _import_sink(ndir)
        WindowSink, FileSource = procs.WindowSink, procs.FileSource
        t0 = time.perf_counter()
        os.makedirs(ndir, exist_ok=True)
        self.meta, self.arrs, self.nb, self.dir = meta, arrs, nb, ndir
        T = int(meta["timesteps"])
        P = int(meta["window"])
        D = int(meta["max_depth"])
        L = (nb - 1) * P + T + D
        self.period = L = -(-L // P) * P  # whole windows: the schedule repeats every period
        self.T, self.P = T, P
        n_in = int(meta["input"]["size"])
        bits = int(meta.get("num_message_bits", 24))
        self.fixed = fixed = meta["precision"] == "fixed"
        self.num = num = np.int32 if fixed else np.float64
        self.input_path = os.path.join(ndir, "input.npy")
        self.write_input(np.zeros((T, nb, n_in)))
        source = FileSource(shape=(n_in,), period=L, path=self.input_path)
        ports = {meta["input"]["name"]: source.s_out}
        pops = {}
        self.monitors = {}  # readout population -> (Monitor, LIF, depth)
        sinks = {}  # node name -> recording file
        sink_procs = {}
        for p in meta["populations"]:
            name, size, d = p["name"], int(p["size"]), int(p["depth"])
            # Optional per-neuron du/dv/vth vectors (arrays NAME__du, __dv, __vth): Lava's LIF
            # models compute elementwise; the bit-exact test gives each merged graph its own.
            vec = {k: arrs[f"{name}__{k}"] for k in ("du", "dv", "vth") if f"{name}__{k}" in arrs}
            if fixed:
                lif = LIFReset(shape=(size,), du=vec.get("du", int(p["du"])), dv=vec.get("dv", int(p["dv"])),
                               vth=vec.get("vth", int(p["vth"])),
                               bias_mant=np.asarray(arrs[name + "__bias_mant"], dtype=np.int32),
                               bias_exp=np.asarray(arrs[name + "__bias_exp"], dtype=np.int32),
                               reset_interval=P, reset_offset=(1 + d) % P, name=f"lif_{name}")
            else:
                lif = LIFReset(shape=(size,), du=vec.get("du", float(p["du"])), dv=vec.get("dv", float(p["dv"])),
                               vth=vec.get("vth", float(p["vth"])),
                               bias_mant=np.asarray(arrs[name + "__bias"], dtype=np.float64),
                               reset_interval=P, reset_offset=(1 + d) % P, name=f"lif_{name}")
            pops[name] = lif
            ports[name] = lif.s_out
            sinks[name] = os.path.join(ndir, f"rec_{len(sinks)}.npy")
            sink = WindowSink(shape=(size,), timesteps=T, samples=nb, window=P, delay=d, period=L,
                              path=sinks[name], binary=True)
            lif.s_out.connect(sink.a_in)
            sink_procs[name] = sink
            if p.get("has_vinit") or p.get("recurrent"):
                vd = np.zeros((size, P), dtype=num)
                if p.get("has_vinit"):
                    vd[:, d % P] = arrs[name + "__vinit"]
                if p.get("recurrent"):
                    # the window's last (idle) step: a large negative input keeps a recurrent
                    # population from firing into the next sample's first step (plan.lower)
                    vd[:, (d + P - 1) % P] += GATE_FIXED if fixed else GATE_FLOAT
                vsrc = Source(data=vd)
                vsrc.s_out.connect(lif.a_in)
            if p.get("readout"):  # an LI: a LIF that never fires, read as its membrane
                from lava.proc.monitor.process import Monitor
                mon = Monitor()
                mon.probe(target=lif.v, num_steps=L)
                self.monitors[name] = (mon, lif, d, float(p["v_scale"]) if fixed else 1.0)
        for r in meta["readouts"]:
            if r["kind"] == "analog":
                sinks[r["name"]] = os.path.join(ndir, f"rec_{len(sinks)}.npy")
                sink_procs[r["name"]] = WindowSink(
                    shape=(int(r["size"]),), timesteps=T, samples=nb, window=P, delay=int(r["depth"]),
                    period=L, path=sinks[r["name"]], binary=False)
        if any(c["source"] == "__one__" for c in meta["connections"]):
            one = Source(data=np.ones((1, 1), dtype=num))  # synaptic biases into a current (CubaLIF)
            ports["__one__"] = one.s_out
        n_sparse = n_dense = n_delay = 0
        for c in meta["connections"]:
            m = _matrix(arrs, c["terms"], int(c["rows"]), int(c["cols"]), fixed)
            dense_max = int(meta.get("dense_max_elements", 250_000))
            kw = {}
            if fixed:
                from lava.utils.weightutils import SignMode
                kw = {"weight_exp": int(c.get("weight_exp", 0)), "num_weight_bits": 8}
                if c.get("sign_mode"):
                    kw["sign_mode"] = SignMode[c["sign_mode"].upper()]
            extra = int(c.get("delay", 0))  # skip connection: extra steps of delay
            if m.shape[0] * m.shape[1] <= dense_max or m.nnz > 0.2 * m.shape[0] * m.shape[1]:
                if extra:
                    syn = DelayDense(weights=m.toarray(), delays=np.full(m.shape, extra, dtype=int),
                                     num_message_bits=bits, **kw)
                else:
                    syn = Dense(weights=m.toarray(), num_message_bits=bits, **kw)
                n_dense += 1
            else:
                if extra:
                    m.eliminate_zeros()
                    dl = csr_matrix((np.full(m.nnz, extra, dtype=int), m.indices, m.indptr), shape=m.shape)
                    syn = DelaySparse(weights=m, delays=dl, num_message_bits=bits, **kw)
                else:
                    syn = Sparse(weights=m, num_message_bits=bits, **kw)
                n_sparse += 1
            n_delay += bool(extra)
            ports[c["source"]].connect(syn.s_in)
            tgt = c["target"]
            syn.a_out.connect(pops[tgt].a_in if tgt in pops else sink_procs[tgt].a_in)
        self.pops, self.sinks, self.runner = pops, sinks, source
        self.cfg = Loihi2SimCfg(select_tag="fixed_pt" if fixed else "floating_pt")
        self.started = False
        self.runs = 0
        self.counts = {"dense": n_dense, "sparse": n_sparse, "delayed": n_delay}
        self.build_s = time.perf_counter() - t0
        if os.environ.get("SPIKEBRIDGE_LAVA_TEST_FAIL") == "build":
            raise RuntimeError("injected failure (SPIKEBRIDGE_LAVA_TEST_FAIL=build)")

    def write_input(self, x):
        import numpy as np

        T, nb, n_in = x.shape
        data = np.zeros((n_in, getattr(self, "period", (nb - 1) * self.meta["window"] + T + 1)), dtype=self.num)
        P = int(self.meta["window"])
        for k in range(nb):
            data[:, k * P:k * P + T] = x[:, k, :].T
        tmp = self.input_path + ".tmp.npy"
        np.save(tmp, data)
        os.replace(tmp, self.input_path)

    def run(self, x, record_state: bool = False):
        """One period on input x (T, nb, n_in). Returns (result arrays, timings)."""
        import numpy as np
        from lava.magma.core.run_conditions import RunSteps

        t1 = time.perf_counter()
        self.write_input(x)
        for path in self.sinks.values():
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.started = True
        self.runner.run(condition=RunSteps(num_steps=self.period), run_cfg=self.cfg)
        self.runs += 1
        t_run = time.perf_counter() - t1
        hang = float(os.environ.get("SPIKEBRIDGE_LAVA_TEST_HANG_S", "0") or 0)
        if hang:
            time.sleep(hang)
        t2 = time.perf_counter()
        raw = {}
        for name, path in self.sinks.items():
            end = time.monotonic() + 10.0
            while not os.path.exists(path) and time.monotonic() < end:
                time.sleep(0.001)
            raw[name] = np.load(path, allow_pickle=False)
        out = {}
        for r in self.meta["readouts"]:
            if r["kind"] == "membrane":  # Monitor data (L, n): raw step k*P + j + depth + 1
                mon, lif, d, scale = self.monitors[r["source"]]
                v = np.asarray(mon.get_data()[lif.name]["v"]).reshape(self.period, -1)
                idx = (np.arange(self.nb)[None, :] * self.P + np.arange(self.T)[:, None] + d)
                # fixed point: v_int * v_scale (fixedpoint.quantize), the integer model's product
                out["output__" + r["name"]] = (v[idx].astype(np.int64) * scale if self.fixed
                                               else v[idx].astype(np.float64))
        if record_state:  # final u and v (Var.get: slow, for tests)
            for name, lif in self.pops.items():
                out["u__" + name] = np.asarray(lif.u.get()).astype(np.int64 if self.fixed else np.float64)
                out["v__" + name] = np.asarray(lif.v.get()).astype(np.int64 if self.fixed else np.float64)
        t_get = time.perf_counter() - t2
        arrs = self.arrs
        for name, vals in raw.items():  # (T, nb, size), already cut and aligned by WindowSink
            if name in self.pops:
                out["spikes__" + name] = vals.astype(bool)
            elif self.fixed:
                out["output__" + name] = (vals.astype(np.int64) * np.asarray(arrs[name + "__scale"])
                                          + np.asarray(arrs[name + "__bias"])[None, None, :])
            else:
                out["output__" + name] = vals + np.asarray(arrs[name + "__bias"])[None, None, :]
        tim = {"build_s": self.build_s if self.runs == 1 else 0.0, "run_s": t_run, "get_s": t_get,
               "steps": self.period, "samples": self.nb, "reused": self.runs > 1, **self.counts}
        return out, tim

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        if self.started:
            self.started = False
            _stop(self.runner, grace_s)


GATE_FLOAT = -1e30      # see plan.lower: recurrent populations, last idle step of a window
GATE_FIXED = -(1 << 16)  # a_in << 6 = -2^22: below any threshold (vth << 6 < 2^17), inside 24 bits
_NET: dict = {"key": None, "net": None}  # the persistent worker's running network


def _close_net() -> None:
    import shutil

    net = _NET["net"]
    _NET["key"], _NET["net"] = None, None
    if net is not None:
        net.stop()
        shutil.rmtree(net.dir, ignore_errors=True)


def _net_key(meta, arrs, nb) -> str:
    import hashlib

    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k not in ("chunk_samples", "record_state")},
                                  sort_keys=True).encode())
    for k in sorted(arrs):
        h.update(k.encode())
        h.update(str(arrs[k].dtype).encode() + str(arrs[k].shape).encode())
        h.update(arrs[k].tobytes())
    h.update(str(nb).encode())
    return h.hexdigest()


def run_chunk(meta, arrs, x, job: str, tag_: str = "c0", keep: bool = False):
    """Run samples x (T, nb, n_in) in one network. Returns (result arrays, timings).
    keep: reuse the running network of the previous job when the plan and batch match,
    and leave this one running for the next job (persistent worker)."""
    nb = int(x.shape[1])
    record = bool(meta.get("record_state"))
    # a Monitor (membrane readouts) fills a buffer of one period: such a network is not reused
    membrane = any(r["kind"] == "membrane" for r in meta["readouts"])
    key = _net_key(meta, arrs, nb) if keep and not record and not membrane else None
    t0 = time.perf_counter()
    if key is None or _NET["key"] != key:
        if _NET["net"] is not None:
            _close_net()
        t_stop0 = time.perf_counter() - t0
        ndir = os.path.join(_WORKDIR or job, f"net{os.getpid()}_{tag_}_{time.monotonic_ns()}")
        net = Net(meta, arrs, nb, ndir)
    else:
        t_stop0 = 0.0
        net = _NET["net"]
    ok = False
    try:
        out, tim = net.run(x, record_state=record)
        ok = True
    except BaseException as e:
        _report_error(e)  # before stop(): after a process-model error stop() may hang
        _NET["key"], _NET["net"] = None, None
        raise
    finally:
        t3 = time.perf_counter()
        if not ok or key is None:
            try:
                net.stop(STOP_GRACE_S if ok else 5.0)
            except Exception as e:  # noqa: BLE001
                if ok:
                    raise
                sys.stderr.write("warning: stop() failed after the error: " + _one_line(e) + "\n")
        t_stop = time.perf_counter() - t3 + t_stop0
    if key is not None:
        _NET["key"], _NET["net"] = key, net
    tim["stop_s"] = t_stop
    return out, tim


def do_job(job: str) -> int:
    """Run the job in directory ``job``; returns 0 or 1 (the error line is in job/error.txt)."""
    global ERROR_PATH
    ERROR_PATH = os.path.join(job, "error.txt")
    try:
        t0 = time.perf_counter()
        import numpy as np

        with open(os.path.join(job, "plan.json")) as f:
            meta = json.load(f)
        with np.load(os.path.join(job, "plan.npz"), allow_pickle=False) as z:
            arrs = {k: z[k] for k in z.files}
        x = np.load(os.path.join(job, "inputs.npy"), allow_pickle=False).astype(np.float64)
        T = int(meta["timesteps"])
        if x.ndim != 3 or x.shape[0] != T or x.shape[2] != int(meta["input"]["size"]):
            raise ValueError(f"inputs.npy has shape {x.shape}, expected ({T}, batch, {meta['input']['size']})")
        if os.environ.get("SPIKEBRIDGE_LAVA_TEST_FAIL") == "start":
            raise RuntimeError("injected failure (SPIKEBRIDGE_LAVA_TEST_FAIL=start)")
        if os.environ.get("SPIKEBRIDGE_LAVA_TEST_FAIL") == "crash":  # a hard crash: no error.txt
            sys.stderr.write("Fatal Python error: injected crash (SPIKEBRIDGE_LAVA_TEST_FAIL=crash)\n")
            sys.stderr.flush()
            os._exit(70)
        t_imp = time.perf_counter()
        import lava.magma.core.run_configs  # noqa: F401  (measure the import separately)
        import lava.proc.lif.process  # noqa: F401
        t_import = time.perf_counter() - t_imp
        batch = int(x.shape[1])
        chunk = int(meta.get("chunk_samples") or batch) or 1
        parts: dict[str, list] = {}
        chunks = []
        for s in range(0, batch, chunk):
            res, tim = run_chunk(meta, arrs, x[:, s:s + chunk], job, f"c{s}", keep=_WORKDIR is not None)
            for k, v in res.items():
                parts.setdefault(k, []).append(v)
            chunks.append(tim)
            with open(os.path.join(job, "progress.txt"), "w") as f:
                f.write(f"{min(s + chunk, batch)} {batch}\n")
        out = {k: (np.concatenate(v, axis=1) if k.startswith(("spikes__", "output__")) else v[-1])
               for k, v in parts.items()}
        out_path = os.path.join(job, "out.npz")
        tmp = os.path.join(job, "out.tmp.npz")
        np.savez(tmp, **out)
        os.replace(tmp, out_path)
        info = {"import_s": t_import, "total_s": time.perf_counter() - t0, "chunks": chunks,
                "python": sys.executable, "pid": os.getpid()}
        _write_atomic(os.path.join(job, "out.json"), json.dumps(info).encode())
        return 0
    except BaseException as e:  # noqa: BLE001 - everything becomes the one error line
        line = _one_line(e)
        try:
            _report_error(e)
            with open(os.path.join(job, "traceback.txt"), "w") as f:
                traceback.print_exc(file=f)
        except OSError:
            pass
        try:
            sys.stderr.write("error: " + line + "\n")
            sys.stderr.flush()
        except OSError:
            pass
        return 1


def main(argv) -> int:
    """One job: ``worker.py JOBDIR``."""
    job = argv[1]
    code = 1
    _watch_parent(job)
    try:
        code = do_job(job)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    return code


def serve(argv) -> int:
    """Persistent worker: ``worker.py --serve WORKDIR``. Reads one job directory per line on
    stdin, answers "<code> <jobdir>" on stdout when the job is done. Lava is imported once.

    Hazards designed around: after a failed job the Lava runtime may be half stopped (stop()
    can hang after a process-model error), so the worker answers and exits instead of taking
    another job; it always leaves through os._exit (an unstopped runtime hangs interpreter
    exit); custom processes live in WORKDIR/procs (Lava imports every module beside them);
    the parent-death watchdog kills the whole group and removes WORKDIR and its shm.
    """
    global _WORKDIR
    wdir = _WORKDIR = argv[2]
    code = 0
    _watch_parent(wdir)
    try:
        import lava.magma.core.run_configs  # noqa: F401  (warm: the ~0.6 s of imports, once)
        import lava.proc.dense.process  # noqa: F401
        import lava.proc.lif.process  # noqa: F401
        import lava.proc.sparse.process  # noqa: F401
        _import_sink(wdir)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        for line in sys.stdin:
            job = line.strip()
            if not job:
                break
            code = do_job(job)
            _remember_group_shm()
            sys.stdout.write(f"{code} {job}\n")
            sys.stdout.flush()
            if code != 0:
                break
        if code == 0:
            _close_net()  # a clean end (stdin closed): stop the kept runtime
    except BaseException as e:  # noqa: BLE001
        try:
            sys.stderr.write("error: " + _one_line(e) + "\n")
        except OSError:
            pass
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            # stdin also closes when the parent dies (SIGTERM): the watchdog may not have run
            # yet, and a stopped runtime can leave segments behind. Sweep on every exit.
            _sweep_group()
        finally:
            os._exit(code)
    return code


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(sys.argv)
    main(sys.argv)
