"""The engine end to end on generated videos: training and distillation lower the loss, exact resume
from a mid-epoch checkpoint, evaluation covers every video once (also over 2 gloo processes under
torchrun), configs and overrides, the CLI, and the demo."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

import dvfl_kernels
from dvflnet.cli import main as cli_main
from dvflnet.data.synthetic import generate_dataset
from dvflnet.engine import (
    DEFAULTS, ConfigError, DistInfo, ShardSampler, TrainSampler, check_config, classification_report, load_config,
    run_evaluation, run_training,
)
from helpers import TINY_MODEL, tiny_run_config

CLASSES = ("move_left", "move_right", "approach", "recede")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return generate_dataset(root, train_per_class=4, val_per_class=3, num_frames=8, size=32, classes=CLASSES, seed=3)


def tiny_config(videos, output, **overrides) -> dict:
    cfg = tiny_run_config(videos, output, len(CLASSES),
                          data=dict(labels_csv=videos.labels_csv, num_frames=4, short_side=36, crop_area=[0.8, 1.0]),
                          model=dict(drop_path_rate=0.1),
                          train=dict(epochs=2, warmup_epochs=1, batch_size=4, base_lr=0.5, log_every=1, eval_views=[1, 1]),
                          eval=dict(views=[[1, 1], [2, 3]], batch_size=3))
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    return cfg


def _steps(output) -> list[dict]:
    with open(os.path.join(output, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def _final_state(summary) -> dict:
    return torch.load(summary.last, weights_only=True)["model"]


# -- training and distillation ----------------------------------------------------------------------
TEACHER_EPOCHS = 20


def fitting_config(videos, output, **overrides) -> dict:
    """Settings under which a tiny model fits 16 videos within a few dozen steps: AdamW at 1e-3, no
    mixup, no crop, no drop-path (the test is that the loop learns, not the recipe's regularisers)."""
    cfg = tiny_config(videos, output, train__warmup_epochs=1, train__mixup=False, train__optimizer="adamw",
                      train__base_lr=0.128, **overrides)
    cfg["model"]["drop_path_rate"] = 0.0
    cfg["data"].update(crop_area=[1.0, 1.0], short_side=32)
    return cfg


@pytest.fixture(scope="module")
def teacher_run(videos, tmp_path_factory):
    """A small model trained to fit the 16 training videos (no mixup, AdamW: fast and steady)."""
    out = tmp_path_factory.mktemp("teacher")
    cfg = fitting_config(videos, out, train__epochs=TEACHER_EPOCHS, train__eval_every=4)
    cfg["model"]["kwargs"] = {"embed_dim": 16, "depths": [1, 1, 1, 1]}
    return cfg, run_training(cfg)


def test_training_lowers_the_loss_and_logs_everything(teacher_run):
    cfg, summary = teacher_run
    epochs = summary.epochs
    assert [e.epoch for e in epochs] == list(range(TEACHER_EPOCHS))
    first, last = sum(e.train_loss for e in epochs[:3]) / 3, sum(e.train_loss for e in epochs[-3:]) / 3
    assert last < 0.8 * first, [e.train_loss for e in epochs]
    for record in epochs:
        assert record.time_s > 0 and record.peak_memory_bytes > 0 and record.clips_per_s > 0
    assert "val_top1" in epochs[3].logged() and "val_top1" not in epochs[2].logged() and "val_top1" in epochs[-1].logged()  # eval_every 4
    lines = _steps(cfg["output"])
    steps = [r for r in lines if r["event"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, TEACHER_EPOCHS * 4 + 1))  # 16 videos / batch 4 = 4 steps per epoch
    assert all(set(r) >= {"loss", "lr", "grad_norm", "clips_per_s"} for r in steps)
    assert sum(r["event"] == "epoch" for r in lines) == TEACHER_EPOCHS
    assert os.path.isfile(summary.best) and summary.best_top1 == max(e.val_top1 for e in epochs if e.val_top1 is not None)
    assert len(_checkpoint_names(cfg["output"])) == 3  # keep_last


def test_distillation_lowers_the_loss_and_keeps_the_teacher_frozen(teacher_run, videos, tmp_path):
    teacher_cfg, teacher_summary = teacher_run
    teacher_before = _final_state(teacher_summary)
    cfg = fitting_config(videos, tmp_path, train__epochs=16, train__eval_every=0)
    cfg["teacher"].update(name=teacher_cfg["model"]["name"], kwargs=teacher_cfg["model"]["kwargs"], checkpoint=teacher_summary.last)
    cfg["kd"].update(alpha=0.5, temperature=4.0)
    summary = run_training(cfg, distill=True)
    losses = [e.train_loss for e in summary.epochs]
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
    steps = [r for r in _steps(tmp_path) if r["event"] == "step"]
    assert all("kd" in r and "ce" in r for r in steps)
    assert all(torch.equal(v, _final_state(teacher_summary)[k]) for k, v in teacher_before.items())


def test_distillation_needs_a_teacher_checkpoint(videos, tmp_path):
    with pytest.raises(ConfigError, match="teacher.checkpoint"):
        run_training(tiny_config(videos, tmp_path), distill=True)


def _checkpoint_names(folder) -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "checkpoint_*.pt")))


