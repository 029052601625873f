"""Training: resumable runs equal uninterrupted ones, the exported checkpoints load, two-process
torchrun keeps ranks identical, and the student's schedule/gate helpers do what they say."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import record_sampler_settings, write_disc_dataset
from nitrogen_core.checkpoint import load_checkpoint
from nitrogen_core.diffusion import Schedule
from nitrogen_core.errors import NitroGenInputError
from nitrogen_core.sampler import image_weights
from nitrogen_core.train.common import Dist, batch_indices, learning_rate
from nitrogen_core.bench.tau import TailRule, calibrate, choose_threshold, from_student_run, markdown
from nitrogen_core.train.student import (GateSettings, StudentSettings, choose_width_schedule, gate_report,
                                         gate_trajectories, retrain_gate, sandwich_widths, train_student)
from nitrogen_core.train.teacher import TeacherSettings, train_teacher

REPO = Path(__file__).resolve().parent.parent
COLORS = {"blue": (30, 60, 220), "red": (220, 40, 40), "green": (40, 180, 60)}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """3 classes x 4 images of 16 px: a coloured disc at varying positions on white."""
    return write_disc_dataset(tmp_path_factory.mktemp("data"), 4, lambda i: (5 + 2 * i, 8), COLORS)


def teacher_settings(data: Path, out: Path, **kw) -> TeacherSettings:
    base = dict(data=str(data), out_dir=str(out), preset="tiny", steps=4, batch=4, warmup=2,
                sample_every=10_000, save_every=1)
    base.update(kw)
    return TeacherSettings(**base)


def state_digest(run: Path) -> str:
    tensors = load_file(str(run / "train_state.safetensors"))
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def teacher_run(tiny_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("teacher")
    assert train_teacher(teacher_settings(tiny_data, run))["done"]
    return run


def test_resumed_teacher_equals_uninterrupted(tiny_data, teacher_run, tmp_path):
    first = train_teacher(teacher_settings(tiny_data, tmp_path, stop_after=2))
    assert first["step"] == 2 and not first["done"]
    second = train_teacher(teacher_settings(tiny_data, tmp_path, stop_after=None))
    assert second["step"] == 4 and second["done"]
    assert state_digest(tmp_path) == state_digest(teacher_run)   # weights, EMA and optimizer, bit for bit


def test_teacher_checkpoint_loads(teacher_run):
    ck = load_checkpoint(teacher_run / "teacher.safetensors")
    assert ck.kind == "teacher" and ck.labels == ("blue", "green", "red")
    assert ck.train["steps"] == 4 and ck.width_schedule == (1.0,)
    assert (teacher_run / "log.jsonl").read_text().strip()
    assert any((teacher_run / "samples").glob("teacher_*.png"))


def test_rerun_with_other_settings_is_refused(tiny_data, teacher_run):
    with pytest.raises(NitroGenInputError, match="different command") as info:
        train_teacher(teacher_settings(tiny_data, teacher_run, batch=8))
    assert "batch" in str(info.value) and "\n" not in str(info.value)


def test_student_exports_gate_and_schedule(tiny_data, teacher_run, tmp_path):
    s = StudentSettings(teacher=str(teacher_run / "teacher.safetensors"), data=str(tiny_data), out_dir=str(tmp_path),
                        steps=2, batch=4, warmup=1, sample_every=10_000, gate_trajectories=4, gate_steps=5,
                        sample_steps=6, tau_images=6, refresh_every=0, forecast=0.5, sample_cfg=2.0)
    result = train_student(s)
    ck = load_checkpoint(tmp_path / "student.safetensors")
    assert ck.kind == "student" and ck.labels == ("blue", "green", "red")
    assert ck.config == load_checkpoint(teacher_run / "teacher.safetensors").config   # a 9-input gate, as before
    assert ck.sampler["refresh_every"] == 0 and ck.sampler["threshold"] == result["threshold"]
    assert ck.recommended_guards() == {"refresh_every": 0, "forecast": 0.5}   # tau was calibrated with them
    assert ck.sampler["cfg"] == 2.0                             # `train student --cfg`: calibrated at it
    assert ck.width_schedule == tuple(result["width_schedule"]) and len(ck.width_schedule) == 4
    fresh_gate = load_checkpoint(teacher_run / "teacher.safetensors").model.gate.state_dict()
    assert any(not torch.equal(v, fresh_gate[k]) for k, v in ck.model.gate.state_dict().items())
    assert 0 <= result["gate"]["decisions"]["0.05"]["accuracy"] <= 1
    # bench tau reruns the student's own threshold sweep: same rows, so it can re-render it unsampled
    rerun = calibrate(str(tmp_path / "student.safetensors"), 6, None, log=None)
    rebuilt = from_student_run(str(tmp_path / "calibration.json"), str(tmp_path / "student.safetensors"))
    assert rebuilt["rows"] == rerun["rows"] and rebuilt["threshold"] == rerun["threshold"] == result["threshold"]
    assert rebuilt["label_counts"] == rerun["label_counts"] and rebuilt["sampler"] == rerun["sampler"]
    assert rebuilt["confirmation"] == rerun["confirmation"] == result["threshold_confirmation"]
    calibration = json.loads((tmp_path / "calibration.json").read_text())
    # a run from before the confirmation step existed gets the same confirmation sampled
    (tmp_path / "unconfirmed.json").write_text(json.dumps({k: v for k, v in calibration.items()
                                                           if k != "threshold_confirmation"}))
    sampled = from_student_run(str(tmp_path / "unconfirmed.json"), str(tmp_path / "student.safetensors"))
    assert sampled["confirmation"] == rerun["confirmation"] and sampled["threshold"] == result["threshold"]
    assert sampled["confirmed_by_run"] is False and rebuilt["confirmed_by_run"] is True
    assert "samples the confirmation below, which that run predates" in markdown({**sampled, "command": "x"})
    (tmp_path / "other.json").write_text(json.dumps({**calibration, "threshold": result["threshold"] + 1}))
    with pytest.raises(NitroGenInputError, match="other.json.*give the run that made it") as info:
        from_student_run(str(tmp_path / "other.json"), str(tmp_path / "student.safetensors"))
    assert "\n" not in str(info.value)
    with pytest.raises(NitroGenInputError, match="not a `train student` run's calibration.json"):
        from_student_run(str(tmp_path / "log.jsonl"), str(tmp_path / "student.safetensors"))


def test_student_refuses_a_kv_forecast_for_a_unet(tiny_data, teacher_run, tmp_path):
    s = StudentSettings(teacher=str(teacher_run / "teacher.safetensors"), data=str(tiny_data), out_dir=str(tmp_path),
                        steps=2, batch=4, kv_forecast=1.0)
    with pytest.raises(NitroGenInputError, match="--kv-forecast 1.0 applies to the transformer backbone") as info:
        train_student(s)
    assert "\n" not in str(info.value) and not (tmp_path / "config.json").exists()


def test_student_refuses_a_student_as_teacher(tiny_data, teacher_run, tmp_path):
    student_run = tmp_path / "s"
    train_student(StudentSettings(teacher=str(teacher_run / "teacher.safetensors"), data=str(tiny_data),
                                  out_dir=str(student_run), steps=1, batch=4, warmup=1, sample_every=10_000,
                                  gate_trajectories=2, gate_steps=2, sample_steps=4, tau_images=3))
    with pytest.raises(NitroGenInputError, match="give the teacher"):
        train_student(StudentSettings(teacher=str(student_run / "student.safetensors"), data=str(tiny_data),
                                      out_dir=str(tmp_path / "s2")))
    # rerunning the finished run at another guidance scale redoes only the calibration, at that scale
    weights = load_file(student_run / "student.safetensors")
    train_student(StudentSettings(teacher=str(teacher_run / "teacher.safetensors"), data=str(tiny_data),
                                  out_dir=str(student_run), steps=1, batch=4, warmup=1, sample_every=10_000,
                                  gate_trajectories=2, gate_steps=2, sample_steps=4, tau_images=3, sample_cfg=2.5))
    assert load_checkpoint(student_run / "student.safetensors").sampler["cfg"] == 2.5
    again = load_file(student_run / "student.safetensors")
    assert all(torch.equal(again[k], v) for k, v in weights.items() if not k.startswith("gate."))


def test_choose_width_schedule_takes_narrowest_under_bound():
    errors = {0.25: [0.05, 0.05, 0.3, 0.3], 0.5: [0.2, 0.2, 0.08, 0.3], 1.0: [0.0, 0.0, 0.0, 0.0]}
    flat = [1.0] * 4
    assert choose_width_schedule(errors, flat, 0.1, 4) == (0.25, 0.25, 0.5, 1.0)
    assert choose_width_schedule(errors, flat, 0.1, 2) == (0.25, 1.0)   # segment sums: 0.25 -> 0.1; 0.5 -> 0.38
    # The same errors weighted like a real trajectory (early steps move the image most): narrow late only.
    assert choose_width_schedule(errors, [4.0, 1.0, 1.0, 0.25], 0.1, 4) == (1.0, 0.25, 0.5, 0.25)


def test_choose_width_schedule_measures_error_over_the_widest():
    errors = {0.5: [0.3, 0.3], 1.0: [0.25, 0.1]}     # width 1.0 itself is off from the teacher
    assert choose_width_schedule(errors, [1.0, 1.0], 0.1, 2) == (0.5, 1.0)


def test_image_weights_telescope_to_sigma_over_alpha():
    schedule = Schedule(1000)
    timesteps = schedule.sampling_timesteps(20)
    step_weight, remaining = image_weights(schedule, timesteps)
    assert all(w > 0 for w in step_weight)
    for i in range(20):
        assert sum(step_weight[i:]) == pytest.approx(remaining[i], rel=1e-6)
    assert step_weight[2] > 20 * step_weight[-2]      # early eps errors move the image far more


def test_sandwich_always_has_largest_and_smallest():
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(20):
        ws = sandwich_widths((0.25, 0.5, 0.75, 1.0), gen)
        assert ws[0] == 1.0 and ws[1] == 0.25 and ws[2] in (0.5, 0.75)
        seen.add(ws[2])
    assert seen == {0.5, 0.75}


def test_batches_split_ranks_disjointly():
    a = batch_indices(40, 5, step=3, seed=1, d=Dist(0, 2))
    b = batch_indices(40, 5, step=3, seed=1, d=Dist(1, 2))
    assert len(a) == len(b) == 5 and not set(a.tolist()) & set(b.tolist())
    assert torch.equal(a, batch_indices(40, 5, step=3, seed=1, d=Dist(0, 2)))   # stateless: resumable


def test_learning_rate_warms_up_then_decays():
    lrs = [learning_rate(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(x >= y for x, y in zip(lrs[10:], lrs[11:])) and lrs[-1] == pytest.approx(0.05, abs=1e-3)


def test_gate_targets_are_skip_errors(teacher_run):
    ck = load_checkpoint(teacher_run / "teacher.safetensors")
    data = gate_trajectories(ck.model, (1.0,), n=2, steps=6, cfg_scale=1.5, seed=0)
    cfg = ck.config
    grid = cfg.image_size // cfg.patch_size
    assert data["target"].shape[1:] == (grid, grid) and (data["target"] >= 0).all()
    assert data["x"].shape[0] == data["target"].shape[0] > 0
    report = gate_report(ck.model.gate, data, thresholds=(0.05,))
    assert set(report) >= {"log_rmse", "pearson", "decisions"}


def test_gate_targets_with_a_forecast_are_the_forecasts_errors(teacher_run):
    """With --forecast, a skipped unit steps with the forecast, so the gate learns the forecast's
    error: on a gate-decided step whose eps is fresh everywhere before (all blocks computed, no
    skips yet), the forecast is eps_last + slope, and the target is ||fresh - that|| per patch."""
    ck = load_checkpoint(teacher_run / "teacher.safetensors")
    cfg = ck.config
    grid = cfg.image_size // cfg.patch_size
    everywhere = lambda x, t, eps_cached, eps_delta, age=None: torch.full((x.shape[0], grid, grid), 1e3)
    reuse = gate_trajectories(ck.model, (1.0,), n=2, steps=8, cfg_scale=1.5, seed=0, policy=everywhere)
    ahead = gate_trajectories(ck.model, (1.0,), n=2, steps=8, cfg_scale=1.5, seed=0, policy=everywhere,
                              forecast=1.0)
    # every block computed every step: same trajectory, same inputs; only the target differs
    for key in ("x", "eps_cached", "eps_delta"):
        assert torch.equal(reuse[key], ahead[key]), key
    timesteps = Schedule(cfg.train_timesteps).sampling_timesteps(8)
    step = [timesteps.index(int(t)) for t in reuse["t"][::2]]                 # sampling step of each gated step
    compared = 0
    for k in range(len(step) - 1):
        if step[k] < 2 or step[k + 1] != step[k] + 1:       # need two computed steps before, the next recorded
            continue
        rows, nxt = slice(2 * k, 2 * k + 2), slice(2 * k + 2, 2 * k + 4)
        fresh = reuse["eps_cached"][nxt]                                       # this step's fresh eps
        skip = reuse["eps_cached"][rows] + reuse["eps_delta"][rows]             # last + slope (gap 1)
        want = F.avg_pool2d((fresh - skip).square().mean(1, keepdim=True), cfg.patch_size)[:, 0].sqrt()
        torch.testing.assert_close(ahead["target"][rows], want)
        compared += 1
    assert compared >= 2
    assert not torch.allclose(ahead["target"], reuse["target"])


def test_on_policy_trajectories_follow_the_gates_decisions(teacher_run):
    """With the gate as policy, a gate that predicts a large residual everywhere recomputes every
    block at every step; one that predicts none skips every block until max_skips forces it."""
    ck = load_checkpoint(teacher_run / "teacher.safetensors")
    cfg = ck.config
    grid = cfg.image_size // cfg.patch_size

    def constant(value):
        return lambda x, t, eps_cached, eps_delta, age=None: torch.full((x.shape[0], grid, grid), value)

    def cached_changes(policy):
        data = gate_trajectories(ck.model, (1.0,), n=2, steps=8, cfg_scale=1.5, seed=0, policy=policy)
        steps = data["eps_cached"].view(-1, 2, *data["eps_cached"].shape[1:])    # (gated steps, 2, C, H, W)
        return (steps[1:] != steps[:-1]).float().mean().item()                  # share of cached eps refreshed

    everywhere, nowhere = cached_changes(constant(1e3)), cached_changes(constant(0.0))
    assert everywhere == 1.0                     # every block was recomputed between gated steps
    assert nowhere < 0.75                        # blocks sat out steps (forced back only by max_skips)
    # the same seed with random skips is a different pattern again: the policy is what decides
    assert cached_changes(None) not in (everywhere, nowhere)


TORCHRUN_SCRIPT = textwrap.dedent("""
    import hashlib, os, sys
    import torch
    from nitrogen_core.train.teacher import TeacherSettings, train_teacher
    data, out, digests = sys.argv[1:4]
    result = train_teacher(TeacherSettings(data=data, out_dir=out, preset="tiny", steps=3, batch=2, warmup=1,
                                           sample_every=10_000, save_every=1))
    h = hashlib.sha256()
    for name, t in sorted(result["unet"].state_dict().items()):
        h.update(t.numpy().tobytes())
    with open(os.path.join(digests, "rank%s" % os.environ["RANK"]), "w") as f:
        f.write(h.hexdigest())
