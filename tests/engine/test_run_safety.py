"""Runs that never lose work or lie (issue 12): config values checked and coerced by type, unknown keys
and out-of-range values refused before any work, worker errors as one line, CSV edge cases, diverging
runs, corrupt checkpoints, resume mismatches, the run lock, leftovers, log de-duplication and
skip counts; and the drop-in details (parameter order, thop, gradient strides)."""
from __future__ import annotations

import contextlib
import copy
import glob
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml

from dvflnet.data import AnnotationError, VideoReadError, read_annotations, read_class_names
from dvflnet.data.synthetic import generate_dataset
from dvflnet.engine import CheckpointManager, ConfigError, check_config, load_config, run_training
from dvflnet.engine import training
from dvflnet.engine.run_state import RunLock, RunLockedError
from dvflnet.engine.training import TrainingDiverged
from dvflnet.models import CheckpointError, VideoFocalNet, create_model, load_checkpoint
from helpers import tiny_run_config

CLASSES = ("move_left", "move_right")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return generate_dataset(root, train_per_class=4, val_per_class=1, num_frames=6, size=32, classes=CLASSES, seed=5)


def small_config(videos, output, **train) -> dict:
    """8 videos, batch 4: 2 steps per epoch of a tiny model; no evaluation."""
    return tiny_run_config(videos, output, len(CLASSES), resume="auto", data={"num_frames": 4},
                           train=dict(epochs=1, warmup_epochs=0, batch_size=4, base_lr=0.1, log_every=1, eval_every=0,
                                      mixup=False) | train)


def _records(output) -> list[dict]:
    def no_constants(name):
        raise AssertionError(f"log.jsonl holds a bare {name}")

    with open(os.path.join(output, "log.jsonl")) as f:
        return [json.loads(line, parse_constant=no_constants) for line in f]


# -- configuration --------------------------------------------------------------------------------------
def test_numbers_written_as_people_write_them_are_numbers(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  base_lr: 3e-4\n  weight_decay: 1e-4\n  min_lr: 1E-6\n  epochs: 30.0\n"
                    "data:\n  crop_area: [8e-2, 1]\n")
    assert yaml.safe_load(path.read_text())["train"]["base_lr"] == "3e-4"  # what PyYAML (YAML 1.1) gives
    cfg = load_config(str(path), ["train.warmup_lr", "2e-5", "kd.temperature", "10"])
    assert cfg["train"]["base_lr"] == 3e-4 and isinstance(cfg["train"]["base_lr"], float)
    assert cfg["train"]["min_lr"] == 1e-6 and cfg["train"]["weight_decay"] == 1e-4
    assert cfg["train"]["epochs"] == 30 and isinstance(cfg["train"]["epochs"], int)
    assert cfg["data"]["crop_area"] == [0.08, 1.0] and cfg["train"]["warmup_lr"] == 2e-5
    assert cfg["kd"]["temperature"] == 10.0 and isinstance(cfg["kd"]["temperature"], float)