def _resume_from(cfg: dict, checkpoint, folder) -> dict:
    """The run of cfg continued in a fresh folder holding only `checkpoint` (resume: auto)."""
    folder.mkdir()
    shutil.copy(checkpoint, folder / os.path.basename(checkpoint))
    return run_training(dict(cfg, output=str(folder), resume="auto"))


def test_resume_from_a_mid_epoch_checkpoint_is_exact(videos, tmp_path):
    """2 epochs straight == resume from the checkpoint after step 3 (mid-epoch 0) + the rest, bit for
    bit: mixup boxes, drop-path draws, data order and augmentation all continue where they stopped."""
    cfg = tiny_config(videos, tmp_path / "straight", train__save_every_steps=3, train__keep_last=10, train__eval_every=1)
    straight = run_training(cfg)
    assert _checkpoint_names(tmp_path / "straight") == ["checkpoint_3.pt", "checkpoint_4.pt", "checkpoint_6.pt", "checkpoint_8.pt"]
    resumed = _resume_from(cfg, tmp_path / "straight" / "checkpoint_3.pt", tmp_path / "resumed")
    assert [e.epoch for e in resumed.epochs] == [0, 1]
    final_straight, final_resumed = _final_state(straight), _final_state(resumed)
    assert all(torch.equal(final_straight[k], final_resumed[k]) for k in final_straight)
    state_straight = torch.load(straight.last, weights_only=True)["optimizer"]["state"]
    state_resumed = torch.load(resumed.last, weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(state_straight[k]["momentum_buffer"], state_resumed[k]["momentum_buffer"]) for k in state_straight)
    # the epoch after resuming is the same epoch: identical validation result
    assert resumed.epochs[-1].val_top1 == straight.epochs[-1].val_top1


def test_checkpoints_every_nth_epoch_keep_the_last_and_evaluated_ones_and_resume_exactly(videos, tmp_path):
    """save_every_epochs 4 over 5 epochs of 4 steps, evaluating every 3rd: checkpoints after epochs 3
    (evaluated), 4 (the 4th) and 5 (the last), none after 1 and 2; resuming from epoch 3's reaches the
    straight run's weights bit for bit."""
    cfg = tiny_config(videos, tmp_path / "straight", train__epochs=5, train__save_every_epochs=4, train__eval_every=3,
                      train__keep_last=10)
    straight = run_training(cfg)
    assert _checkpoint_names(tmp_path / "straight") == ["checkpoint_12.pt", "checkpoint_16.pt", "checkpoint_20.pt"]
    assert torch.load(tmp_path / "straight" / "best.pt", weights_only=True)["step"] in (12, 20)
    resumed = _resume_from(cfg, tmp_path / "straight" / "checkpoint_12.pt", tmp_path / "resumed")
    assert [e.epoch for e in resumed.epochs] == [3, 4]
    final_straight, final_resumed = _final_state(straight), _final_state(resumed)
    assert all(torch.equal(final_straight[k], final_resumed[k]) for k in final_straight)


