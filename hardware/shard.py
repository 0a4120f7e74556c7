"""Sharded runs of a batched backend (eventsim, loihi-fixed): the samples split across worker
processes on this machine (``RunOptions(workers=N)``, ``--workers N``) or across an existing
Dask cluster (``RunOptions(cluster=ADDRESS)``, ``--cluster ADDRESS``). Reached only through
``spikebridge.hardware.backends.run_graph``.

Results are bit-identical to one process: the samples are cut into the same batches the
single-process run uses (``--batch-size``, default 256), a shard is a run of whole batches,
every worker runs its batches exactly as ``Backend.run`` does (``run_batch``, spikes recorded
for the first batch only), and the parent joins the per-batch traces in batch order with
``merge_traces``: outputs are concatenated, integer counts summed.

Nothing here imports torch (the workers load only numpy, nir/h5py and hardware/). The
graph travels already read, adapted and analysed by ``backends.prepare`` in the parent
(pickled with its backend object and options), so every worker runs the same reading.

Failures. A worker that raises an input error (exit 3) or a backend error (exit 4) ends the
run with that error. A worker process that dies (killed, out of memory) is retried: locally
its shard is restarted up to ``retries`` times, then the run fails with BackendError (exit 4)
naming the shard and its samples; on Dask the scheduler reschedules the tasks of a lost
worker (its ``distributed.scheduler.allowed-failures``, default 3) and then reports
KilledWorker, which becomes the same BackendError. A shard is never dropped silently: the
merged trace has exactly the input's samples or the run fails.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikebridge.base.errors import BackendError, InputError, SpikebridgeError
from spikebridge.hardware.trace import merge_traces

DEFAULT_BATCH_SIZE = 256  # samples per backend call (RunOptions.batch_size); shards are whole batches
DEFAULT_RETRIES = 2       # restarts of a dead shard (RunOptions.retries)

KILL_ENV = "SPIKEBRIDGE_TEST_KILL_SHARD"  # tests: "SHARD:COUNT:DIR" SIGKILLs shard's worker COUNT times


@dataclass(frozen=True)
class Job:
    """What every shard needs besides its samples."""
    prepared: object       # backends.Prepared: backend, options, adapted graph, info
    timesteps: int | None  # direct-encode the samples over T steps; None: samples are (T, b, ...)


def batch_ranges(n: int, batch_size: int) -> list[tuple[int, int]]:
    if batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def split_shards(batches: list, shards: int) -> list[list]:
    """Contiguous runs of whole batches, as even as possible; no empty shard."""
    shards = max(1, min(shards, len(batches)))
    base, extra = divmod(len(batches), shards)
    out, i = [], 0
    for s in range(shards):
        k = base + (1 if s < extra else 0)
        out.append(batches[i:i + k])
        i += k
    return out


def _maybe_die(shard: int) -> None:
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    which, count, d = spec.split(":", 2)
    if int(which) != shard:
        return
    done = len([f for f in os.listdir(d) if f.startswith(f"kill-{shard}-")])
    if done < int(count):
        Path(d, f"kill-{shard}-{done}").touch()
        import signal
        os.kill(os.getpid(), signal.SIGKILL)


def run_shard(job: Job, x: np.ndarray, batches: list[tuple[int, int]], shard: int) -> list:
    """Simulate this shard's batches; ``x`` holds exactly its samples (axis 0 when the job
    direct-encodes, else axis 1). Returns one Trace per batch."""
    _maybe_die(shard)
    prep = job.prepared
    base = batches[0][0]
    traces = []
    for a, b in batches:
        if job.timesteps is not None:
            xb = np.ascontiguousarray(np.broadcast_to(x[a - base:b - base][None], (job.timesteps, b - a, *x.shape[1:])))
        else:
            xb = np.ascontiguousarray(x[:, a - base:b - base])
        traces.append(prep.backend.run_batch(prep.graph, prep.info, xb, prep.options, record_spikes=(a == 0)))
    return traces


def _proc_main(conn, job, x, batches, shard):
    """Body of a local worker process: send ("ok", traces) or ("error", exit code, message)."""
    try:
        msg = ("ok", run_shard(job, x, batches, shard))
    except SpikebridgeError as e:
        msg = ("error", e.exit_code, str(e))
    except Exception as e:  # noqa: BLE001 - a bug in a worker: reported by the parent in one line
        msg = ("error", 1, f"internal error in shard worker ({type(e).__name__}: {' '.join(str(e).split())[:300]})")
    conn.send(msg)
    conn.close()


def _raise_worker_error(code: int, message: str):
    if code == 3:
        raise InputError(message)
    if code == 4:
        raise BackendError(message)
    raise RuntimeError(message)


def _samples_of(x_tb: np.ndarray, encoded: bool, batches) -> np.ndarray:
    a, b = batches[0][0], batches[-1][1]
    return np.ascontiguousarray(x_tb[0, a:b] if encoded else x_tb[:, a:b])


def _describe_exit(code) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        import signal
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def run_local(job: Job, x_tb, encoded: bool, shards: list, workers: int, retries: int, progress=None) -> list:
    """Shards on ``workers`` spawned processes; a dead worker's shard is restarted up to
    ``retries`` times. Returns the per-batch traces of every shard, in order."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")  # a fresh interpreter: no inherited threads or torch state
    pending = list(range(len(shards)))
    attempts = [0] * len(shards)
    results: dict[int, list] = {}
    running: dict = {}  # connection -> (shard, process)
    try:
        while pending or running:
            while pending and len(running) < workers:
                s = pending.pop(0)
                attempts[s] += 1
                r, w = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_proc_main, args=(w, job, _samples_of(x_tb, encoded, shards[s]), shards[s], s),
                                daemon=True, name=f"spikebridge-shard-{s}")
                p.start()
                w.close()
                running[r] = (s, p)
            for conn in wait(list(running)):
                s, p = running.pop(conn)
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    msg = None
                conn.close()
                p.join()
                if msg is None:  # the process died before sending its result
                    a, b = shards[s][0][0], shards[s][-1][1]
                    if attempts[s] <= retries:
                        pending.insert(0, s)
                        continue
                    raise BackendError(f"simulate worker for shard {s} (samples {a}..{b - 1}) died "
                                       f"({_describe_exit(p.exitcode)}) on all {attempts[s]} attempts "
                                       f"(--retries {retries}); no result was written")
                if msg[0] == "error":
                    _raise_worker_error(msg[1], msg[2])
                results[s] = msg[1]
                if progress:
                    progress(sum(b - a for a, b in shards[s]))
    finally:
        for conn, (_, p) in running.items():
            if p.is_alive():
                p.kill()
            p.join()
            conn.close()
    return [t for s in range(len(shards)) for t in results[s]]


