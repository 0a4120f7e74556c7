"""Data-parallel training with torch.distributed (DDP): gloo on the CPU, nccl on GPUs.

A run is distributed when it is started by ``torchrun`` (or ``spikebridge train
--nproc-per-node N``, which calls torchrun's launcher, ``launch``) and ``WORLD_SIZE`` > 1.
``session(cfg)`` then initialises the process group; every training loop asks
``current()`` for the context. With one process nothing here changes any computation.

The rules that make N processes train the same network as one process
(tests/models/test_distributed.py checks weights and thresholds against a 1-process run):

- Global sample order. Every rank draws the same global permutation per epoch from the
  seeded generator and cuts every global batch of ``batch_size`` samples into
  ``world_size`` contiguous slices (``torch.tensor_split``); rank r trains on slice r.
  The order is therefore independent of the world size, which is what lets ``--resume``
  continue with a different number of processes (the generator states in train_state.pt
  are the same on every rank). Augmentation draws for the whole global batch, then slices.
- Loss scale. Each rank's loss is its slice's per-sample mean times
  ``world_size * len(slice) / len(global batch)``: DDP averages gradients over ranks, so the
  result is the gradient of the global batch's mean loss even for unequal slices.
- Random draws. Dropout (SNN2ANN's ANN dropout and membrane dropout, spikebridge.models.snn2ann.keep_mask)
  draws the mask for the whole global batch from the (identically seeded) global RNG on every
  rank and keeps its rows (``rows``, ``global_rows``): the masks are those of the 1-process
  run, and every rank's RNG stays in step with it (so train_state.pt is rank-independent).
- Non-gradient state. SNN2ANN's ATA noisy-spike fraction is all-reduced (sum of the ranks'
  noisy counts over the global count), so every rank takes the same threshold decision.
  ``--sync-bn`` normalises with the global batch's statistics: torch's SyncBatchNorm on
  CUDA; on the CPU torch 2.13 refuses SyncBatchNorm ("expected input tensor to be on
  GPU"), so ``AllReduceBatchNorm`` all-reduces the per-channel sum, sum of squares (float64)
  and count, with autograd through the all-reduce. Without ``--sync-bn`` BatchNorm uses each
  rank's slice and the running statistics are rank 0's (DDP broadcasts buffers), as in
  plain DDP. Parallel conversion's calibration all-reduces its per-channel means and maxima.
- Output. Only rank 0 writes checkpoints and metrics (each file atomically); the others
  wait at a barrier where a later step reads what rank 0 wrote.
- A final global batch with fewer samples than processes is skipped (every rank skips it;
  with one process it is trained): the one place where the world size changes the samples.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
from torch import nn

from spikebridge.base.errors import BackendError, InputError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    sync_bn: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """(offset, length) of this rank's slice of a global batch of n samples."""
        base, extra = divmod(n, self.world_size)
        off = self.rank * base + min(self.rank, extra)
        return off, base + (1 if self.rank < extra else 0)


_CTX = DistContext()
_DEPTH = 0


def current() -> DistContext:
    return _CTX


def is_main() -> bool:
    return _CTX.is_main


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InputError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} is not an integer") from None


@contextlib.contextmanager
def session(cfg):
    """Initialise the process group when launched with WORLD_SIZE > 1 (nested calls reuse it)."""
    global _CTX, _DEPTH
    world = env_world_size()
    if _DEPTH or world <= 1:
        if world <= 1 and _DEPTH == 0:
            _CTX = DistContext(sync_bn=bool(getattr(cfg, "sync_bn", False)))
        _DEPTH += 1
        try:
            yield _CTX
        finally:
            _DEPTH -= 1
        return
    import torch.distributed as dist

    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
    if cfg.batch_size < world:
        raise InputError(f"--batch-size {cfg.batch_size} is smaller than the {world} processes: every "
                         "process needs at least one sample of each global batch")
    if not dist.is_initialized():  # once per process (re-creating it on the same store can hang)
        import atexit
        timeout = datetime.timedelta(seconds=float(os.environ.get("SPIKEBRIDGE_DIST_TIMEOUT", 1800)))
        dist.init_process_group(backend, timeout=timeout)
        atexit.register(_destroy)
    _CTX = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local,
                       backend=backend, sync_bn=bool(getattr(cfg, "sync_bn", False)))
    _DEPTH += 1
    try:
        yield _CTX
    finally:
        _DEPTH -= 1
        if _DEPTH == 0:
            _CTX = DistContext()