def test_a_run_records_its_engine_choices_and_a_run_given_them_makes_the_same(videos, tmp_path):
    """config.json carries the CPU engine's measured choices (its evaluations ran the linear engine);
    a run given that config takes them as they are, unmeasured: here each one flipped."""
    with dvfl_kernels.RUNTIME.scoped():
        run_training(tiny_config(videos, tmp_path / "first", train__epochs=1))
    table = load_config(str(tmp_path / "first" / "config.json"))["verdicts"]
    linear = {key: verdict for key, verdict in table.items() if key.startswith("('linear'")}
    if not linear:
        pytest.skip("this torch has no oneDNN linear: the engine has one implementation, nothing to choose")
    assert set(linear.values()) <= {"aten", "onednn"}
    flipped = {key: "aten" if verdict == "onednn" else "onednn" for key, verdict in linear.items()}
    second = tiny_config(videos, tmp_path / "second", train__epochs=1)
    second["verdicts"] = flipped
    with dvfl_kernels.RUNTIME.scoped():
        run_training(second)
        used = {repr(key): verdict for key, verdict in dvfl_kernels.RUNTIME.verdicts.items() if repr(key) in flipped}
    assert used == flipped
    with open(tmp_path / "second" / "config.json") as f:
        assert flipped.items() <= json.load(f)["verdicts"].items()


def test_gradient_accumulation_equals_a_big_batch(videos, tmp_path):
    """batch 2 x 2 micro-batches takes the same optimizer steps as batch 4 (no dropout, no mixup)."""
    common = dict(train__mixup=False, train__epochs=1, train__warmup_epochs=0, train__eval_every=0)
    big = tiny_config(videos, tmp_path / "big", **common)
    small = tiny_config(videos, tmp_path / "small", train__batch_size=2, train__accumulation=2, **common)
    for cfg in (big, small):
        cfg["model"]["drop_path_rate"] = 0.0
        cfg["data"].update(crop_area=[1.0, 1.0], short_side=32)
    a, b = _final_state(run_training(big)), _final_state(run_training(small))
    # same samples per step; the augmentations are per video, so the batches hold the same clips
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    assert [r["step"] for r in _steps(tmp_path / "small") if r["event"] == "step"] == [1, 2, 3, 4]


# -- evaluation --------------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [1, 5, 12])
@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_evaluation_shards_cover_every_video_exactly_once(length, world):
    shards = [ShardSampler(length, DistInfo(rank=r, world_size=world)).indices for r in range(world)]
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(length))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_train_sampler_gives_equal_whole_batches_and_resumes_mid_epoch(world):
    samplers = [TrainSampler(10, 2, DistInfo(rank=r, world_size=world), seed=1) for r in range(world)]
    for s in samplers:
        s.set_epoch(3)
    shares = [list(s) for s in samplers]
    assert len({len(share) for share in shares}) == 1 and len(shares[0]) % 2 == 0
    assert set().union(*map(set, shares)) <= set(range(10))
    samplers[0].set_epoch(3, start=2)
    assert list(samplers[0]) == shares[0][2:]
    samplers[0].set_epoch(4)
    assert list(samplers[0]) != shares[0]  # a new order every epoch
    with pytest.raises(ValueError, match="batch_size"):
        TrainSampler(3, 4, DistInfo())


def test_classification_report():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.3, 0.6]])
    labels = torch.tensor([0, 1, 1, 1])
    report = classification_report(scores, labels, 3)
    assert report["top1"] == 50.0 and report["top5"] == 100.0 and report["num_videos"] == 4
    assert report["confusion"] == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]
    assert report["per_class_top1"] == [100.0, pytest.approx(100 / 3, abs=1e-3), None]


def test_evaluation_views_and_reports(teacher_run, tmp_path):
    cfg, summary = teacher_run
    cfg = dict(cfg, output=str(tmp_path), eval=dict(cfg["eval"], checkpoint=summary.last))
    results = run_evaluation(cfg)
    assert set(results) == {"1x1", "2x3"}
    for views, report in results.items():
        assert report["num_videos"] == 12 and sum(map(sum, report["confusion"])) == 12
        assert report["classes"] == list(CLASSES)
        with open(tmp_path / f"eval_{views}.json") as f:
            assert json.load(f)["top1"] == report["top1"]


