"""``train(cfg, out_dir)``: train any registered method (models/methods/: snn2ann, bptt, qcfs,
parallel, bridge, lasnn, ann) and write its checkpoint directory.

Every method is looked up in the method registry (an unknown ``--method`` is refused with
one line naming the known ones) and trained by its own ``train``; SNN2ANN and BPTT share
the loop in models/methods/snn2ann.py. Under torchrun (WORLD_SIZE > 1) every method trains
data-parallel with DDP; rank 0 alone writes the outputs (models/distributed.py states the
rules). ``TrainConfig``, ``pick_device`` and ``seed_everything`` live in models/config.py
and are re-exported here.
"""
from __future__ import annotations

from spikebridge.base.errors import InputError
from spikebridge.models.config import TrainConfig, pick_device, seed_everything

__all__ = ["TrainConfig", "launch", "pick_device", "seed_everything", "train"]


def train(cfg: TrainConfig, out_dir, progress: bool = True, resume: bool = False) -> dict:
    """Train; write checkpoint, metrics.jsonl and curves.png into ``out_dir``; return the last metrics."""
    from spikebridge.models import distributed as D
    from spikebridge.models import methods as method_registry
    from spikebridge.models.checkpoint import check_checkpoint_files

    spec = method_registry.require(cfg.method, error=InputError)
    check_encoding(cfg, spec)
    check_checkpoint_files(out_dir)  # a directory or /proc link named train_state.pt is refused, not skipped
    with D.session(cfg) as ctx:
        return spec.train(cfg, out_dir, progress and ctx.is_main, resume)


def check_encoding(cfg: TrainConfig, spec) -> None:
    """Refuse, in one line, an input encoding the method cannot train with (MethodSpec.encodings)."""
    from spikebridge.base.encoding import check_encoding as known
    from spikebridge.models import methods as method_registry

    known(cfg.encoding)
    if cfg.encoding not in spec.encodings:
        able = sorted(n for n in method_registry.names() if cfg.encoding in method_registry.get(n).encodings)
        raise InputError(f"--encoding {cfg.encoding}: method {spec.name} {spec.no_encoding}; methods that train "
                         f"with it: {', '.join(able) or 'none'}")


def launch(nproc: int, cfg: TrainConfig, out_dir, resume: bool = False, progress: bool = False) -> dict:
    """``train`` in ``nproc`` local processes (models/distributed.py ``launch``); rank 0's last row."""
    from spikebridge.models import distributed as D

    return D.launch(nproc, cfg, out_dir, resume=resume, progress=progress, entry=train)