def _destroy() -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


# ---- collectives (no-ops with one process) -----------------------------------------------

def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if not _CTX.enabled:
        return t
    import torch.distributed as dist
    t = t.clone()
    dist.all_reduce(t)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if not _CTX.enabled:
        return t
    import torch.distributed as dist
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier() -> None:
    if _CTX.enabled:
        import torch.distributed as dist
        dist.barrier()


# ---- model wrapping ----------------------------------------------------------------------

class _Call(nn.Module):
    """DDP needs its forward to run the computation: forward(fn) returns fn(net)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, fn):
        return fn(self.net)


class Runner:
    """``runner(fn)`` computes fn(net) through DDP (gradients all-reduced at backward) when
    distributed, or directly with one process."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.ddp = None
        if _CTX.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP
            if _CTX.sync_bn:
                convert_sync_bn(net)
            dev = next(net.parameters()).device
            self.ddp = DDP(_Call(net), device_ids=[dev.index] if dev.type == "cuda" else None)

    def __call__(self, fn):
        return self.ddp(fn) if self.ddp is not None else fn(self.net)


def prepare(net: nn.Module) -> Runner:
    return Runner(net)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient is summed over ranks too (each rank's loss term depends on
    every rank's input through the sum)."""

    @staticmethod
    def forward(ctx, t):
        import torch.distributed as dist
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch on any device: per-channel sum, sum of squares (float64)
    and count are all-reduced (autograd through the all-reduce), then normalise and update the
    running statistics exactly as nn.BatchNorm does (biased variance to normalise, unbiased
    n/(n-1) into running_var). Same parameter and buffer names as BatchNorm1d/2d."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D)")

    def forward(self, x):
        if not (self.training and _CTX.enabled):
            return super().forward(x)
        C = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        xd = x.double()
        local_n = torch.tensor([x.numel() // max(C, 1)], dtype=torch.float64, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([xd.sum(dims), (xd * xd).sum(dims), local_n]))
        n = stats[-1]
        mean = stats[:C] / n
        var = (stats[C:2 * C] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var * n / (n - 1).clamp_min(1.0)
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        shape = (1, C) + (1,) * (x.dim() - 2)
        inv = torch.rsqrt(var + self.eps).to(x.dtype)
        y = (x - mean.to(x.dtype).view(shape)) * inv.view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_bn(net: nn.Module) -> nn.Module:
    """Replace every BatchNorm of ``net`` in place: torch's SyncBatchNorm on CUDA,
    AllReduceBatchNorm elsewhere. Parameters and buffers are the same tensor objects."""
    for name, child in list(net.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
                child, (nn.SyncBatchNorm, AllReduceBatchNorm)):
            cuda = child.running_mean is not None and child.running_mean.device.type == "cuda"
            cls = nn.SyncBatchNorm if cuda else AllReduceBatchNorm
            new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(net, name, new)
        else:
            convert_sync_bn(child)
    return net


# ---- random draws of the global batch ------------------------------------------------------

_ROWS = None


def global_rows():
    """(offset, global batch) while this rank computes rows offset.. of a larger global batch
    (set by the training loop through ``rows``), else None."""
    return _ROWS


@contextlib.contextmanager
def rows(offset: int, global_batch: int | None):
    """Within this block, random draws made for a batch dimension are made for the whole
    global batch and sliced at ``offset`` (spikebridge.models.snn2ann.keep_mask); ``rows(0, None)``
    switches that off."""
    global _ROWS
    prev, _ROWS = _ROWS, (None if global_batch is None else (int(offset), int(global_batch)))
    try:
        yield
    finally:
        _ROWS = prev


def sliced_loss(loss: torch.Tensor, local: int, global_batch: int) -> torch.Tensor:
    """A slice's per-sample-mean loss, scaled so that DDP's gradient average over ranks is the
    global batch's mean (see the module docstring)."""
    if not _CTX.enabled:
        return loss
    return loss * (_CTX.world_size * local / max(global_batch, 1))


# ---- launcher ------------------------------------------------------------------------------

def launch(nproc: int, cfg, out_dir, resume: bool = False, progress: bool = False, *, entry) -> dict:
    """Run ``entry(cfg, out_dir, progress=..., resume=...)`` (``spikebridge.models.train.train``:
    use ``spikebridge.models.train.launch``) in ``nproc`` processes on this machine with
    torchrun's own machinery (torch.distributed.launcher.api.elastic_launch, standalone
    c10d rendezvous on a free local port, no restarts). Returns rank 0's last metrics row.

    A worker that fails with an input error makes this raise the same InputError (exit 3);
    any other failure (a crash, a killed worker) raises BackendError (exit 4). Threads per
    worker: OMP_NUM_THREADS if set, else max(1, cpu_count // nproc) (torchrun would use 1)."""
    import json
    import logging
    import tempfile
    import uuid
    from dataclasses import asdict

    if nproc < 1:
        raise InputError("--nproc-per-node must be at least 1")
    # torch's elastic loggers print tracebacks of failed workers; the launcher reports one line
    # instead (LOGLEVEL, which those loggers read, set by the user wins)
    os.environ.setdefault("LOGLEVEL", "CRITICAL")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    level = getattr(logging, os.environ["LOGLEVEL"].upper(), logging.CRITICAL)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher", "torch.multiprocessing")):
            logging.getLogger(name).setLevel(level)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
    lc = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"spikebridge-{uuid.uuid4().hex[:8]}",
                      rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.1,
                      start_method="spawn", log_line_prefix_template=None)
    with tempfile.TemporaryDirectory(prefix="spikebridge-dist-") as errdir:
        try:
            res = elastic_launch(lc, _worker)(entry, asdict(cfg), str(out_dir), bool(resume), progress, errdir,
                                              threads)
        except ChildFailedError as e:
            errors = []
            for f in sorted(os.listdir(errdir)):
                try:
                    errors.append(json.loads(open(os.path.join(errdir, f)).read()))
                except (OSError, ValueError):
                    pass
            for err in errors:
                if err.get("exit_code") == 3:
                    raise InputError(err["message"]) from None
            # a rank killed by a signal comes first: the others' errors (gloo "connection reset
            # by peer", ...) follow from it, and which of them is reported first is a race
            died = any(f.exitcode < 0 for f in e.failures.values())
            if errors and not died:
                raise BackendError(f"distributed training failed on rank {errors[0]['rank']}: "
                                   f"{errors[0]['message']}") from None
            fails = "; ".join(f"rank {r}: exit code {f.exitcode}" + (f" (signal {-f.exitcode})" if f.exitcode < 0 else "")
                              for r, f in sorted(e.failures.items()))
            raise BackendError(f"distributed training failed: a worker process died ({fails})") from None
    return res.get(0) or {}


def _worker(entry, cfg_dict: dict, out_dir: str, resume: bool, progress: bool, errdir: str, threads: str):
    """One training process (spawned by elastic_launch). Errors end it with the CLI's exit code
    and a one-line message in ``errdir`` for the launcher (no traceback on the console)."""
    import json
    import sys

    from spikebridge.base.errors import SpikebridgeError
    rank = int(os.environ.get("RANK", 0))
    if threads:
        torch.set_num_threads(int(threads))
    try:
        from spikebridge.models.config import TrainConfig
        row = entry(TrainConfig(**cfg_dict), out_dir, progress=progress and rank == 0, resume=resume)
        return row if rank == 0 else None
    except SpikebridgeError as e:
        msg, code = str(e), e.exit_code
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - reported by the launcher in one line
        msg, code = f"internal error ({type(e).__name__}: {' '.join(str(e).split())[:300]})", 1
    with open(os.path.join(errdir, f"rank{rank}.json"), "w") as f:
        f.write(json.dumps({"rank": rank, "message": msg, "exit_code": code}))
    sys.exit(code)