# -- configs, CLI, torchrun, demo ----------------------------------------------------------------------
def test_config_files_overrides_and_errors(tmp_path):
    parent = tmp_path / "parent.yaml"
    parent.write_text("data: {num_classes: 7, flip: 0.0}\ntrain: {epochs: 3}\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: parent.yaml\ntrain: {epochs: 5, batch_size: 2}\nmodel: {kwargs: {embed_dim: 24}}\n")
    cfg = load_config(str(child), ["train.epochs", "9", "data.crop_area", "[0.5, 1.0]", "model.kwargs.depths", "[1,1,1,1]"])
    assert cfg["data"]["num_classes"] == 7 and cfg["data"]["flip"] == 0.0 and cfg["train"]["batch_size"] == 2
    assert cfg["train"]["epochs"] == 9 and cfg["data"]["crop_area"] == [0.5, 1.0]
    assert cfg["model"]["kwargs"] == {"embed_dim": 24, "depths": [1, 1, 1, 1]}
    assert cfg["train"]["base_lr"] == DEFAULTS["train"]["base_lr"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epoch: 3}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'train.epoch'"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="unknown key 'train.lr'"):
        load_config(None, ["train.lr", "0.1"])
    with pytest.raises(ConfigError, match="odd count"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="data.num_classes"):
        check_config(load_config(None))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))


CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


@pytest.mark.parametrize("dataset,classes", [("ucf101", 101), ("hmdb51", 51), ("ucf50", 50), ("ssv2", 174), ("k400", 400)])
def test_shipped_configs_follow_the_recipe(dataset, classes):
    for variant, model in (("base", "video_focalnet_base"), ("small", "video_focalnet_small"),
                           ("tiny", "video_focalnet_tiny"), ("nano", "vfl_net_nano"), ("nano_kd", "vfl_net_nano")):
        cfg = load_config(os.path.join(CONFIG_DIR, dataset, f"{variant}.yaml"))
        check_config(cfg, distill=variant == "nano_kd")
        assert cfg["model"]["name"] == model and cfg["data"]["num_classes"] == classes
        assert cfg["data"]["flip"] == (0.0 if dataset == "ssv2" else 0.5)
        assert (cfg["train"]["optimizer"], cfg["train"]["epochs"], cfg["train"]["warmup_epochs"]) == ("sgd", 120, 20)
        if variant == "nano_kd":
            assert cfg["teacher"]["name"] == "video_focalnet_base" and (cfg["kd"]["alpha"], cfg["kd"]["temperature"]) == (0.3, 10.0)


def _write_yaml(cfg: dict, path) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return str(path)


