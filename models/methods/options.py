"""Command-line options of the qcfs, parallel, bridge and lasnn methods, and SNN2ANN's
``--spike-penalty`` (registers nothing).

``add_train_options(parser)`` adds them to ``spikebridge train``; ``extra_from_args(args)``
turns the parsed values into ``TrainConfig.extra`` (only the ones given).
"""
from __future__ import annotations

# learning-rate schedules of every method (spikebridge.models.methods.common.make_optimizer); the
# --schedule choices of train, bench train and bench methods
SCHEDULES = ("step", "cosine")

OPTIONS = [
    ("--L", int, "L", "qcfs/parallel: QCFS quantization levels of the ANN (default 4)"),
    ("--source", str, "source", "parallel: qcfs (QCFS ANN, default) | relu (training-free from a ReLU ANN)"),
    ("--deploy", str, "deploy", "parallel: exported form: sequential (IF, runs everywhere; default) | window "
                                "(count-then-emit IF, exact; eventsim only)"),
    ("--teacher", str, "teacher", "lasnn: ANN teacher checkpoint (ann, qcfs or snn2ann; default: train one); "
                                  "parallel: the source ANN checkpoint (skips training)"),
    ("--teacher-epochs", int, "teacher_epochs", "lasnn: epochs of the on-the-fly teacher (default --epochs)"),
    ("--finetune-epochs", int, "finetune_epochs", "bridge: BPTT fine-tune epochs (default epochs // 4, >= 1)"),
    ("--width", float, "width", "lasnn: student width multiplier (default 0.75)"),
    ("--alpha", float, "alpha", "lasnn: KD weight (default 1)"),
    ("--kd-tau", float, "tau", "lasnn: KD temperature (default 4)"),
    ("--beta", float, "beta", "lasnn: attention-transfer weight (default 1)"),
    ("--student-lr", float, "student_lr", "lasnn: the student's Adam learning rate (default 5 x --lr)"),
    ("--limit-test", int, "limit_test", "evaluate on the first N test samples only (every method)"),
    ("--spike-penalty", float, "spike_penalty", "snn2ann: trade accuracy for fewer spikes: add LAMBDA x the "
                                                "firing rate (spikes per neuron per step) to the loss; default 0 "
                                                "(off, the paper's method); see docs/methods.md", "LAMBDA"),
]


def add_train_options(parser) -> None:
    have = set(parser._option_string_actions)
    g = parser.add_argument_group("qcfs / parallel / bridge / lasnn / snn2ann options")
    for flag, typ, dest, help_, *metavar in OPTIONS:  # an optional fifth field: the metavar
        if flag not in have:
            g.add_argument(flag, type=typ, dest=f"m_{dest}", help=help_, metavar=metavar[0] if metavar else None)
    if "--limit-train" not in have:
        g.add_argument("--limit-train", type=int, dest="limit_train", help="train on the first N samples only")


def extra_from_args(args) -> dict:
    return {dest: getattr(args, f"m_{dest}") for _, _, dest, *_ in OPTIONS
            if getattr(args, f"m_{dest}", None) is not None}
