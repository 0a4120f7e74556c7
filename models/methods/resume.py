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
SAME = ("method", "arch", "dataset", "seed", "batch_size", "lr", "weight_decay", "schedule", "limit_train", "timesteps",
        "encoding")
# a setting added after runs were written: its value in those runs (absent = this)
SAME_DEFAULTS = {"encoding": "direct"}


MAX_METRICS_BYTES = 16 << 20  # metrics.jsonl: a few hundred bytes per epoch
MAX_ROWS = 1_000_000


def _setting(settings: dict, k: str):
    v = settings.get(k)
    return SAME_DEFAULTS.get(k) if v is None else v


def check_settings(theirs: dict, mine: dict, file: str) -> None:
    """Refuse a --resume whose settings differ from the run that wrote ``file`` (InputError
    naming the first differing setting, both values)."""
    for k in sorted(set(theirs) | set(mine), key=lambda k: (k != "method", k)):  # another method first
        if _setting(theirs, k) != _setting(mine, k):
            what = "method options" if k == "extra" else "--" + k.replace("_", "-")
            raise InputError(f"{file}: --resume with a different configuration than the run that wrote it "
                             f"({what}: {theirs.get(k)!r} there, {mine.get(k)!r} now)")


def _finite(value) -> bool:
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return value is None or isinstance(value, (str, int, bool))


def check_rows(rows, file: str, place: str = "rows") -> list[dict]:
    """Metrics rows as written by training: a list of objects with string keys, every number
    finite, each row's ``epoch`` (when present) a positive integer. CheckpointError otherwise."""
    if not isinstance(rows, list) or len(rows) > MAX_ROWS:
        raise CheckpointError("metrics rows must be a list (of at most a million objects)", file=file, place=place)
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not all(isinstance(k, str) for k in row):
            raise CheckpointError(f"row {i + 1} is not an object", file=file, place=place)
        if not _finite(row):
            raise CheckpointError(f"row {i + 1} has a non-finite or non-JSON value", file=file, place=place)
        ep = row.get("epoch", 1)
        if isinstance(ep, bool) or not isinstance(ep, int) or ep < 0:
            raise CheckpointError(f"row {i + 1}: epoch must be a non-negative integer", file=file, place=place)
    return rows


def read_metrics(path) -> list[dict]:
    """metrics.jsonl (one JSON object per line) through the bounded regular-file reader: a FIFO,
    a device, a directory, a file above MAX_METRICS_BYTES, invalid UTF-8 or JSON, NaN/Infinity,
    a row that is not an object: CheckpointError, nothing read beyond the bound."""
    from spikebridge.base.fileio import regular_file

    file = str(path)
    regular_file(file, MAX_METRICS_BYTES, CheckpointError)
    try:
        with open(file, "rb") as f:
            data = f.read(MAX_METRICS_BYTES + 1)
    except OSError as e:
        raise CheckpointError(f"cannot read: {e.strerror}", file=file, place="file") from None
    if len(data) > MAX_METRICS_BYTES:
        raise CheckpointError(f"file grew above the limit {MAX_METRICS_BYTES}", file=file, place="file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError("not UTF-8 text", file=file, place="file") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line, parse_constant=_no_constant))
        except (ValueError, RecursionError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(f"not a JSON object per line ({msg})", file=file, place=f"line {n}") from None
    return check_rows(rows, file, "rows")


def _no_constant(name):
    raise ValueError(f"non-finite number {name} is not allowed")


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
        if not self.resume or not (p.exists() or p.is_symlink()):
            return 0, []  # (a directory, FIFO or dangling link in its place is refused by load_train_state)
        st = load_train_state(p, map_location="cpu",
                              required=("epoch", "epochs", "model", "optimizer", "scheduler", "generator",
                                        "torch_rng", "history", "config"))
        try:
            config = json.loads(st["config"])
            history = json.loads(st["history"])
            done, total = int(st["epoch"]), int(st["epochs"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"unreadable training state ({e})", file=str(p), place="config/history") from None
        if not isinstance(config, dict):
            raise CheckpointError("unreadable run settings", file=str(p), place="config")
        check_settings(config, self.config, str(p))
        check_rows(history, str(p), "history")
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