def test_cli_train_evaluate_distill_generate(videos, tmp_path, capsys):
    data_root = tmp_path / "generated"
    assert cli_main(["generate-data", str(data_root), "--train-per-class", "1", "--val-per-class", "1", "--size", "32", "--frames", "4"]) == 0
    assert len(open(data_root / "train.csv").readlines()) == 10
    config = _write_yaml(tiny_config(videos, tmp_path / "unused", train__epochs=1, train__warmup_epochs=0), tmp_path / "run.yaml")
    assert cli_main(["train", "--config", config, "--output", str(tmp_path / "t")]) == 0
    assert cli_main(["evaluate", "--config", config, "--output", str(tmp_path / "t"), "--opts", "eval.views", "[[1, 1]]"]) == 0
    assert "1x1 views: top-1" in capsys.readouterr().out
    assert cli_main(["distill", "--config", config, "--output", str(tmp_path / "d"), "--opts", "teacher.name", "vfl_net_nano",
                     "teacher.checkpoint", str(tmp_path / "t" / "best.pt"), "teacher.kwargs", json.dumps(TINY_MODEL)]) == 0
    assert cli_main(["train", "--config", config, "--opts", "train.epoch", "1"]) == 2
    assert "unknown key 'train.epoch'" in capsys.readouterr().err
    assert cli_main(["evaluate", "--config", config, "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_cli_generate_data_passes_every_knob(tmp_path, monkeypatch, capsys):
    """generate-data forwards the difficulty knobs it is given and leaves the others at the library's
    defaults; a bad value is a one-line error naming the argument, before any file is written."""
    seen = {}

    def fake(root, *args, **kwargs):
        seen.update(root=root, args=args, kwargs=kwargs)
        return generate_dataset(root, 1, 1, 4, 32, classes=("move_left",), seed=0)

    monkeypatch.setattr("dvflnet.commands.generate_dataset", fake)
    argv = ["generate-data", str(tmp_path / "a"), "--train-per-class", "3", "--val-per-class", "2", "--frames", "8", "--size", "32",
            "--seed", "5", "--classes", "move_left", "move_up", "--fps", "10", "--camera-jitter", "0.2", "--clutter", "0.1",
            "--motion", "2", "--opacity", "1", "1", "--direction-spread", "30"]
    assert cli_main(argv) == 0
    assert seen["args"] == (3, 2, 8, 32)
    assert seen["kwargs"] == {"seed": 5, "classes": ["move_left", "move_up"], "fps": 10, "camera_jitter": 0.2, "clutter": 0.1,
                              "motion": 2.0, "opacity": [1.0, 1.0], "direction_spread": 30.0, "overwrite": False}
    assert cli_main(["generate-data", str(tmp_path / "b")]) == 0
    assert seen["kwargs"] == {"seed": 0, "overwrite": False}  # nothing given: generate_dataset's own defaults
    monkeypatch.undo()
    assert cli_main(["generate-data", str(tmp_path / "c"), "--motion", "-1"]) == 2
    assert "generate-data: error: --motion: expected a number > 0" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    with pytest.raises(SystemExit):  # argparse refuses an unknown class by name
        cli_main(["generate-data", str(tmp_path / "d"), "--classes", "fly"])
    assert "invalid choice: 'fly'" in capsys.readouterr().err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _results(output) -> tuple[list, dict]:
    """What a run computed, without its timings: the step records' losses and learning rates, and the
    evaluation reports."""
    steps = [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in _steps(output) if r["event"] == "step"]
    reports = {}
    for views in ("1x1", "2x3"):
        with open(os.path.join(output, f"eval_{views}.json")) as f:
            report = json.load(f)
        reports[views] = {k: v for k, v in report.items() if "time" not in k and "second" not in k and k != "checkpoint"}
    return steps, reports


def test_torchrun_two_gloo_processes_on_one_node_and_on_two_nodes(videos, tmp_path):
    """DDP over 2 CPU processes: training runs in step, evaluation gathers each video exactly once; and
    the same 2 processes as two "nodes" (two torchrun agents, c10d rendezvous on 127.0.0.1, the
    multi-node path of docs/datasets.md) train and evaluate exactly as one node does."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    configs = {}
    for name in ("one-node", "two-nodes"):
        cfg = tiny_config(videos, tmp_path / name, train__epochs=1, train__warmup_epochs=0, train__batch_size=2)
        configs[name] = _write_yaml(cfg, tmp_path / f"{name}.yaml")
    one_node = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "dvflnet"]
    for command in (["train", "--config", configs["one-node"]], ["evaluate", "--config", configs["one-node"]]):
        done = subprocess.run(one_node + command, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps, reports = _results(tmp_path / "one-node")
    assert [record[0] for record in steps] == [1, 2, 3, 4]  # 16 videos / (2 processes x 2 clips)
    for report in reports.values():
        assert report["num_videos"] == 12 and sum(map(sum, report["confusion"])) == 12
    for command in (["train", "--config", configs["two-nodes"]], ["evaluate", "--config", configs["two-nodes"]]):
        port = _free_port()
        node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"dvfl-{port}", "--local-addr", "127.0.0.1", "-m", "dvflnet"]
        agents = [subprocess.Popen(node + command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)]
        outputs = [agent.communicate(timeout=300)[0] for agent in agents]
        assert all(agent.returncode == 0 for agent in agents), "\n".join(out[-3000:] for out in outputs)
    assert _results(tmp_path / "two-nodes") == (steps, reports)


@pytest.mark.parametrize("partner", ["teacher", "distill"])
def test_the_scratch_student_trains_beside_another_run_to_the_same_numbers(tmp_path, capsys, monkeypatch, partner):
    """With two usable cores and no thread count given, the scratch student trains beside the first
    run measured no faster on two threads (the teacher, else the distillation), one thread each, in
    a process of its own: the same numbers as one run after the other on one thread, its output in
    its console.log."""
    import dvflnet.experiments.demo as demo

    monkeypatch.delenv("DVFL_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(dvfl_kernels.cpu_threads, "usable_cores", lambda *a: 2)
    monkeypatch.setattr(demo, "measure_threads", lambda cfg, distill=False: 1 if distill == (partner == "distill") else 2)
    threads = torch.get_num_threads()
    try:
        assert cli_main(["demo", "--output", str(tmp_path / "beside"), "--seed", "3", "--opts", *TOY_DEMO_OPTS]) == 0
        out = capsys.readouterr().out
        assert f"the student from scratch finished beside the {'teacher' if partner == 'teacher' else 'distillation'}" in out
        assert cli_main(["demo", "--output", str(tmp_path / "in-turn"), "--seed", "3", "--threads", "1",
                         "--opts", *TOY_DEMO_OPTS]) == 0
    finally:
        torch.set_num_threads(threads)
    beside, in_turn = (json.load(open(tmp_path / name / "results.json")) for name in ("beside", "in-turn"))
    assert [r["run"] for r in beside] == ["teacher", "student", "distill"]
    same = lambda row: {k: v for k, v in row.items() if k not in ("train_time_s", "threads")}  # noqa: E731
    assert same(beside[1]) == same(in_turn[1]) and beside[1]["threads"] == 1
    if partner == "teacher":  # the teacher on one thread too: every number as in turn
        assert [same(r) for r in beside] == [same(r) for r in in_turn]
    assert "epoch 1/1" in (tmp_path / "beside" / "student" / "console.log").read_text()


# the demo at toy size (the real settings are in configs/demo.yaml)
TOY_DEMO_OPTS = ["dataset.train_per_class", "3", "dataset.val_per_class", "1", "dataset.num_frames", "8", "student_train_per_class", "2",
                 "teacher.train.epochs", "2", "teacher.train.mixup_start_epoch", "1", "student.train.epochs", "1", "base.train.warmup_epochs", "0", "base.train.batch_size", "4",
                 "base.data.num_workers", "0", "base.train.progress", "false", "teacher.model.kwargs", json.dumps(TINY_MODEL),
                 "base.eval.views", "[[1, 1], [2, 3]]"]


def test_demo_end_to_end(tmp_path, capsys, monkeypatch):
    """The demo's whole path at toy size."""
    monkeypatch.delenv("DVFL_THREADS", raising=False)  # --threads sets it for the runs; gone after the test
    opts = TOY_DEMO_OPTS
    threads = torch.get_num_threads()
    try:
        assert cli_main(["demo", "--output", str(tmp_path), "--seed", "3", "--threads", "1", "--opts", *opts]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert json.load(open(tmp_path / "teacher" / "config.json"))["seed"] == 3
    assert json.load(open(tmp_path / "data" / "settings.json"))["seed"] == 3
    # the teacher trains on the whole generated pool, both students on its first 2 clips of each class
    teacher_rows = (tmp_path / "data" / "train.csv").read_text().splitlines()
    student_rows = (tmp_path / "data" / "students.csv").read_text().splitlines()
    assert len(teacher_rows) == 12 and len(student_rows) == 8 and set(student_rows) < set(teacher_rows)
    assert all(sum(r.endswith(f",{label}") for r in student_rows) == 2 for label in range(4))
    for run, csv_name in (("teacher", "train.csv"), ("student", "students.csv"), ("distill", "students.csv")):
        assert json.load(open(tmp_path / run / "config.json"))["data"]["train_csv"].endswith(csv_name)
    from PIL import Image

    assert Image.open(tmp_path / "results.png").size == (1100, 650)
    for run in ("teacher", "student", "distill"):
        assert f"\n{run}" in out
    with open(tmp_path / "results.json") as f:
        rows = json.load(f)
    assert [r["run"] for r in rows] == ["teacher", "student", "distill"]
    assert all(0 <= r["1x1_top1"] <= 100 and r["params"] > 0 and r["gflops"] > 0 for r in rows)
    assert all(r["seed"] == 3 and r["threads"] == 1 for r in rows)
    assert cli_main(["demo", "--output", str(tmp_path), "--opts", "base.train.epoch", "1"]) == 2
    assert cli_main(["demo", "--output", str(tmp_path), "--opts", "student_train_per_class", "401"]) == 2
    assert "student_train_per_class: expected an integer in [1, dataset.train_per_class]" in capsys.readouterr().err
    # a value no run can take is refused before the videos are generated, not when its run starts
    refused = tmp_path / "refused"
    assert cli_main(["demo", "--output", str(refused), "--opts", "teacher.train.epochs", "4"]) == 2
    assert "the teacher run: train.mixup_start_epoch: expected a value in [0, 3], got 6" in capsys.readouterr().err
    assert cli_main(["demo", "--output", str(refused), "--opts", "student.train.batch_size", "0"]) == 2
    assert "the student run: train.batch_size: expected a value in [1, inf]" in capsys.readouterr().err
    assert not refused.exists()


def test_demo_picture_smooths_long_loss_curves(tmp_path):
    """The students' hundreds of short epochs: their loss is drawn as a trailing mean (checked against
    a plain loop in float64), the teacher's few epochs as they are; the PNG is written either way."""
    from PIL import Image

    from types import SimpleNamespace as Record

    from dvflnet.experiments.demo_report import LOSS_POINTS, DemoRow, plot_results, running_mean

    values = torch.randn(97, dtype=torch.float64).tolist()
    for window in (1, 2, 5, 97, 200):
        expected = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1]) for i in range(97)]
        assert running_mean(values, window) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    epochs = {"teacher": [Record(step=100 * (e + 1), train_loss=1.4 - 0.1 * e, val_top1=30.0 + 5 * e) for e in range(12)],
              "student": [Record(step=5 * (e + 1), train_loss=1.4 - e / 500, val_top1=None) for e in range(10 * LOSS_POINTS)]}
    rows = [DemoRow(run, seed=0, threads=1, train_time_s=1.0, params=1, gflops=0.1, top1={"1x1": 50.0}, top5={"1x1": 90.0})
            for run in epochs]
    figure_path = plot_results(rows, epochs, str(tmp_path / "results.png"))
    assert Image.open(figure_path).size == (1100, 650)