""")


def test_torchrun_two_processes_keep_identical_weights(tiny_data, tmp_path):
    script = tmp_path / "ddp_teacher.py"
    script.write_text(TORCHRUN_SCRIPT)
    digests = tmp_path / "digests"
    digests.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tiny_data), str(tmp_path / "run"), str(digests)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    d0, d1 = (digests / "rank0").read_text(), (digests / "rank1").read_text()
    assert d0 == d1
    assert load_checkpoint(tmp_path / "run" / "teacher.safetensors").train["batch"] == 4   # 2 ranks x 2


def test_choose_threshold_by_the_tail_rule():
    rows = [{"threshold": 0.0, "psnr_p1": 60.0, "psnr_min": 60.0}, {"threshold": 0.01, "psnr_p1": 35.0, "psnr_min": 26.0},
            {"threshold": 0.05, "psnr_p1": 33.0, "psnr_min": 24.0}, {"threshold": 0.1, "psnr_p1": 33.0, "psnr_min": 28.0}]
    assert choose_threshold(rows, TailRule(32.0, 25.0)) == 0.01      # 0.05's worst fails, so 0.1 is not trusted
    assert choose_threshold(rows, TailRule(32.0, 20.0)) == 0.1
    assert choose_threshold(rows, TailRule(34.0, 20.0)) == 0.01      # the 1st percentile decides
    assert choose_threshold(rows, TailRule(70.0, 20.0)) == 0.0


@pytest.fixture(scope="module")
def student_file(tiny_data, teacher_run, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("student")
    train_student(StudentSettings(teacher=str(teacher_run / "teacher.safetensors"), data=str(tiny_data),
                                  out_dir=str(run), steps=1, batch=4, warmup=1, sample_every=10_000,
                                  gate_trajectories=2, gate_steps=2, sample_steps=6, tau_images=3, sample_cfg=2.0))
    return run / "student.safetensors"


def test_train_gate_keeps_the_student_and_recalibrates(tiny_data, student_file, tmp_path, monkeypatch):
    """`train gate`: a new gate (here age-aware) and threshold for a finished student, without its
    teacher; the network, labels and width schedule are the student's."""
    import nitrogen_core.sampler as sampler_module
    seen = record_sampler_settings(monkeypatch, sampler_module, "sample")     # bench.tau imports it per call
    before = load_checkpoint(student_file)
    assert not before.config.gate_age
    result = retrain_gate(GateSettings(student=str(student_file), data=str(tiny_data), out_dir=str(tmp_path / "g"),
                                       gate_trajectories=2, gate_steps=3, tau_images=3, forecast=1.0, accumulate=0.5,
                                       dense_above=0.6, gate_age=True))
    ck = load_checkpoint(tmp_path / "g" / "student.safetensors")
    assert ck.kind == "student" and ck.config == dataclasses.replace(before.config, gate_age=True)
    assert ck.labels == before.labels
    assert ck.width_schedule == before.width_schedule
    assert ck.sampler == {"steps": before.sampler["steps"], "cfg": 2.0, "threshold": result["threshold"],
                          "refresh_every": 3, "forecast": 1.0, "accumulate": 0.5,
                          "dense_above": 0.6}                                            # its steps and cfg, new guards
    assert ck.recommended_guards() == {"refresh_every": 3, "forecast": 1.0, "accumulate": 0.5, "dense_above": 0.6}
    # the threshold was calibrated with the guards it recommends
    adaptive = [st for st in seen if st.mode == "adaptive" and st.threshold > 0]
    assert adaptive and all((st.dense_above, st.accumulate, st.forecast) == (0.6, 0.5, 1.0) for st in adaptive)
    new, orig = ck.model.net.state_dict(), before.model.net.state_dict()
    assert all(torch.equal(new[k], orig[k]) for k in orig)      # the network is untouched
    assert ck.train["stage"] == "gate" and ck.train["student_train"]["stage"] == "student"
    assert ck.train["class_counts"] == [4, 4, 4]
    assert json.loads((tmp_path / "g" / "calibration.json").read_text())["threshold"] == result["threshold"]


