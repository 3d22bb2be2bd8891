"""Optimiser groups, the warmup + cosine schedule, atomic checkpoints, keep-last-N / best, RNG
round-trips, and exact resume: N steps straight equal N/2 + save + load + N/2 (bit for bit on CPU)."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from dvflnet.atomic import save_torch
from dvflnet.engine import (CheckpointManager, TrainingCheckpoint, WarmupCosine, build_optimizer, capture_rng_state,
                            restore_rng_state, scaled_lr)
from dvflnet.models import VideoFocalNet

TINY = dict(img_size=32, embed_dim=8, depths=[1, 1, 1, 1], num_classes=3, num_frames=2, drop_path_rate=0.3, drop_rate=0.1)


def test_weight_decay_on_weights_decays_only_weights_with_two_or_more_dims():
    model = VideoFocalNet(**TINY, use_layerscale=True)
    opt = build_optimizer(model, lr=0.1, decay_on="weights")
    decayed, free = opt.param_groups
    assert decayed["weight_decay"] == 1e-4 and free["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim < 2 for p in free["params"])
    assert len(decayed["params"]) + len(free["params"]) == len(list(model.parameters()))
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9


def test_weight_decay_on_nothing_is_the_default_and_decays_nothing():
    model = VideoFocalNet(**TINY)
    decayed, free = build_optimizer(model, lr=0.1).param_groups
    assert decayed["params"] == [] and len(free["params"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="decay_on"):
        build_optimizer(model, lr=0.1, decay_on="all")


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_optimizer_is_torchs_fused_step_with_the_same_updates(kind):
    """The fused step (one kernel over all parameters) follows the per-parameter loop's updates."""
    torch.manual_seed(0)
    # float64, so that Adam's division by sqrt(v) does not magnify float32 rounding of near-zero moments
    models = [VideoFocalNet(**{**TINY, "drop_path_rate": 0.0, "drop_rate": 0.0}, backend="reference").double()
              for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fused = build_optimizer(models[0], lr=0.05, kind=kind, decay_on="weights")
    assert fused.defaults["fused"]
    loop = build_optimizer(models[1], lr=0.05, kind=kind, decay_on="weights")
    for group in loop.param_groups:
        group["fused"] = None  # the per-parameter implementation
    clips = torch.randn(2, 2, 3, 32, 32, dtype=torch.float64)
    for _ in range(3):
        for model, opt in zip(models, (fused, loop)):
            model(clips).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def _public_builder_groups(model):
    """The public Video-FocalNets / DVFL-Net optimizer builder's grouping, written from its
    description: a parameter is exempt if it is 1-D, a bias, named in no_weight_decay(), or has any
    of no_weight_decay_keywords() as a substring of its name."""
    skip, keywords = model.no_weight_decay(), model.no_weight_decay_keywords()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = len(param.shape) == 1 or name.endswith(".bias") or name in skip or any(k in name for k in keywords)
        (no_decay if exempt else decay).append(name)
    return decay, no_decay


def test_public_optimizer_builder_exempts_every_parameter_like_the_public_model():
    # The public model returns {''} from both hooks, so its builder decays nothing; ours must too.
    model = VideoFocalNet(**TINY, use_layerscale=True)
    decay, no_decay = _public_builder_groups(model)
    assert decay == [] and no_decay == [name for name, _ in model.named_parameters()]


def test_warmup_cosine_schedule():
    lr = scaled_lr(0.1, 64)
    assert lr == pytest.approx(0.0125)
    sched = WarmupCosine(lr, total_steps=120, warmup_steps=20, warmup_lr=scaled_lr(1e-3, 64), min_lr=scaled_lr(1e-3, 64))
    assert sched(0) == pytest.approx(1e-3 * 64 / 512) and sched(20) == pytest.approx(lr)
    assert sched(10) == pytest.approx((sched(0) + lr) / 2)
    assert sched(120) == pytest.approx(1e-3 * 64 / 512) and sched(70) == pytest.approx((lr + sched(0)) / 2)
    values = [sched(s) for s in range(20, 120)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(0.1, total_steps=10, warmup_steps=11)


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_torch({"a": torch.ones(2)}, str(path))
    assert torch.load(path, weights_only=True)["a"].sum() == 2

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_torch({"a": torch.zeros(2)}, str(path))
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["a"].sum() == 2  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary left behind


def test_keep_last_and_best(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep_last=2)
    for epoch, metric in enumerate([0.1, 0.5, 0.3, 0.2]):
        manager.save(TrainingCheckpoint(model={"w": torch.tensor(float(epoch))}, optimizer={}, scaler={}, epoch=epoch,
                                        batch_in_epoch=0, step=epoch, rng=[]), metric)
    names = sorted(os.listdir(tmp_path))
    assert names == ["best.pt", "checkpoint_2.pt", "checkpoint_3.pt"]
    best = torch.load(str(tmp_path / "best.pt"), weights_only=True)
    assert best["model"]["w"] == 1 and best["best_metric"] == 0.5
    assert manager.latest().endswith("checkpoint_3.pt")


def test_rng_state_round_trip():
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def _train(model, opt, sched, steps, start):
    for step in range(start, start + steps):
        sched.apply(opt, step)
        clips = torch.randn(2, 2, 3, 32, 32)  # data from the global RNG: resume must restore it
        labels = torch.randint(0, 3, (2,))
        loss = torch.nn.functional.cross_entropy(model(clips), labels)  # dropout / drop-path use it too
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_resume_is_exact(tmp_path):
    torch.manual_seed(0)
    straight = VideoFocalNet(**TINY)
    init = {k: v.clone() for k, v in straight.state_dict().items()}
    opt = build_optimizer(straight, 0.05)
    sched = WarmupCosine(0.05, total_steps=6, warmup_steps=2, warmup_lr=0.001)
    torch.manual_seed(1)
    _train(straight, opt, sched, 6, 0)

    resumed = VideoFocalNet(**TINY)
    resumed.load_state_dict(init)
    opt = build_optimizer(resumed, 0.05)
    torch.manual_seed(1)
    _train(resumed, opt, sched, 3, 0)
    manager = CheckpointManager(str(tmp_path))
    manager.save(TrainingCheckpoint(model=resumed.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                                    scaler={}, epoch=0, batch_in_epoch=3, step=3, rng=capture_rng_state()))
    torch.manual_seed(123)  # anything in between must not matter

    state = manager.load(manager.latest())
    fresh = VideoFocalNet(**TINY)
    fresh.load_state_dict(state.model)
    opt = build_optimizer(fresh, 0.05)
    opt.load_state_dict(state.optimizer)
    sched2 = WarmupCosine(1.0, total_steps=1)
    sched2.load_state_dict(state.scheduler)
    restore_rng_state(state.rng)
    _train(fresh, opt, sched2, 3, state.step)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
