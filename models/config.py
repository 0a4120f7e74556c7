"""The training configuration every method reads, and the two helpers every method uses first
(device choice, seeding). Registers nothing; imports nothing of ours but base."""
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