def test_train_gate_refuses_bad_input(tiny_data, teacher_run, student_file, tmp_path):
    teacher = str(teacher_run / "teacher.safetensors")
    with pytest.raises(NitroGenInputError, match=r"--student .*teacher.safetensors' is a 'teacher' checkpoint; "
                                                  r"give a student") as info:
        retrain_gate(GateSettings(student=teacher, data=str(tiny_data), out_dir=str(tmp_path / "a")))
    assert "\n" not in str(info.value)
    with pytest.raises(NitroGenInputError, match="--kv-forecast 1.0 applies to the transformer backbone"):
        retrain_gate(GateSettings(student=str(student_file), data=str(tiny_data), out_dir=str(tmp_path / "b"),
                                  kv_forecast=1.0))
    other = write_disc_dataset(tmp_path / "other", 2, lambda i: (5 + 2 * i, 8), {"cyan": (0, 200, 200)})
    with pytest.raises(NitroGenInputError, match=r"--data classes \['cyan'\] differ from the student's labels"):
        retrain_gate(GateSettings(student=str(student_file), data=str(other), out_dir=str(tmp_path / "c")))
    assert not any((tmp_path / d).exists() for d in "abc")


def test_a_run_started_before_a_config_field_existed_resumes(tiny_data, tmp_path):
    """Code that adds a config field (at its default) must not refuse a run it already started:
    the saved config is resolved as the current code reads it before comparing."""
    first = train_teacher(teacher_settings(tiny_data, tmp_path, stop_after=2))
    assert first["step"] == 2
    file = tmp_path / "config.json"
    saved = json.loads(file.read_text())
    for key in ("backbone", "token_size", "dit_dim"):              # fields a later commit added
        del saved["config"][key]
    file.write_text(json.dumps(saved))
    assert train_teacher(teacher_settings(tiny_data, tmp_path))["done"]
    saved["config"]["base_channels"] += 4                          # a real change is still refused
    file.write_text(json.dumps(saved))
    with pytest.raises(NitroGenInputError, match="different command"):
        train_teacher(teacher_settings(tiny_data, tmp_path))


