"""`train teacher`, `train student` and `train gate` argument parsing; the stages import lazily."""
from __future__ import annotations

import argparse
import math


def _int_at_least(minimum: int):
    """An argparse type: an integer >= minimum, else argparse's one-line error naming the value."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


_non_negative_int, _positive_int = _int_at_least(0), _int_at_least(1)


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected minutes as a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of minutes, got {text!r}")
    return value


def add_train_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the teacher, then the student + gate",
                              description="Two-stage training. Rerun the same command to resume a run.")
    sub = p.add_subparsers(dest="train_command", required=True, metavar="{teacher,student,gate}")

    t = sub.add_parser("teacher", help="stage 1: full-width teacher")
    t.add_argument("--data", required=True, help="ImageFolder dataset (DIR/<class>/*.png), e.g. from `data emoji`")
    t.add_argument("--preset", default="emoji32", help="model preset (default emoji32)")
    t.add_argument("--out", required=True, help="run folder; rerunning with the same folder resumes")
    t.add_argument("--steps", type=_positive_int, default=6000, help="total optimizer steps (default 6000)")
    t.add_argument("--batch", type=_positive_int, default=64, help="batch per process (default 64)")
    t.add_argument("--minutes", type=_minutes, default=None,
                   help="stop this invocation after M minutes (state is saved; rerun to continue)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--sample-every", type=_positive_int, default=500, help="sample grid every K steps")
    t.set_defaults(func=cmd_train_teacher)

    st = sub.add_parser("student", help="stage 2: distilled slimmable student, width schedule and gate")
    st.add_argument("--teacher", required=True, help="teacher checkpoint (RUN/teacher.safetensors)")
    st.add_argument("--data", required=True, help="the teacher's ImageFolder dataset")
    st.add_argument("--out", required=True, help="run folder; rerunning with the same folder resumes")
    st.add_argument("--steps", type=_positive_int, default=1000, help="distillation steps (default 1000)")
    st.add_argument("--batch", type=_positive_int, default=64, help="batch per process (default 64)")
    st.add_argument("--minutes", type=_minutes, default=None,
                    help="stop this invocation after M minutes (state is saved; rerun to continue)")
    st.add_argument("--width-error-bound", type=float, default=0.01,
                    help="max extra final-image error (pixels in [-1, 1]) a narrower width may add per "
                         "trajectory segment, vs width 1.0 (default 0.01)")
    st.add_argument("--cfg", type=float, default=1.5,
                    help="the guidance scale the checkpoint recommends; the width schedule, the gate's own "
                         "trajectories and the default threshold are calibrated at it (default 1.5)")
    _add_calibration_arguments(st)
    st.add_argument("--sample-every", type=_positive_int, default=250, help="sample grid every K steps")
    st.set_defaults(func=cmd_train_student)

    gt = sub.add_parser("gate", help="a new gate and default threshold for a finished student (no teacher needed)",
                        description="Retrain the gate of a student checkpoint and choose its default threshold "
                                    "by the tail rule; the student's network and "
                                    "width schedule are kept. Writes OUT/student.safetensors and "
                                    "OUT/calibration.json.")
    gt.add_argument("--student", required=True, help="student checkpoint, e.g. a bundled one")
    gt.add_argument("--data", required=True, help="the student's ImageFolder dataset (its classes, in order)")
    gt.add_argument("--out", required=True, help="output folder")
    gt.add_argument("--cfg", type=float, default=None,
                    help="guidance scale to calibrate at (default: the checkpoint's recommended one)")
    gt.add_argument("--gate-age", action="store_true",
                    help="the new gate also reads each patch's age (steps since it was computed): a better "
                         "predictor, but on the bundled transformer not a better default (README)")
    _add_calibration_arguments(gt)
    gt.set_defaults(func=cmd_train_gate)


def _add_calibration_arguments(p) -> None:
    """The guards and gate-data flags `train gate` shares with `train student`."""
    p.add_argument("--refresh-every", type=_non_negative_int, default=3,
                   help="the dense refresh period the checkpoint recommends (0: none after warm-up); the "
                        "default threshold is calibrated with it (default 3)")
    p.add_argument("--forecast", type=float, default=0.0, metavar="F",
                   help="the eps forecast strength the checkpoint recommends (0..1; 0: a skipped unit reuses "
                        "its last eps, 1: it continues the line through its last two); the gate learns the "
                        "error of what a skip uses and the default threshold is calibrated with it (default 0)")
    p.add_argument("--kv-forecast", type=float, default=0.0, metavar="F",
                   help="transformer only: the key/value forecast strength the checkpoint recommends (0..1; "
                        "0: tokens a sparse step leaves out lend their stale keys/values); the default "
                        "threshold is calibrated with it (default 0)")
    p.add_argument("--accumulate", type=float, default=0.0, metavar="A",
                   help="the weight the checkpoint recommends for a block's predicted image change summed over "
                        "the steps it skipped since it was computed (0..1; 0: each step judged alone); the "
                        "default threshold is calibrated with it (default 0)")
    p.add_argument("--dense-above", type=float, default=None, metavar="D",
                   help="the share of units above which a step the checkpoint recommends runs dense instead of "
                        "sparse (0..1; default: the backbone's break-even, 0.25 for the U-Net and 0.9 for the "
                        "transformer); the default threshold is calibrated with it")
    p.add_argument("--gate-trajectories", type=_positive_int, default=48)
    p.add_argument("--gate-steps", type=_positive_int, default=1500)
    p.add_argument("--seed", type=int, default=0)


def cmd_train_teacher(args) -> int:
    from ..config import PRESETS
    from ..errors import NitroGenInputError
    from .teacher import TeacherSettings, train_teacher

    if args.preset not in PRESETS:
        raise NitroGenInputError(f"--preset {args.preset!r} is unknown; choose one of {sorted(PRESETS)}")
    train_teacher(TeacherSettings(data=args.data, out_dir=args.out, preset=args.preset, steps=args.steps,
                                  batch=args.batch, minutes=args.minutes, seed=args.seed,
                                  sample_every=args.sample_every))
    return 0


def _check_calibration_arguments(args) -> None:
    from ..errors import NitroGenInputError
    from ..sampler import LIMITS

    lo, hi = LIMITS["cfg"]
    if args.cfg is not None and not (math.isfinite(args.cfg) and lo <= args.cfg <= hi):
        raise NitroGenInputError(f"--cfg {args.cfg} is out of range; allowed {lo:g}..{hi:g}")
    # strengths and shares in 0..1; dense_above may be unset (the backbone's break-even)
    for flag, value in (("--forecast", args.forecast), ("--kv-forecast", args.kv_forecast),
                        ("--accumulate", args.accumulate), ("--dense-above", args.dense_above)):
        if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise NitroGenInputError(f"{flag} {value} is out of range; allowed 0..1")


def cmd_train_gate(args) -> int:
    from .student import GateSettings, retrain_gate

    _check_calibration_arguments(args)
    retrain_gate(GateSettings(student=args.student, data=args.data, out_dir=args.out, seed=args.seed,
                              sample_cfg=args.cfg, gate_trajectories=args.gate_trajectories,
                              gate_steps=args.gate_steps, refresh_every=args.refresh_every,
                              forecast=args.forecast, kv_forecast=args.kv_forecast, accumulate=args.accumulate,
                              dense_above=args.dense_above, gate_age=args.gate_age))
    return 0


def cmd_train_student(args) -> int:
    from ..errors import NitroGenInputError
    from .student import StudentSettings, train_student

    if not (math.isfinite(args.width_error_bound) and args.width_error_bound > 0):
        raise NitroGenInputError(f"--width-error-bound {args.width_error_bound} must be a positive number")
    _check_calibration_arguments(args)
    train_student(StudentSettings(teacher=args.teacher, data=args.data, out_dir=args.out, steps=args.steps,
                                  batch=args.batch, minutes=args.minutes, seed=args.seed,
                                  width_error_bound=args.width_error_bound,
                                  gate_trajectories=args.gate_trajectories, gate_steps=args.gate_steps,
                                  refresh_every=args.refresh_every, forecast=args.forecast,
                                  kv_forecast=args.kv_forecast, accumulate=args.accumulate,
                                  dense_above=args.dense_above, sample_cfg=args.cfg, sample_every=args.sample_every))
    return 0