def test_demo_over_seeds_summarises_and_reuses_finished_seeds(tmp_path, capsys, monkeypatch):
    """--seeds: one demo per seed in seed-N, a summary whose figures are those of the seeds' own
    results.json; a rerun reads finished seeds back, and other settings run them again."""
    monkeypatch.delenv("DVFL_THREADS", raising=False)
    threads = torch.get_num_threads()
    argv = ["demo", "--output", str(tmp_path), "--threads", "1", "--seeds", "3", "4", "--opts", *TOY_DEMO_OPTS]
    try:
        assert cli_main(argv) == 0
        rows = {seed: json.load(open(tmp_path / f"seed-{seed}" / "results.json")) for seed in (3, 4)}
        assert all(r["seed"] == seed for seed in rows for r in rows[seed])
        summary = json.load(open(tmp_path / "summary.json"))
        top1 = {seed: {r["run"]: r["1x1_top1"] for r in rows[seed]} for seed in (3, 4)}
        for run in ("teacher", "student", "distill"):
            values = torch.tensor([top1[3][run], top1[4][run]], dtype=torch.float64)
            assert summary["spread"][run]["1x1_top1"] == pytest.approx({"mean": values.mean().item(), "std": values.std().item()})
            assert summary["top1"]["4"][run]["2x3_top1"] == next(r["2x3_top1"] for r in rows[4] if r["run"] == run)
        gaps = [top1[s]["distill"] - top1[s]["student"] for s in (3, 4)]
        assert summary["distill_minus_student_1x1"] == {"3": gaps[0], "4": gaps[1]}
        assert summary["distill_ahead"] == sum(g > 0 for g in gaps) and summary["threads"] == [1]
        table = (tmp_path / "summary.md").read_text()
        assert table.count("\n") == 5 and "| mean ± std |" in table and "of 2) |" in table
        assert f"| {sum(gaps) / 2:+.1f} ± " in table  # the gap's mean carries its sign, as each seed's does
        before = (tmp_path / "seed-3" / "results.json").stat().st_mtime_ns
        capsys.readouterr()
        assert cli_main(argv) == 0  # finished: read back, not rerun
        assert capsys.readouterr().out.count("finished earlier with these settings") == 2
        assert (tmp_path / "seed-3" / "results.json").stat().st_mtime_ns == before
        assert cli_main(argv + ["student.train.epochs", "2"]) == 0  # other settings: run again
        assert "finished earlier" not in capsys.readouterr().out
        assert json.load(open(tmp_path / "seed-3" / "student" / "config.json"))["train"]["epochs"] == 2
    finally:
        torch.set_num_threads(threads)
    assert cli_main(["demo", "--output", str(tmp_path), "--seeds", "1", "1"]) == 2
    assert "seeds: expected distinct seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["demo", "--seed", "1", "--seeds", "2"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_decoded_cache_changes_nothing_but_time(videos, tmp_path):
    """data.decoded_cache_mb: the same losses and evaluation as reading every clip from its file; with
    loader workers it is refused, naming both keys."""
    results = {}
    for mb in (0, 64):
        cfg = tiny_config(videos, tmp_path / f"cache{mb}", train__epochs=2, data__decoded_cache_mb=mb)
        summary = run_training(cfg)
        results[mb] = ([r["loss"] for r in _steps(tmp_path / f"cache{mb}") if r["event"] == "step"],
                       [e.val_top1 for e in summary.epochs])
    assert results[0] == results[64]
    cfg = tiny_config(videos, tmp_path / "workers", data__decoded_cache_mb=64, data__num_workers=2)
    with pytest.raises(ConfigError, match="data.decoded_cache_mb: 64 needs data.num_workers 0"):
        run_training(cfg)


