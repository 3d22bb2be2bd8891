"""The teacher-output cache and the alpha x temperature grid, at toy size: the cache holds exactly the
teacher's logits on the clips the student trains on (mixup included), a cached run's losses equal
the online run's within fp16 rounding, a cache built for another run is refused, a partial cache
resumes, the top-k fold's error is bounded, and the grid runner writes its table and resumes."""
from __future__ import annotations

import copy
import glob
import json
import os

import pytest
import torch

from dvflnet.experiments.grid import run_grid
from dvflnet.cli import main as cli_main
from dvflnet.data import smooth_one_hot
from dvflnet.data.synthetic import generate_dataset
from dvflnet.engine import RunConfig, run_training
from dvflnet.engine.distributed import DistInfo, TrainSampler
from dvflnet.engine.builders import build_teacher, epoch_batches, train_dataset
from dvflnet.engine.teacher_cache import (
    CHUNK_BATCHES, TeacherCache, TeacherCacheError, build_teacher_cache, compress, expand,
)
from helpers import tiny_run_config

CLASSES = ("move_left", "move_right", "move_up", "move_down")
TEACHER = {"embed_dim": 8, "depths": [1, 1, 1, 1]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Toy videos and a (randomly initialised, saved) teacher: the cache does not care how good it is."""
    from dvflnet.models import create_model

    root = tmp_path_factory.mktemp("cache")
    videos = generate_dataset(root / "videos", train_per_class=3, val_per_class=1, num_frames=4, size=32,
                              classes=CLASSES, seed=5)
    torch.manual_seed(0)
    teacher = create_model("vfl_net_nano", num_classes=len(CLASSES), num_frames=2, img_size=32, **TEACHER)
    checkpoint = str(root / "teacher.pt")
    torch.save({"model": teacher.state_dict()}, checkpoint)
    return videos, checkpoint, root


def distill_config(setup, output, cache=None, **train) -> dict:
    videos, checkpoint, _ = setup
    cfg = tiny_run_config(videos, output, len(CLASSES), seed=7, data=dict(num_frames=2, short_side=36))
    cfg["teacher"].update(name="vfl_net_nano", kwargs=dict(TEACHER), checkpoint=checkpoint)
    cfg["kd"].update(alpha=0.5, temperature=4.0, teacher_cache=None if cache is None else str(cache))
    cfg["train"].update({"epochs": 2, "warmup_epochs": 0, "batch_size": 4, "base_lr": 0.2, "log_every": 1,
                         "progress": False, "eval_every": 0, "mixup": True, **train})
    cfg["eval"].update(views=[[1, 1]], batch_size=4)
    return cfg


def _step_losses(output) -> list[float]:
    with open(os.path.join(output, "log.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if r["event"] == "step"]


def test_cache_holds_the_teachers_logits_on_the_training_stream(setup, tmp_path):
    """Every cached row equals the teacher's output on the same (augmented, mixed) micro-batch, to fp16."""
    cfg = distill_config(setup, tmp_path / "run", cache=tmp_path / "cache", epochs=3)
    summary = build_teacher_cache(cfg)
    assert summary.written == 3 and summary.kept == 0  # one chunk per epoch at this size
    info, run = DistInfo(), RunConfig.from_dict(cfg)
    dataset = train_dataset(run)
    sampler = TrainSampler(len(dataset), run.train.batch_size, info, run.seed)
    teacher, cache = build_teacher(run, info.device), TeacherCache(run, info, len(dataset))
    seen = 0
    with torch.no_grad():
        for epoch in range(3):
            for batch, clips, _ in epoch_batches(run, dataset, sampler, info, epoch, 0, 3):
                online = teacher(clips)
                cached = cache.logits(epoch, batch)
                torch.testing.assert_close(cached, online.half().float(), rtol=0, atol=0)
                seen += 1
    assert seen == 9


def _stream(cfg, epochs: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    info, run = DistInfo(), RunConfig.from_dict(cfg)
    dataset = train_dataset(run)
    sampler = TrainSampler(len(dataset), run.train.batch_size, info, run.seed)
    return [(clips, targets) for epoch in range(epochs)
            for _, clips, targets in epoch_batches(run, dataset, sampler, info, epoch, 0, 3)]


def test_mixup_starts_at_mixup_start_epoch(setup, tmp_path):
    """Before train.mixup_start_epoch: the whole clips, with label-smoothed one-hot targets; from it
    on, the very batches a run mixing from the start draws."""
    late = _stream(distill_config(setup, tmp_path, epochs=3, mixup_start_epoch=2), 3)
    mixing = _stream(distill_config(setup, tmp_path, epochs=3), 3)
    whole = _stream(distill_config(setup, tmp_path, epochs=3, mixup=False), 3)
    assert len(late) == len(mixing) == len(whole) == 9
    for i, ((clips, targets), (mixed, mixed_targets), (plain, labels)) in enumerate(zip(late, mixing, whole)):
        if i < 6:  # epochs 0 and 1
            torch.testing.assert_close(clips, plain, rtol=0, atol=0)
            assert not torch.equal(clips, mixed)
            torch.testing.assert_close(targets, smooth_one_hot(labels, len(CLASSES), 0.1), rtol=0, atol=0)
        else:
            torch.testing.assert_close(clips, mixed, rtol=0, atol=0)
            torch.testing.assert_close(targets, mixed_targets, rtol=0, atol=0)


def test_cached_distillation_equals_online(setup, tmp_path):
    """Same student, same stream, teacher logits from the cache: the first step's loss to fp16 rounding
    of the logits, every later step within what that rounding moves the student."""
    online = run_training(distill_config(setup, tmp_path / "online"), distill=True)
    cfg = distill_config(setup, tmp_path / "cached", cache=tmp_path / "cache")
    build_teacher_cache(cfg)
    cached = run_training(cfg, distill=True)
    a, b = _step_losses(tmp_path / "online"), _step_losses(tmp_path / "cached")
    assert len(a) == len(b) == 6
    assert abs(a[0] - b[0]) <= 1e-3 * abs(a[0])
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=5e-3, atol=0)
    assert cached.epochs[-1].train_loss == pytest.approx(online.epochs[-1].train_loss, rel=5e-3)


def test_a_cache_built_for_another_run_is_refused(setup, tmp_path):
    cfg = distill_config(setup, tmp_path / "run", cache=tmp_path / "cache", epochs=1)
    build_teacher_cache(cfg)
    changes = {
        "augmentation.seed": lambda c: c.update(seed=8),
        "data.size": lambda c: c["data"].update(size=64, short_side=72, test_short_side=64),
        "batches.epochs": lambda c: c["train"].update(epochs=2),
        "augmentation.mixup": lambda c: c["train"].update(mixup=False),
        "augmentation.mixup_start_epoch": lambda c: c["train"].update(epochs=2, mixup_start_epoch=1),
        "teacher.kwargs": lambda c: c["teacher"].update(kwargs={**TEACHER, "embed_dim": 16}),
    }
    for name, change in changes.items():
        other = copy.deepcopy(cfg)
        change(other)
        other["output"] = str(tmp_path / name)
        with pytest.raises(TeacherCacheError, match=name.replace(".", r"\.")):
            run_training(other, distill=True)
        assert os.listdir(other["output"]) == []  # refused before anything is written (the run lock is released)
    # the teacher's weights change, its name and shape do not: the checkpoint's hash tells
    other = copy.deepcopy(cfg)
    state = torch.load(cfg["teacher"]["checkpoint"], weights_only=True)
    state["model"]["head.bias"] += 1
    other["teacher"]["checkpoint"] = str(tmp_path / "retrained.pt")
    torch.save(state, other["teacher"]["checkpoint"])
    with pytest.raises(TeacherCacheError, match="checkpoint_sha256"):
        build_teacher_cache(other)
    missing = distill_config(setup, tmp_path / "run2", cache=tmp_path / "nowhere")
    with pytest.raises(TeacherCacheError, match="holds no cache"):
        run_training(missing, distill=True)


def test_a_partial_cache_resumes_and_an_incomplete_one_is_an_error(setup, tmp_path):
    cfg = distill_config(setup, tmp_path / "run", cache=tmp_path / "cache", epochs=3)
    build_teacher_cache(cfg)
    chunks = sorted(glob.glob(str(tmp_path / "cache" / "e*.pt")))
    assert [os.path.basename(p) for p in chunks] == ["e0000-r000-c0000.pt", "e0001-r000-c0000.pt", "e0002-r000-c0000.pt"]
    before = torch.load(chunks[1], weights_only=True)
    os.remove(chunks[1])  # as if the build was killed before epoch 1's chunk was renamed into place
    with pytest.raises(TeacherCacheError, match="e0001-r000-c0000.pt is missing"):
        run_training(cfg, distill=True)
    summary = build_teacher_cache(cfg)
    assert (summary.written, summary.kept) == (1, 2)
    after = torch.load(chunks[1], weights_only=True)
    assert all(torch.equal(before[k], after[k]) for k in before)
    with open(chunks[2], "wb") as f:
        f.write(b"not a chunk")
    with pytest.raises(Exception, match="e0002-r000-c0000.pt: unreadable"):
        run_training(distill_config(setup, tmp_path / "run3", cache=tmp_path / "cache", epochs=3), distill=True)


def test_chunks_split_long_epochs(setup, tmp_path, monkeypatch):
    """An epoch longer than a chunk spans several files, read back in order."""
    import dvflnet.engine.teacher_cache as teacher_cache

    monkeypatch.setattr(teacher_cache, "CHUNK_BATCHES", 2)
    cfg = distill_config(setup, tmp_path / "run", cache=tmp_path / "cache", epochs=1)
    assert build_teacher_cache(cfg).written == 2  # 3 micro-batches: chunks of 2 and 1
    info = DistInfo()
    cache = TeacherCache(RunConfig.from_dict(cfg), info, 12)
    rows = torch.stack([cache.logits(0, b) for b in range(3)])
    direct = torch.cat([torch.load(p, weights_only=True)["logits"] for p in sorted(glob.glob(str(tmp_path / "cache" / "e*.pt")))])
    assert torch.equal(rows, direct.float())
    with pytest.raises(TeacherCacheError, match="no micro-batch 3"):
        cache.logits(0, 3)
    assert CHUNK_BATCHES == 256  # the module constant itself is untouched outside this test


def test_top_k_fold_keeps_the_top_logits_and_the_mass():
    """kd.cache_topk: the kept classes read back exactly as fp16 stores them, every folded class gets
    the bucket's mass-preserving logit, and with topk None or K <= topk nothing is folded."""
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(64, 400, generator=generator, dtype=torch.float64) * 2
    stored = compress(teacher, topk=64)
    assert set(stored) == {"top_logits", "top_classes", "rest_mean", "rest_var"}
    top = teacher.topk(64, dim=-1).indices
    rest = torch.ones_like(teacher, dtype=torch.bool).scatter(-1, top, False)
    for temperature in (1.0, 10.0):
        rebuilt = expand(stored, 400, temperature).double()
        assert torch.equal(rebuilt.gather(-1, top), teacher.gather(-1, top).half().double())
        folded = rebuilt[rest].view(64, -1)
        assert torch.equal(folded, folded[:, :1].expand_as(folded))  # one logit for every folded class
    # at the recipe's T the folded logits keep the tail's probability mass (its spread / T is small)
    mass = (teacher / 10.0).exp()[rest].view(64, -1).sum(-1)
    folded_mass = (expand(stored, 400, 10.0).double() / 10.0).exp()[rest].view(64, -1).sum(-1)
    torch.testing.assert_close(folded_mass, mass, rtol=0.01, atol=0)
    for dense in (compress(teacher, topk=None), compress(teacher[:, :64], topk=64)):
        assert set(dense) == {"logits"}
        assert torch.equal(expand(dense, dense["logits"].shape[-1], 10.0), teacher[:, : dense["logits"].shape[-1]].half().float())


def test_top_k_fold_error_at_low_temperature():
    """The fold's measured error (bench/teacher_cache_fold.py): a few percent of the KD gradient at T = 1
    with a confident teacher, and far more at T = 10 (why dense is the default)."""
    from bench.teacher_cache_fold import fold_errors

    loss_error, grad_error = fold_errors(1000, 256, spread=4.0, temperature=1.0)
    assert loss_error < 0.03 and grad_error < 0.03
    _, grad_error_t10 = fold_errors(1000, 256, spread=4.0, temperature=10.0)
    assert grad_error_t10 > 0.2


def test_grid_runner_writes_the_table_and_resumes(setup, tmp_path, monkeypatch):
    import dvflnet.experiments.grid as ablate

    cfg = distill_config(setup, tmp_path / "unused", epochs=1)
    calls = []
    real = ablate.run_training
    monkeypatch.setattr(ablate, "run_training", lambda c, distill: calls.append((c.kd.alpha, c.kd.temperature)) or real(c, distill=distill))
    results = run_grid(cfg, str(tmp_path / "grid"), alphas=[0.3, 0.7], temperatures=[5.0, 10.0])
    assert sorted(calls) == [(0.3, 5.0), (0.3, 10.0), (0.7, 5.0), (0.7, 10.0)]
    assert all(0 <= r.top1 <= 100 for r in results)
    table = (tmp_path / "grid" / "grid.md").read_text()
    assert "| 0.3 |" in table and "| 0.7 |" in table and "| alpha \\ T | 5 | 10 |" in table
    assert len((tmp_path / "grid" / "grid.csv").read_text().splitlines()) == 5
    assert (tmp_path / "grid" / "grid.png").stat().st_size > 0
    # half-finished: one cell lost its result (killed before evaluating); only that cell runs again,
    # from its own checkpoints (nothing left to train), and the cache is reused
    os.remove(tmp_path / "grid" / "seed7" / "alpha0.7-T5" / "result.json")
    calls.clear()
    again = run_grid(cfg, str(tmp_path / "grid"), alphas=[0.3, 0.7], temperatures=[5.0, 10.0])
    assert calls == [(0.7, 5.0)]
    assert [r.top1 for r in again] == [r.top1 for r in results]


def test_cli_cache_teacher_and_ablate(setup, tmp_path, capsys):
    import yaml

    cfg = distill_config(setup, tmp_path / "run", epochs=1)
    config = tmp_path / "distill.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert cli_main(["cache-teacher", "--config", str(config), "--cache", str(tmp_path / "cache")]) == 0
    assert "1 chunk(s) written" in capsys.readouterr().out
    assert cli_main(["distill", "--config", str(config), "--opts", "kd.teacher_cache", str(tmp_path / "cache")]) == 0
    assert cli_main(["distill", "--config", str(config), "--output", str(tmp_path / "other"),
                     "--opts", "kd.teacher_cache", str(tmp_path / "cache"), "train.epochs", "2"]) == 2
    assert "batches.epochs: cache 1, run 2" in capsys.readouterr().err
    assert cli_main(["ablate", "--config", str(config), "--output", str(tmp_path / "grid"), "--alphas", "0.5",
                     "--temperatures", "10", "--seeds", "1", "2"]) == 0
    assert "mean ± std over seeds 1, 2" in (tmp_path / "grid" / "grid.md").read_text()


def test_merge_joins_grids_of_different_seeds(tmp_path, capsys):
    from dvflnet.experiments.grid import CellResult, merge_grids, write_grid

    def runs(seed, top1):
        return [CellResult(seed, a, t, top1=top1 + a * 10 + t, top5=100.0, train_time_s=1.0)
                for a in (0.3, 0.7) for t in (5.0, 10.0)]

    write_grid(runs(0, 50.0), str(tmp_path / "s0"))
    write_grid(runs(3, 60.0), str(tmp_path / "s3"))
    merged = merge_grids([str(tmp_path / "s0"), str(tmp_path / "s3")], str(tmp_path / "all"))
    assert len(merged) == 8 and {r.seed for r in merged} == {0, 3}
    table = (tmp_path / "all" / "grid.md").read_text()
    assert "seeds 0, 3" in table and "| 0.3 | 63.0 ± 5.0 | 68.0 ± 5.0 |" in table  # 50+3+5 and 60+3+5
    assert (tmp_path / "all" / "grid.png").stat().st_size > 0
    with pytest.raises(ValueError, match=r"seed 0, alpha 0.3, T 5 is in both .*s0.* and .*again"):
        write_grid(runs(0, 40.0), str(tmp_path / "again"))
        merge_grids([str(tmp_path / "s0"), str(tmp_path / "again")], str(tmp_path / "bad"))
    with pytest.raises(FileNotFoundError, match="no grid.csv in"):
        merge_grids([str(tmp_path / "s0"), str(tmp_path / "missing")], str(tmp_path / "bad"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "grid.csv").write_text("seed,alpha\nzero,0.3\n")
    with pytest.raises(ValueError, match=r"broken/grid.csv:2: not a grid row"):
        merge_grids([str(tmp_path / "broken")], str(tmp_path / "bad"))
    assert cli_main(["ablate", "--merge", str(tmp_path / "s0"), str(tmp_path / "s3"), "--output", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "grid.md").read_text() == table
    assert cli_main(["ablate", "--merge", str(tmp_path / "s0")]) == 2
    assert "--output is required" in capsys.readouterr().err
    assert cli_main(["ablate", "--merge", str(tmp_path / "s0"), "--config", "x.yaml", "--output", "o"]) == 2
    assert "either --config" in capsys.readouterr().err
    assert cli_main(["ablate", "--merge", str(tmp_path / "s0"), "--output", "o", "--alphas", "0.5", "--seeds", "1"]) == 2
    assert "--alphas, --seeds would be ignored" in capsys.readouterr().err


def test_ddp_ranks_cache_their_own_shards(setup, tmp_path):
    """torchrun, 2 gloo processes: each rank writes and reads its own chunks; the cached run's losses
    equal the online run's; a cache built by 2 processes is refused by a run with 1."""
    import subprocess
    import sys

    import yaml

    cfg = distill_config(setup, tmp_path / "online", epochs=1, batch_size=2)
    config = tmp_path / "distill.yaml"
    config.write_text(yaml.safe_dump(cfg))
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "dvflnet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cache = str(tmp_path / "cache")
    for command in (["distill", "--config", str(config)],
                    ["cache-teacher", "--config", str(config), "--cache", cache],
                    ["distill", "--config", str(config), "--output", str(tmp_path / "cached"), "--opts", "kd.teacher_cache", cache]):
        done = subprocess.run(base + command, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(cache, "e*.pt"))) == ["e0000-r000-c0000.pt", "e0000-r001-c0000.pt"]
    shards = [torch.load(os.path.join(cache, f"e0000-r00{rank}-c0000.pt"), weights_only=True)["indices"] for rank in (0, 1)]
    assert sorted(torch.cat(shards).view(-1).tolist()) == list(range(12))  # 12 videos, each in one rank's shard
    online, cached = _step_losses(tmp_path / "online"), _step_losses(tmp_path / "cached")
    assert len(online) == len(cached) == 3
    torch.testing.assert_close(torch.tensor(cached), torch.tensor(online), rtol=5e-3, atol=0)
    single = dict(cfg, output=str(tmp_path / "single"))
    single["kd"] = dict(cfg["kd"], teacher_cache=cache)
    with pytest.raises(TeacherCacheError, match="batches.world_size: cache 2, run 1"):
        run_training(single, distill=True)
