"""Transforms (clip-consistent, shapes, crops), mixup / CutMix targets, and the CSV dataset:
annotation errors with line numbers, label range, train / multi-view test items, bad-video policy."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dvflnet.data import AnnotationError, VideoCSVDataset, VideoReadError, mixup_cutmix, read_annotations, smooth_one_hot
from dvflnet.data.synthetic import generate_dataset
from dvflnet.data.transforms import (
    MEAN, STD, _resize, color_jitter, draw_train, eval_views, three_crops, train_batch, train_transform,
)


def test_train_transform_is_the_same_for_every_frame():
    frame = torch.randint(0, 256, (1, 90, 120, 3), dtype=torch.uint8)
    clip = frame.expand(6, -1, -1, -1)
    for seed in range(10):
        out = train_transform(clip, torch.Generator().manual_seed(seed), size=32, short_side=40)
        assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
        assert torch.equal(out, out[:1].expand_as(out))  # one crop / flip / jitter for the whole clip
    a = train_transform(clip, torch.Generator().manual_seed(3), size=32, short_side=40)
    assert torch.equal(a, train_transform(clip, torch.Generator().manual_seed(3), size=32, short_side=40))


def _color_jitter_as_written(clip, generator, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1):
    """The jitter's definition, op by op in float64 (the same draws in the same order)."""
    x = clip.double()
    gray = lambda x: (x * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)).sum(-1, keepdim=True)
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand((), generator=generator).item()

    def rotate(x, turns):
        c, s = math.cos(2 * math.pi * turns), math.sin(2 * math.pi * turns)
        r = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)
        return x @ (torch.linalg.inv(yiq) @ r @ yiq).T

    ops = [lambda x: x * uniform(1 - brightness, 1 + brightness),
           lambda x: (x - gray(x).mean()) * uniform(1 - contrast, 1 + contrast) + gray(x).mean(),
           lambda x: (x - gray(x)) * uniform(1 - saturation, 1 + saturation) + gray(x),
           lambda x: rotate(x, uniform(-hue, hue))]
    for i in torch.randperm(len(ops), generator=generator).tolist():
        x = ops[i](x).clamp(0, 255)
    return x


@pytest.mark.parametrize("seed", range(6))
def test_color_jitter_follows_its_definition(seed):
    clip = torch.rand(3, 5, 7, 3, generator=torch.Generator().manual_seed(seed)) * 255
    out = color_jitter(clip, torch.Generator().manual_seed(seed))
    expected = _color_jitter_as_written(clip, torch.Generator().manual_seed(seed))
    assert out.dtype == torch.float32 and torch.allclose(out.double(), expected, atol=1e-3, rtol=0)


def test_normalisation_and_color_jitter_range():
    gray = torch.full((2, 8, 8, 3), 128.0)
    assert torch.allclose(eval_views(gray, size=8, short_side=8)[0][:, 0], torch.tensor((128 - MEAN[0]) / STD[0]))
    clip = torch.rand(3, 16, 16, 3) * 255
    jittered = color_jitter(clip, torch.Generator().manual_seed(0))
    assert jittered.min() >= 0 and jittered.max() <= 255 and not torch.equal(jittered, clip)


def test_three_crops_cover_left_centre_right():
    clip = torch.arange(64, dtype=torch.float32).view(1, 1, 64, 1).expand(2, 32, 64, 3)
    left, centre, right = three_crops(clip, 32)
    assert left[0, 0, 0, 0] == 0 and centre[0, 0, 0, 0] == 16 and right[0, 0, -1, 0] == 63
    views = eval_views(torch.rand(4, 50, 80, 3) * 255, size=32, num_crops=3)
    assert len(views) == 3 and all(v.shape == (4, 3, 32, 32) for v in views)