def _not_blank_png(path, at_least=(300, 200)) -> None:
    import numpy as np
    from PIL import Image

    image = Image.open(path)
    assert image.size[0] >= at_least[0] and image.size[1] >= at_least[1], image.size
    pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 5, "a blank picture"


def test_curves_tensorboard_and_the_confusion_matrix_of_ordinary_runs(videos, tmp_path, capsys):
    """train.tensorboard logs every numeric record as a scalar; `dvflnet plot` draws any runs' curves
    into one PNG; `dvflnet evaluate` prints the worst classes and writes each view's confusion PNG."""
    runs = []
    for name, lr in (("a", 0.5), ("b", 0.1)):
        cfg = tiny_config(videos, tmp_path / name, train__tensorboard=name == "a", train__eval_every=1, train__base_lr=lr)
        run_training(cfg)
        runs.append(str(tmp_path / name))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "a" / "tensorboard"))
    board.Reload()
    tags = set(board.Tags()["scalars"])
    assert {"step/loss", "step/lr", "step/grad_norm", "epoch/train_loss", "epoch/val_top1"} <= tags
    logged = [json.loads(line) for line in open(tmp_path / "a" / "log.jsonl")]
    assert [e.value for e in board.Scalars("step/loss")] == pytest.approx([r["loss"] for r in logged if r["event"] == "step"])
    assert not (tmp_path / "b" / "tensorboard").exists()

    assert cli_main(["plot", *runs, "-o", str(tmp_path / "curves.png")]) == 0
    _not_blank_png(tmp_path / "curves.png", (1000, 300))
    assert cli_main(["plot", str(tmp_path / "nothing-here"), "-o", str(tmp_path / "x.png")]) == 2
    assert "nothing-here: no log.jsonl" in capsys.readouterr().err

    assert cli_main(["evaluate", "--config", str(tmp_path / "a" / "config.json"), "--checkpoint",
                     str(tmp_path / "a" / "checkpoint_4.pt"), "--worst", "2"]) == 0
    out = capsys.readouterr().out
    assert "worst classes (top-1):" in out and out.count("videos)\n") >= 2 * 2
    report = json.load(open(tmp_path / "a" / "eval_1x1.json"))
    worst = sorted((a, n) for a, n in zip(report["per_class_top1"], report["classes"]))[0]
    assert f"    {worst[1]}" in out.split("worst classes")[1]  # the lowest first
    for views in ("1x1", "2x3"):
        _not_blank_png(tmp_path / "a" / f"eval_{views}_confusion.png")
