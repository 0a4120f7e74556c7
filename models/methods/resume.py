"""``--resume`` for the registry methods (qcfs, parallel, bridge, lasnn, ann); registers nothing.

A method's training is a sequence of named stages (``fit_ann`` / ``fit_snn`` calls: e.g.
bridge = ``bridge-ann`` pretraining then ``bridge-bptt`` fine-tune). After every epoch a
stage writes ``OUT/train_state.<stage>.pt``: the epoch, the model's state dict, the
optimizer, the scheduler, the shuffling generator, the global torch RNG, the stage's
history rows and the run's configuration. With ``resume=True`` a stage whose file exists
restores all of it and continues after the recorded epoch; a finished stage (epoch ==
its epochs) is skipped with its final weights restored, so a run killed in stage k
continues in stage k with everything before it exactly as it was. The steps after the
stages (conversion, calibration, evaluation) are deterministic and simply rerun. On the
CPU with the same seed the resumed run ends with bit-identical weights (tested).

A fresh run (no ``--resume``) deletes the stage files already in OUT first, so a stale
file of an older run can never be picked up by a later ``--resume``. Files are read with
``spikebridge.models.checkpoint.load_train_state`` (bounded, globals checked, weights_only).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from spikebridge.base.errors import CheckpointError, InputError
from spikebridge.base.fileio import atomic_path

# configuration fields a resumed run must share with the run that wrote the state
SAME = ("method", "arch", "dataset", "seed", "batch_size", "lr", "weight_decay", "schedule", "limit_train", "timesteps")


class Stages:
    """Per-stage training state of one output directory (see the module docstring)."""

    def __init__(self, out_dir, cfg, resume: bool):
        self.out = Path(out_dir)
        self.resume = bool(resume)
        self.config = {k: getattr(cfg, k, None) for k in SAME}
        self.config["extra"] = {k: v for k, v in sorted((getattr(cfg, "extra", None) or {}).items())
                                if k not in ("limit_test",)}
        self.config = json.loads(json.dumps(self.config, default=str))
        if not self.resume and self.out.is_dir():
            for p in self.out.glob("train_state.*.pt"):
                p.unlink()

    def path(self, stage: str) -> Path:
        return self.out / f"train_state.{stage}.pt"

    def restore(self, stage: str, model, opt, sched, gen, epochs: int) -> tuple[int, list[dict]]:
        """(epochs already done, their history rows); (0, []) when there is nothing to resume."""
        from spikebridge.models.checkpoint import load_train_state

        p = self.path(stage)
        if not self.resume or not p.is_file():
            return 0, []
        st = load_train_state(p, map_location="cpu",
                              required=("epoch", "epochs", "model", "optimizer", "scheduler", "generator",
                                        "torch_rng", "history", "config"))
        try:
            config = json.loads(st["config"])
            history = json.loads(st["history"])
            done, total = int(st["epoch"]), int(st["epochs"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"unreadable training state ({e})", file=str(p), place="config/history") from None
        for k in sorted(set(config) | set(self.config)):
            if config.get(k) != self.config.get(k):
                raise InputError(f"{p}: --resume with a different configuration than the run that wrote it "
                                 f"({k}: {config.get(k)!r} there, {self.config.get(k)!r} now)")
        if total != epochs or not 0 <= done <= epochs or len(history) != done:
            raise CheckpointError(f"stage {stage!r} recorded {done} of {total} epochs, this run has {epochs}",
                                  file=str(p), place="epoch")
        try:
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
            gen.set_state(st["generator"])
            torch.set_rng_state(st["torch_rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"training state does not fit this model ({msg})", file=str(p),
                                  place="model/optimizer") from None
        return done, history

    def save(self, stage: str, epoch: int, epochs: int, model, opt, sched, gen, history: list[dict]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        state = {"epoch": int(epoch), "epochs": int(epochs),
                 "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "generator": gen.get_state(),
                 "torch_rng": torch.get_rng_state(), "history": json.dumps(history),
                 "config": json.dumps(self.config)}
        with atomic_path(self.path(stage)) as tmp:
            torch.save(state, str(tmp))