def test_mixup_cutmix_targets_are_distributions_and_box_is_shared():
    clips = torch.rand(6, 4, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    before = clips.clone()
    saw_cutmix = saw_mixup = False
    for seed in range(30):
        mixed, targets = mixup_cutmix(clips, labels, 5, torch.Generator().manual_seed(seed), smoothing=0.1)
        assert torch.equal(clips, before)
        assert torch.allclose(targets.sum(1), torch.ones(6)) and (targets > 0).all()
        pasted = (mixed != clips) & (mixed == clips.flip(0))
        if pasted.any() and ((mixed == clips) | (mixed == clips.flip(0))).all():
            saw_cutmix = True
            assert torch.equal(pasted[:, :1].expand_as(pasted), pasted)  # the same box on every frame
            area = pasted[0, 0, 0].float().mean().item()
            # lambda is the box's true area: target mass on the own class follows it
            own = smooth_one_hot(labels, 5, 0.1)
            assert torch.allclose(targets, own * (1 - area) + own.flip(0) * area, atol=1e-6)
        elif not torch.equal(mixed, clips):
            saw_mixup = True
    assert saw_cutmix and saw_mixup
    assert torch.allclose(smooth_one_hot(torch.tensor([2]), 4, 0.1), torch.tensor([[0.025, 0.025, 0.925, 0.025]]))


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return generate_dataset(root, train_per_class=2, val_per_class=1, num_frames=12, size=64,
                            classes=("move_left", "move_right", "appear"), seed=0)


def test_dataset_train_and_multiview_items(tiny_dataset):
    train = VideoCSVDataset(tiny_dataset.root, tiny_dataset.train_csv, num_frames=4, frame_interval=2,
                            size=32, short_side=40, num_classes=3)
    clip, label = train[3]
    assert len(train) == 6 and clip.shape == (4, 3, 32, 32) and label == 1
    assert torch.equal(clip, train[3][0])  # reproducible for a (seed, epoch, index)
    train.set_epoch(1)
    assert not torch.equal(clip, train[3][0])
    test = VideoCSVDataset(tiny_dataset.root, tiny_dataset.val_csv, num_frames=4, mode="test",
                           num_clips=4, num_crops=3, size=32, num_classes=3)
    views, label = test[2]
    assert views.shape == (12, 4, 3, 32, 32) and label == 2
    assert torch.equal(views, test[2][0])


def test_datasets_with_a_decoded_cache_share_it(tiny_dataset, monkeypatch):
    """Training's validation set and the final evaluation's sets (other views of the same files)
    decode each video once between them, and give what they give without the cache."""
    from dvflnet.data import video

    decodes = []
    real = video.read_frames
    monkeypatch.setattr(video, "read_frames", lambda p, i: decodes.append(p) or real(p, i))
    kwargs = dict(num_frames=4, mode="test", size=32, num_classes=3)
    cached = [VideoCSVDataset(tiny_dataset.root, tiny_dataset.val_csv, num_clips=clips, num_crops=crops,
                              decoded_cache_bytes=1 << 24, **kwargs) for clips, crops in ((1, 1), (4, 3), (1, 1))]
    assert cached[0].decoded is cached[1].decoded is cached[2].decoded
    plain = [VideoCSVDataset(tiny_dataset.root, tiny_dataset.val_csv, num_clips=clips, num_crops=crops, **kwargs)
             for clips, crops in ((1, 1), (4, 3))]
    for dataset, reference in zip(cached, plain + plain[:1]):
        for index in range(len(dataset)):
            assert torch.equal(dataset[index][0], reference[index][0])
    assert sorted(decodes) == sorted(path for path, _ in cached[0].items)  # each file decoded once


def test_a_batch_is_augmented_as_one_clip_at_a_time():
    """train_batch over clips of mixed shapes, each with its own draws (flips, jitters, grey ones
    among them), equals augmenting each clip alone; and train_transform draws what draw_train does."""
    shapes = [(5, 20, 28), (5, 20, 28), (5, 31, 17), (5, 20, 28), (5, 31, 17), (5, 9, 9)]
    clips = [torch.randint(0, 256, (*shape, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
             for i, shape in enumerate(shapes)]
    draws = [draw_train(tuple(c.shape[1:3]), torch.Generator().manual_seed(10 + i), 24, crop_area=(0.3, 1.0))
             for i, c in enumerate(clips)]
    draws[0] = dataclasses.replace(draws[0], gray=True)
    draws[1] = dataclasses.replace(draws[1], jitter=())
    assert {d.flip for d in draws} == {True, False} and {bool(d.jitter) for d in draws} == {True, False}
    batch = train_batch(clips, draws, size=16, short_side=24)
    for i, (clip, draw) in enumerate(zip(clips, draws)):
        assert torch.equal(batch[i], train_batch([clip], [draw], 16, 24)[0]), i
        single = train_transform(clip, torch.Generator().manual_seed(10 + i), size=16, short_side=24, crop_area=(0.3, 1.0))
        if i > 1:  # the first two draws were changed above
            assert torch.equal(single, batch[i]), i
    assert torch.allclose(batch[0][:, 0] * STD[0] + MEAN[0], batch[0][:, 1] * STD[1] + MEAN[1], atol=1e-3)  # grey


@pytest.mark.parametrize("size", [(7, 5), (12, 12), (40, 33), (4, 30)])
def test_resize_is_the_antialiased_bilinear_resize(size):
    """_resize takes plain bilinear where it enlarges (the antialiased filter's own weights there)."""
    clip = torch.rand(3, 11, 13, 3) * 255
    expected = torch.nn.functional.interpolate(clip.permute(0, 3, 1, 2).double(), size=size, mode="bilinear",
                                               align_corners=False, antialias=True).permute(0, 2, 3, 1)
    assert torch.allclose(_resize(clip, size).double(), expected, atol=1e-3, rtol=0)


def test_dataset_batches_equal_its_items(tiny_dataset):
    train = VideoCSVDataset(tiny_dataset.root, tiny_dataset.train_csv, num_frames=4, frame_interval=2,
                            size=32, short_side=40, num_classes=3)
    batch = train.__getitems__([5, 0, 3, 3])
    for (clip, label), index in zip(batch, [5, 0, 3, 3]):
        item, item_label = train[index]
        assert torch.equal(clip, item) and label == item_label
    loader = torch.utils.data.DataLoader(train, batch_size=3, sampler=[1, 4, 2])
    clips, labels = next(iter(loader))
    assert all(torch.equal(clips[i], train[j][0]) for i, j in enumerate([1, 4, 2])) and labels.tolist() == [train[j][1] for j in [1, 4, 2]]


def test_annotation_errors_name_the_line(tmp_path, tiny_dataset):
    bad = tmp_path / "bad.csv"
    bad.write_text("a.mp4,0\nb.mp4,zero\n")
    with pytest.raises(AnnotationError, match=r"bad\.csv:2: label 'zero' is not a non-negative integer"):
        read_annotations(str(bad), str(tmp_path))
    bad.write_text("a.mp4,0\n\nc.mp4 7\n")
    with pytest.raises(AnnotationError, match=r"bad\.csv:3: expected '<video path>,<label>'"):
        read_annotations(str(bad), str(tmp_path))
    with pytest.raises(AnnotationError, match=r"train\.csv:\d+: label 2 is outside \[0, 2\)"):
        VideoCSVDataset(tiny_dataset.root, tiny_dataset.train_csv, num_classes=2)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_annotations(str(tmp_path / "none.csv"), str(tmp_path))


def test_bad_video_policy(tmp_path, tiny_dataset):
    csv = tmp_path / "mixed.csv"
    good = open(tiny_dataset.train_csv).read().splitlines()[0]
    (tmp_path / "broken.mp4").write_bytes(b"junk" * 64)
    csv.write_text(f"{tmp_path}/broken.mp4,0\n{tmp_path}/missing.mp4,1\n" + good.replace("videos/", f"{tiny_dataset.root}/videos/") + "\n")
    strict = VideoCSVDataset("/", str(csv), num_frames=4, size=32, short_side=40, bad_video="fail")
    with pytest.raises(VideoReadError, match=r"broken\.mp4"):
        strict[0]
    lenient = VideoCSVDataset("/", str(csv), num_frames=4, size=32, short_side=40, bad_video="skip")
    with pytest.warns(UserWarning, match=r"skipping unreadable video .*broken\.mp4"):
        clip, label = lenient[0]
    assert clip.shape == (4, 3, 32, 32) and label == 0
    assert len(lenient.skipped) == 2 and lenient.skipped[0].endswith("broken.mp4")
    with pytest.raises(ValueError, match="bad_video"):
        VideoCSVDataset("/", str(csv), mode="test", bad_video="skip")