@pytest.mark.parametrize("text, match", [
    ("train:\n  epochs: ten\n", r"run.yaml: train.epochs: expected an integer, got 'ten'"),
    ("train:\n  epochs: 2.5\n", r"train.epochs: expected an integer, got 2.5"),
    ("train:\n  base_lr: fast\n", r"train.base_lr: expected a number, got 'fast'"),
    ("train:\n  base_lr: .nan\n", r"train.base_lr: expected a finite number"),
    ("train:\n  mixup: 1\n", r"train.mixup: expected true or false, got 1"),
    ("train:\n  batch_size: true\n", r"train.batch_size: expected an integer, got True"),
    ("train:\n  optimizer: 3\n", r"train.optimizer: expected a string, got 3"),
    ("data:\n  crop_area: 0.5\n", r"data.crop_area: expected a pair"),
    ("eval:\n  views: [1, 1]\n", r"eval.views\[0\]: expected a pair"),
    ("model:\n  kwargs: {embed_dim: wide}\n", r"model.kwargs.embed_dim: expected an integer"),
    ("model:\n  kwargs: {depths: 2}\n", r"model.kwargs.depths: expected a list of integers"),
])
def test_bad_values_name_the_key_the_file_and_the_value(tmp_path, text, match):
    (tmp_path / "run.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(str(tmp_path / "run.yaml"))


@pytest.mark.parametrize("where, text, opts, match", [
    ("file", "train:\n  epoch: 3\n", [], r"run.yaml: unknown key 'train.epoch'"),
    ("opts", "", ["train.lr", "0.1"], r"--opts: unknown key 'train.lr'"),
    ("kwargs in file", "model:\n  kwargs: {embed_dims: 32}\n", [], r"unknown key model.kwargs.embed_dims"),
    ("kwargs in opts", "", ["model.kwargs.depth", "[1, 1]"], r"--opts: unknown key model.kwargs.depth"),
    ("teacher kwargs", "teacher:\n  kwargs: {focal_level: 3}\n", [], r"unknown key teacher.kwargs.focal_level"),
    ("kwargs set elsewhere", "model:\n  kwargs: {num_classes: 3}\n", [], r"model.kwargs.num_classes: not settable here; use data.num_classes"),
])
def test_unknown_keys_are_errors_everywhere(tmp_path, where, text, opts, match):
    (tmp_path / "run.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(str(tmp_path / "run.yaml"), opts)


def test_model_kwargs_from_opts_are_coerced_and_merged():
    cfg = load_config(None, ["model.kwargs.embed_dim", "16", "model.kwargs.depths", "[1, 1, 1, 1]"])
    assert cfg["model"]["kwargs"] == {"embed_dim": 16, "depths": [1, 1, 1, 1]}


def test_unknown_model_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="embed_dims"):
        VideoFocalNet(embed_dims=32)
    with pytest.raises(TypeError, match="focal_level"):
        create_model("vfl_net_nano", focal_level=3)


def test_demo_config_top_level_typo_is_an_error(tmp_path):
    from dvflnet.experiments.demo import DEMO_CONFIG, load_demo_config

    spec = yaml.safe_load(open(DEMO_CONFIG))
    spec["distil"] = {"kd": {"alpha": 0.5}}
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['distil'\] at the top level"):
        load_demo_config(str(tmp_path / "demo.yaml"))


@pytest.mark.parametrize("section, key, value, match", [
    ("train", "batch_size", 0, r"train.batch_size: expected a value in \[1, inf\]"),
    ("train", "epochs", 0, r"train.epochs"),
    ("train", "warmup_epochs", 3, r"train.warmup_epochs: expected a value in \[0, 2\]"),
    ("train", "base_lr", 0.0, r"train.base_lr"),
    ("train", "label_smoothing", 1.0, r"train.label_smoothing: expected a value in \[0.0, 1.0\)"),
    ("train", "cutmix_prob", 1.5, r"train.cutmix_prob"),
    ("train", "mixup_start_epoch", 2, r"train.mixup_start_epoch: expected a value in \[0, 1\]"),
    ("train", "mixup_start_epoch", -1, r"train.mixup_start_epoch"),
    ("train", "clip_grad", 0.0, r"train.clip_grad"),
    ("train", "mixup_alpha", 0.0, r"train.mixup_alpha"),
    ("train", "momentum", 1.0, r"train.momentum"),
    ("train", "keep_last", 0, r"train.keep_last"),
    ("train", "save_every_epochs", 0, r"train.save_every_epochs: expected a value in \[1, inf\]"),
    ("train", "log_every", 0, r"train.log_every"),
    ("train", "eval_views", [0, 1], r"train.eval_views: expected \[clips >= 1, crops 1 or 3\]"),
    ("train", "weight_decay_on", "all", r"train.weight_decay_on: expected one of nothing, weights"),
    ("eval", "views", [[1, 1], [4, 0]], r"eval.views\[1\]: expected \[clips >= 1, crops 1 or 3\]"),
    ("eval", "batch_size", 0, r"eval.batch_size"),
    ("data", "flip", 1.5, r"data.flip"),
    ("data", "size", 0, r"data.size"),
    ("data", "frame_interval", 0, r"data.frame_interval"),
    ("data", "num_workers", -1, r"data.num_workers"),
    ("data", "crop_area", [0.5, 0.2], r"data.crop_area: expected \[a, b\] with 0 < a <= b <= 1"),
    ("data", "bad_video", "ignore", r"data.bad_video"),
    ("model", "name", "resnet50", r"model.name: .*unknown model 'resnet50'"),
    ("model", "backend", "fast", r"model.backend"),
    ("model", "drop_path_rate", 1.0, r"model.drop_path_rate"),
    ("kd", "alpha", 1.5, r"kd.alpha"),
    ("kd", "temperature", 0.0, r"kd.temperature"),
    ("kd", "temperature", 1000.0, r"kd.temperature: expected a value in \(0.0, 100.0\]"),
])
def test_out_of_range_values_are_refused_before_any_work(videos, tmp_path, section, key, value, match):
    cfg = small_config(videos, tmp_path / "run", epochs=2)
    cfg["teacher"].update(name="vfl_net_nano", checkpoint="teacher.pt")
    cfg[section][key] = value
    with pytest.raises(ConfigError, match=match):
        run_training(cfg, distill=True)
    assert not os.path.exists(tmp_path / "run")  # nothing written


@pytest.mark.parametrize("device, match", [
    ("tpu", r"device: 'tpu' is not a device string"),
    ("mps", r"device: 'mps': dvflnet runs on cpu or cuda"),
    ("cuda:7", r"device: 'cuda:7'"),
    ("cuda", r"device: 'cuda'"),
])
def test_a_device_this_machine_lacks_is_an_error(videos, tmp_path, device, match):
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the device")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = small_config(videos, tmp_path / "run")
    cfg["device"] = device
    with pytest.raises(ConfigError, match=match):
        check_config(cfg)


# -- data -------------------------------------------------------------------------------------------------
def test_worker_errors_read_like_errors_without_workers(videos, tmp_path, capsys):
    from dvflnet.cli import main

    csv = tmp_path / "train.csv"
    csv.write_text(open(videos.train_csv).read() + "videos/missing.mp4,1\n")
    lines = []
    for workers in (0, 1):
        cfg = small_config(videos, tmp_path / f"w{workers}", batch_size=9)
        cfg["data"].update(train_csv=str(csv), num_workers=workers)
        with pytest.raises(VideoReadError) as err:
            run_training(cfg)
        lines.append(str(err.value))
        (tmp_path / f"w{workers}.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["train", "--config", str(tmp_path / f"w{workers}.yaml"), "--opts", "output", str(tmp_path / f"c{workers}")]) == 2
    assert lines[0] == lines[1] and lines[0].endswith("missing.mp4: no such file") and "\n" not in lines[0]
    err = capsys.readouterr().err.splitlines()
    assert err[-2] == err[-1] == f"dvflnet train: error: {lines[0]}"


def test_csv_edge_cases_are_read_right_or_refused(tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_bytes("\ufeffclips/a.mp4,3\n  clips/b.mp4 , 1 \n\"clips/c, take 2.mp4\",0\nclips/d,e.mp4,2\n\n".encode())
    items = read_annotations(str(csv), "/root", num_classes=4)
    assert items == [("/root/clips/a.mp4", 3), ("/root/clips/b.mp4", 1), ("/root/clips/c, take 2.mp4", 0),
                     ("/root/clips/d,e.mp4", 2)]
    for label in ("0_1", "+1", "1.0", "-1", "١"):
        csv.write_text(f"clips/a.mp4,{label}\n", encoding="utf-8")
        with pytest.raises(AnnotationError, match=re.escape(f"a.csv:1: label '{label}' is not a non-negative integer")):
            read_annotations(str(csv), "/root")
    csv.write_text("clips/a.mp4,1\nclips/b.mp4,7\n")
    with pytest.raises(AnnotationError, match=r"a.csv:2: label 7 is outside \[0, 4\)"):
        read_annotations(str(csv), "/root", num_classes=4)
    labels = tmp_path / "labels.csv"
    labels.write_bytes("\ufeffid,name\n0, walk \n1,\"jump, high\"\n".encode())
    assert read_class_names(str(labels)) == ["walk", "jump, high"]
    labels.write_text("0,walk\n2,run\n")
    with pytest.raises(AnnotationError, match=r"class ids 0..K-1"):
        read_class_names(str(labels))


def test_skipped_videos_are_counted_in_the_epoch_record_with_workers(videos, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"junk" * 64)
    csv = tmp_path / "train.csv"
    csv.write_text(open(videos.train_csv).read() + f"{broken},0\n")
    for workers in (0, 2):
        cfg = small_config(videos, tmp_path / f"w{workers}", epochs=2, batch_size=3)
        cfg["data"].update(train_csv=str(csv), num_workers=workers, bad_video="skip")
        # (a worker's warning stays in its process; the count reaches the record all the same)
        with pytest.warns(UserWarning, match="skipping unreadable video") if workers == 0 else contextlib.nullcontext():
            summary = run_training(cfg)
        # 9 videos, batch 3: every video is read once per epoch, the broken one skipped once
        assert [e.skipped_videos for e in summary.epochs] == [1, 1]
        assert [r["skipped_videos"] for r in _records(cfg["output"]) if r["event"] == "epoch"] == [1, 1]


# -- runs and checkpoints -----------------------------------------------------------------------------
def _poisoned_loss(monkeypatch, bad_steps):
    """Make the training loss NaN at the given (1-based) call numbers."""
    real, calls = training.F.cross_entropy, [0]

    def cross_entropy(*args, **kwargs):
        calls[0] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls[0] in bad_steps or "all" in bad_steps else loss

    monkeypatch.setattr(training.F, "cross_entropy", cross_entropy)


def test_a_non_finite_step_is_skipped_said_and_logged_as_strict_json(videos, tmp_path, monkeypatch, capsys):
    _poisoned_loss(monkeypatch, {2})
    cfg = small_config(videos, tmp_path, epochs=2)
    summary = run_training(cfg)
    assert "step 2: non-finite loss or gradient" in capsys.readouterr().out
    records = _records(tmp_path)
    skipped = [r for r in records if r["event"] == "skipped_step"]
    assert len(skipped) == 1 and skipped[0]["step"] == 2 and skipped[0]["loss"] is None and skipped[0]["nonfinite"]
    assert [e.skipped_steps for e in summary.epochs] == [1, 0]
    assert all(torch.isfinite(torch.tensor(e.train_loss)) for e in summary.epochs)
    state = torch.load(summary.last, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_diverged_run_stops_without_writing_or_rotating_checkpoints(videos, tmp_path, monkeypatch):
    cfg = small_config(videos, tmp_path, keep_last=1, max_nonfinite_steps=1)
    first = run_training(cfg)
    good = open(first.last, "rb").read()
    _poisoned_loss(monkeypatch, {"all"})
    with pytest.raises(TrainingDiverged, match=r"2 steps in a row .*the last good checkpoint is .*checkpoint_2.pt"):
        run_training(dict(cfg, train=dict(cfg["train"], epochs=3)))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_2.pt", "config.json", "log.jsonl"]
    assert open(first.last, "rb").read() == good
    _records(tmp_path)  # strict JSON throughout


def test_non_finite_weights_are_never_checkpointed(videos, tmp_path, monkeypatch):
    cfg = small_config(videos, tmp_path, epochs=1)
    real_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        next(g for g in self.param_groups if g["params"])["params"][0].data.fill_(float("inf"))  # a broken update the guard cannot see coming
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    with pytest.raises(TrainingDiverged, match=r"non-finite values in model\..*no checkpoint written"):
        run_training(cfg)
    assert glob.glob(str(tmp_path / "checkpoint_*.pt")) == []


def test_a_corrupt_newest_checkpoint_is_reported_and_resume_falls_back(videos, tmp_path):
    cfg = small_config(videos, tmp_path, epochs=2, keep_last=3)
    run_training(cfg)
    newest = tmp_path / "checkpoint_4.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a copy cut short
    with pytest.warns(UserWarning, match=r"checkpoint_4.pt: not a readable PyTorch checkpoint.*renamed it to checkpoint_4.pt.corrupt"):
        summary = run_training(dict(cfg, train=dict(cfg["train"], epochs=3)))
    assert [e.epoch for e in summary.epochs] == [1, 2]  # resumed after epoch 0 (checkpoint_2)
    assert os.path.isfile(tmp_path / "checkpoint_4.pt.corrupt")
    steps = [r["step"] for r in _records(tmp_path) if r["event"] == "step"]
    assert steps == list(range(1, 7))  # epoch 1's first records replaced, none twice


@pytest.mark.parametrize("content", [b"step 4, loss 0.3\n", os.urandom(4096), b""])
def test_files_that_are_not_checkpoints_raise_checkpoint_error_naming_them(tmp_path, content):
    path = tmp_path / "checkpoint_9.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="checkpoint_9.pt"):
        CheckpointManager(str(tmp_path)).load(str(path))
    with pytest.raises(CheckpointError, match="checkpoint_9.pt"):
        load_checkpoint(VideoFocalNet(embed_dim=8, depths=[1, 1, 1, 1], num_classes=2), path)
    torch.save(VideoFocalNet(embed_dim=8, depths=[1, 1, 1, 1], num_classes=2).state_dict(), path)
    with pytest.raises(CheckpointError, match="checkpoint_9.pt: not a dvflnet training checkpoint"):
        CheckpointManager(str(tmp_path)).load(str(path))


def test_resuming_another_model_is_a_short_error_before_config_json_changes(videos, tmp_path):
    cfg = small_config(videos, tmp_path)
    run_training(cfg)
    before = (tmp_path / "config.json").read_text()
    wider = copy.deepcopy(cfg)
    wider["model"]["kwargs"]["embed_dim"] = 16
    wider["train"]["epochs"] = 2
    with pytest.raises(ConfigError, match=r"checkpoint_2.pt: saved with another model .*model.kwargs: checkpoint .*'embed_dim': 8"):
        run_training(wider)
    assert (tmp_path / "config.json").read_text() == before
    fresh = dict(cfg, resume=None)
    with pytest.raises(ConfigError, match="holds checkpoints of an earlier run"):
        run_training(fresh)


def test_a_second_run_into_one_folder_refuses_and_a_stale_lock_is_taken_over(videos, tmp_path):
    cfg = small_config(videos, tmp_path)
    with RunLock(str(tmp_path)):  # a live run (this process) holds the folder
        with pytest.raises(RunLockedError, match=rf"another run is writing here \(pid {os.getpid()}"):
            run_training(cfg)
    assert not os.path.exists(tmp_path / ".lock")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = RunLock(str(tmp_path))
    (tmp_path / ".lock").write_text(json.dumps(dict(lock.owner, pid=int(dead.stdout))))
    with pytest.warns(UserWarning, match="taking over the lock of a run that is no longer running"):
        run_training(cfg)
    assert not os.path.exists(tmp_path / ".lock")  # released at the end


def test_leftovers_are_cleaned_and_the_resumed_epoch_loss_covers_the_whole_epoch(videos, tmp_path, capsys):
    cfg = small_config(videos, tmp_path / "straight", epochs=2, batch_size=2, save_every_steps=2, keep_last=10)
    straight = run_training(cfg)
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    for name in ("checkpoint_2.pt", "log.jsonl"):  # a kill after step 2; the log ran on to the end
        (resumed_dir / name).write_bytes((tmp_path / "straight" / name).read_bytes())
    with open(resumed_dir / "log.jsonl", "a") as f:
        f.write('{"event": "step", "ep')  # a line the kill cut short
    (resumed_dir / ".tmp-k3j2.pt").write_bytes(b"half a checkpoint")
    resumed = run_training(dict(cfg, output=str(resumed_dir)))
    assert "removed 1 temporary file(s)" in capsys.readouterr().out
    assert not glob.glob(str(resumed_dir / ".tmp-*"))
    steps = [r["step"] for r in _records(resumed_dir) if r["event"] == "step"]
    assert steps == list(range(1, 9))
    assert [e.train_loss for e in resumed.epochs] == [e.train_loss for e in straight.epochs]
    assert [r["epoch"] for r in _records(resumed_dir) if r["event"] == "epoch"] == [0, 1]


# -- drop-in for the public training code ----------------------------------------------------------------