def run_dask(address: str, job: Job, x_tb, encoded: bool, shards: list, retries: int, progress=None) -> list:
    """Shards as tasks on the Dask cluster whose scheduler is at ``address``."""
    try:
        from dask.distributed import Client
        from distributed.scheduler import KilledWorker
    except ImportError:
        raise InputError("--cluster needs Dask distributed: pip install 'spikebridge[cluster]'") from None
    import uuid
    try:
        client = Client(address, timeout=float(os.environ.get("SPIKEBRIDGE_CLUSTER_TIMEOUT", 30)))
    except (OSError, TimeoutError, ValueError) as e:
        raise BackendError(f"cannot connect to the Dask scheduler at {address}: "
                           f"{' '.join(str(e).split())[:200] or type(e).__name__}") from None
    tag = uuid.uuid4().hex[:8]
    results: dict[int, list] = {}
    try:
        futures = [client.submit(run_shard, job, _samples_of(x_tb, encoded, shards[s]), shards[s], s,
                                 key=f"spikebridge-shard-{tag}-{s}", retries=retries, pure=False)
                   for s in range(len(shards))]
        for s, f in enumerate(futures):
            a, b = shards[s][0][0], shards[s][-1][1]
            try:
                results[s] = f.result()
            except KilledWorker as e:
                raise BackendError(f"Dask worker running shard {s} (samples {a}..{b - 1}) died repeatedly; the "
                                   f"scheduler gave up ({' '.join(str(e).split())[:200]})") from None
            except SpikebridgeError:
                raise
            except (OSError, TimeoutError) as e:
                raise BackendError(f"lost the Dask cluster at {address} during shard {s}: "
                                   f"{' '.join(str(e).split())[:200] or type(e).__name__}") from None
            if progress:
                progress(b - a)
    finally:
        client.close()
    return [t for s in range(len(shards)) for t in results[s]]


def run_sharded(prepared, x_tb: np.ndarray, progress=None):
    """The Trace of ``x_tb`` (T, batch, ...) computed in shards (``prepared.options.workers``
    local processes, or the Dask cluster at ``prepared.options.cluster``); identical to
    ``prepared.backend.run(...)`` with the same batch size. ``progress(done, total)``."""
    o = prepared.options
    if not prepared.backend.batched:
        raise InputError(f"--workers and --cluster shard batched backends only; {prepared.backend.name} is not")
    workers = int(o.workers or 1)
    retries = DEFAULT_RETRIES if o.retries is None else int(o.retries)
    if workers < 1:
        raise InputError("--workers must be at least 1")
    if retries < 0:
        raise InputError("--retries must be >= 0")
    total = int(x_tb.shape[1])
    batches = batch_ranges(total, int(o.batch_size or DEFAULT_BATCH_SIZE))
    encoded = x_tb.ndim >= 2 and x_tb.strides[0] == 0  # direct encoding: send each sample once
    job = Job(prepared=prepared, timesteps=int(x_tb.shape[0]) if encoded else None)
    done = [0]

    def step(n):
        done[0] += n
        if progress:
            progress(done[0], total)

    t0, c0 = time.perf_counter(), _cpu_seconds()
    if o.cluster:
        if workers == 1:  # one shard per cluster worker thread unless --workers says otherwise
            workers = _cluster_slots(o.cluster)
        shards = split_shards(batches, workers)
        parts = run_dask(o.cluster, job, x_tb, encoded, shards, retries, step)
    else:
        shards = split_shards(batches, workers)
        parts = run_local(job, x_tb, encoded, shards, workers, retries, step)
    trace = merge_traces(parts)
    trace.meta["shards"] = len(shards)
    trace.meta["workers"] = workers
    if not o.cluster:
        trace.meta["cpu_seconds"] = _cpu_seconds() - c0  # this process and its (waited-for) workers
    trace.meta["shard_wall_seconds"] = time.perf_counter() - t0
    return trace


def _cluster_slots(address: str) -> int:
    try:
        from dask.distributed import Client
    except ImportError:
        raise InputError("--cluster needs Dask distributed: pip install 'spikebridge[cluster]'") from None
    try:
        with Client(address, timeout=float(os.environ.get("SPIKEBRIDGE_CLUSTER_TIMEOUT", 30))) as c:
            return max(1, sum(c.nthreads().values()))
    except (OSError, TimeoutError, ValueError) as e:
        raise BackendError(f"cannot connect to the Dask scheduler at {address}: "
                           f"{' '.join(str(e).split())[:200] or type(e).__name__}") from None


def _cpu_seconds() -> float:
    import resource
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