STUDENT = ("student", "--teacher", "t.safetensors")
GATE = ("gate", "--student", "s.safetensors")


@pytest.mark.parametrize("command, flags, needle", [
    (STUDENT, ("--cfg", "99"), "--cfg 99.0 is out of range; allowed 0..30"),
    (STUDENT, ("--cfg", "nan"), "--cfg nan is out of range"),
    (STUDENT, ("--cfg", "x"), "argument --cfg: invalid float value: 'x'"),
    (STUDENT, ("--width-error-bound", "0"), "--width-error-bound 0.0 must be a positive number"),
    (STUDENT, ("--forecast", "1.5"), "--forecast 1.5 is out of range; allowed 0..1"),
    (STUDENT, ("--forecast", "nan"), "--forecast nan is out of range"),
    (STUDENT, ("--kv-forecast", "-1"), "--kv-forecast -1.0 is out of range; allowed 0..1"),
    (GATE, ("--cfg", "99"), "--cfg 99.0 is out of range; allowed 0..30"),
    (GATE, ("--forecast", "-0.5"), "--forecast -0.5 is out of range; allowed 0..1"),
    (GATE, ("--kv-forecast", "inf"), "--kv-forecast inf is out of range; allowed 0..1"),
    (GATE, ("--gate-steps", "0"), "argument --gate-steps: expected an integer >= 1, got 0"),
    (GATE, ("--accumulate", "2"), "--accumulate 2.0 is out of range; allowed 0..1"),
    (STUDENT, ("--accumulate", "nan"), "--accumulate nan is out of range"),
    (GATE, ("--dense-above", "1.5"), "--dense-above 1.5 is out of range; allowed 0..1"),
    (STUDENT, ("--dense-above", "-0.1"), "--dense-above -0.1 is out of range; allowed 0..1"),
], ids=lambda v: v[0] if isinstance(v, tuple) and v in (STUDENT, GATE) else None)
def test_train_cli_bad_flags_are_one_line_errors(tmp_path, command, flags, needle):
    proc = subprocess.run([sys.executable, "-m", "nitrogen_core", "train", *command,
                           "--data", str(tmp_path), "--out", str(tmp_path / "run"), *flags],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "error:" in lines[-1] and needle in lines[-1], proc.stderr
    assert not (tmp_path / "run").exists()
