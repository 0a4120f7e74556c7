"""The training configuration every method reads, the two helpers every method uses first
(device choice, seeding), and the input encoding of training (``encode_batch``: the numpy
definitions of spikebridge.base.encoding on a torch batch, so training and simulate/report
encode alike). Registers nothing; imports nothing of ours but base."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from spikebridge.base.errors import InputError


@dataclass
class TrainConfig:
    method: str = "snn2ann"
    arch: str = "cnn"
    dataset: str = "digits"
    timesteps: int = 4
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 5e-4
    schedule: str = "step"  # step: x0.1 at 50/75/87.5% of the epochs (the released setting) | cosine
    smu: str = "stsu"
    ann_dropout: float = 0.2
    membrane_dropout: float = 0.5
    seed: int = 0
    device: str = "auto"
    limit_train: int | None = None
    limit_test: int | None = None
    neuron: str = "lif"  # bptt: if | lif
    surrogate: str = "atan"  # bptt: rectangular | atan | sigmoid
    tau: float = 2.0  # bptt LIF time constant, in steps
    v_threshold: float = 1.0  # bptt threshold
    augment: bool | None = None  # random crop + flip; None: on for 32x32 / 64x64 datasets
    channels_last: bool | None = None  # bptt: NHWC convolutions; None = on the CPU (measured faster there)
    sync_bn: bool = False  # distributed: BatchNorm statistics over the global batch (models/distributed.py)
    encoding: str = "direct"  # how static images become the input sequence (spikebridge.base.encoding)
    extra: dict = field(default_factory=dict)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda requested but CUDA is not available on this machine")
    if name not in ("cpu", "cuda"):
        raise InputError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def encoding_of(meta: dict) -> str:
    """The input encoding a checkpoint's model.json records (top-level ``encoding``, else its
    ``config``'s), ``direct`` for checkpoints written before encodings existed."""
    enc = meta.get("encoding") or (meta.get("config") or {}).get("encoding") or "direct"
    from spikebridge.base.encoding import check_encoding

    return check_encoding(enc)


def encode_batch(x: torch.Tensor, encoding: str, timesteps: int, rng: np.random.Generator | None,
                 sample_ndim: int, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """The training input of a batch, time-major (T, B, *shape), float32 on x's device.

    ``x`` (B, *shape) static images are encoded with ``spikebridge.base.encoding.encode`` (the
    same numpy definitions simulate and report use; rate draws from ``rng``). ``x`` with one
    more dimension than a sample plus batch, (B, T, *shape), is already a sequence (event
    frames): it passes through unencoded, only made time-major. ``sample_ndim``: len(shape).
    Direct encoding returns the broadcast (T, B, ...) view; networks that reuse one
    first-layer current over T never call this for direct. ``rows`` = (offset, global batch)
    when x is rows offset.. of a larger global batch (distributed training,
    models/distributed.py ``global_rows``): rate draws are made for the global batch and sliced,
    so N processes encode exactly as one process does."""
    from spikebridge.base.encoding import encode

    if x.dim() == sample_ndim + 2:
        return x.transpose(0, 1)
    if encoding == "direct":
        return x.unsqueeze(0).expand(int(timesteps), *x.shape)
    xn = x.detach().cpu().numpy()
    if rows is not None and encoding == "rate":
        off, n_global = int(rows[0]), int(rows[1])
        xg = np.zeros((n_global, *xn.shape[1:]), dtype=xn.dtype)
        xg[off:off + len(xn)] = xn
        seq = encode(xg, encoding, int(timesteps), rng=rng)[:, off:off + len(xn)]
    else:
        seq = encode(xn, encoding, int(timesteps), rng=rng)
    return torch.from_numpy(np.ascontiguousarray(seq, dtype=np.float32)).to(x.device)
