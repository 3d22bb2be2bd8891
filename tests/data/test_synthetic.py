"""The generated dataset: reproducible, each class's change over time is what its name says, the
middle frame's state is shared by all classes, and the files follow the public CSV format."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from dvflnet.data import read_frames, video_length
from dvflnet.data.synthetic import CLASSES, generate_dataset, render_clip


@pytest.mark.parametrize("label", CLASSES)
def test_each_class_changes_as_named(label):
    frames, traj = render_clip(label, num_frames=12, size=64, seed=3)
    assert frames.shape == (12, 64, 64, 3) and frames.dtype == np.uint8
    rising = {
        "move_right": traj.centers[:, 0], "move_left": -traj.centers[:, 0],
        "move_down": traj.centers[:, 1], "move_up": -traj.centers[:, 1],
        "approach": traj.scales, "recede": -traj.scales,
        "rotate_clockwise": traj.angles, "rotate_anticlockwise": -traj.angles,
        "appear": traj.alphas, "vanish": -traj.alphas,
    }[label]
    assert (np.diff(rising) >= 0).all() and rising[-1] > rising[0]


def test_reproducible_and_seed_dependent():
    a, _ = render_clip("approach", 8, 64, seed=11)
    b, _ = render_clip("approach", 8, 64, seed=11)
    c, _ = render_clip("approach", 8, 64, seed=12)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_middle_frame_state_does_not_tell_the_class():
    """At the middle of the clip every class draws its state from the same ranges."""
    mids = {label: [] for label in CLASSES}
    for label in CLASSES:
        for seed in range(30):
            _, traj = render_clip(label, 9, 64, seed=seed)
            mids[label].append((traj.centers[4, 0], traj.scales[4], traj.alphas[4]))
    ranges = np.array([[np.mean(v, 0) for v in [mids[label]]][0] for label in CLASSES])
    assert np.ptp(ranges[:, 0]) < 6 and np.ptp(ranges[:, 1]) < 2 and np.ptp(ranges[:, 2]) < 0.05


def test_generate_dataset_files(tmp_path):
    info = generate_dataset(tmp_path, train_per_class=2, val_per_class=1, num_frames=8, size=64,
                            classes=("move_left", "appear"), seed=5)
    with open(info.train_csv) as f:
        train = list(csv.reader(f))
    with open(info.val_csv) as f:
        val = list(csv.reader(f))
    assert len(train) == 4 and len(val) == 2 and all(len(r) == 2 for r in train + val)
    assert sorted(int(r[1]) for r in train) == [0, 0, 1, 1]
    for relative, _ in train + val:
        path = tmp_path / relative
        assert video_length(path) == 8
        assert read_frames(path, [0, 7]).shape == (2, 64, 64, 3)
    with open(info.labels_csv) as f:
        assert list(csv.reader(f)) == [["id", "name"], ["0", "move_left"], ["1", "appear"]]
    again = generate_dataset(tmp_path / "again", train_per_class=2, val_per_class=1, num_frames=8, size=64,
                             classes=("move_left", "appear"), seed=5)
    first = read_frames(tmp_path / train[0][0], range(8))
    assert np.array_equal(first.numpy(), read_frames(tmp_path / "again" / train[0][0], range(8)).numpy())
    assert again.classes == ("move_left", "appear")


def test_opacity_range():
    """Motion classes keep their opacity; the shape and its trajectory are the same draw at any opacity."""
    for seed in range(5):
        _, opaque = render_clip("move_left", 8, 32, seed=seed, opacity=(1.0, 1.0))
        _, default = render_clip("move_left", 8, 32, seed=seed)
        _, faint = render_clip("move_up", 8, 32, seed=seed, opacity=(0.2, 0.3))
        assert (opaque.alphas == 1.0).all() and 0.45 <= default.alphas[0] <= 0.75
        assert 0.2 <= faint.alphas[0] <= 0.3 and (faint.alphas == faint.alphas[0]).all()
        assert np.array_equal(opaque.centers, default.centers)
    frames, _ = render_clip("move_right", 8, 32, seed=0, opacity=[1, 1])  # a YAML list works too
    assert frames.shape == (8, 32, 32, 3)


def test_direction_spread():
    """A move class travels within +-spread degrees of its axis, the angles filling that range; spread 0
    is the default clip, draw for draw; other classes ignore it."""
    axes = {"move_right": 0.0, "move_down": 90.0, "move_left": 180.0, "move_up": -90.0}
    for label, axis in axes.items():
        offsets = []
        for seed in range(40):
            _, turned = render_clip(label, 8, 32, seed=seed, direction_spread=30)
            dx, dy = turned.centers[-1] - turned.centers[0]
            offsets.append((np.degrees(np.arctan2(dy, dx)) - axis + 180) % 360 - 180)
            frames, straight = render_clip(label, 8, 32, seed=seed, direction_spread=0)
            default_frames, default = render_clip(label, 8, 32, seed=seed)
            assert np.array_equal(frames, default_frames) and np.array_equal(straight.centers, default.centers)
        assert max(np.abs(offsets)) <= 30 + 1e-9 and min(offsets) < -20 and max(offsets) > 20
    frames, _ = render_clip("move_up", 8, 32, seed=3, direction_spread=np.float32(30))  # any real number
    assert np.array_equal(frames, render_clip("move_up", 8, 32, seed=3, direction_spread=30)[0])
    a, _ = render_clip("approach", 8, 32, seed=2, direction_spread=45)
    b, _ = render_clip("approach", 8, 32, seed=2)
    assert np.array_equal(a, b)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown class 'spin'"):
        render_clip("spin")
    with pytest.raises(ValueError, match="multiple of 16"):
        render_clip("appear", size=40)
    with pytest.raises(ValueError, match="classes: unknown"):
        generate_dataset("/tmp/unused", classes=("fly",))
    for bad in ((0.0, 0.5), (0.8, 0.5), (0.5, 1.2), (1.0,), "opaque", None):
        with pytest.raises(ValueError, match="opacity: expected"):
            generate_dataset("/tmp/unused", opacity=bad)
    for bad in (-1, 46, float("nan"), np.float32(45.5), "30", None, True):
        with pytest.raises(ValueError, match="direction_spread: expected"):
            generate_dataset("/tmp/unused", direction_spread=bad)
        with pytest.raises(ValueError, match="direction_spread: expected"):
            render_clip("move_left", direction_spread=bad)
    for name, bad_values in (("camera_jitter", (-0.1, float("nan"), "1", None, True)),
                             ("clutter", (-0.1, 1.5, float("inf"), "0.3", None)),
                             ("motion", (0, -1.0, float("nan"), "2", False))):
        for bad in bad_values:
            with pytest.raises(ValueError, match=f"{name}: expected"):
                generate_dataset(tmp_path / "unused", **{name: bad})
            with pytest.raises(ValueError, match=f"{name}: expected"):
                render_clip("move_left", **{name: bad})
    for name in ("train_per_class", "val_per_class", "fps"):
        for bad in (0, -2, 1.5, "3", True):
            with pytest.raises(ValueError, match=f"{name}: expected an integer >= 1"):
                generate_dataset(tmp_path / "unused", **{name: bad})
    for bad in ((), ("move_left", "move_left")):
        with pytest.raises(ValueError, match="classes: expected distinct class names"):
            generate_dataset(tmp_path / "unused", classes=bad)
    assert not (tmp_path / "unused").exists()  # refused before any file was written
