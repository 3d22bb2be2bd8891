"""A generated video dataset whose classes need temporal reasoning (the demo and test data).

Each clip shows one textured shape on a textured background, with camera jitter and sensor noise.
The class is how it changes over time: moving left / right / up / down, approaching / receding,
rotating clockwise / anticlockwise, appearing / vanishing. Every class's trajectory is drawn so that
the middle frames of all classes look alike (same position, size, pose and opacity ranges), so no
single frame tells the class. Everything is seeded: the same seed gives the same files.

    generate_dataset("data/synthetic", train_per_class=40, val_per_class=10, seed=0)

writes mp4 clips (PyAV), `train.csv` / `val.csv` (`<path relative to root>,<label>`, no header, the
public format) and `labels.csv` (`id,name`).
"""
from __future__ import annotations

import csv
import io
import math
import numbers
import os
from dataclasses import dataclass

import numpy as np

from ..atomic import write_text
from .video import write_video

CLASSES = (
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "approach",
    "recede",
    "rotate_clockwise",
    "rotate_anticlockwise",
    "appear",
    "vanish",
)
SHAPES = ("triangle", "bar", "ell")  # none of them looks the same after a small rotation
# the default mid-clip opacity range: every class partly transparent, so that appear / vanish cannot
# be told from one frame's opacity; opaque shapes (1, 1) make motion easier to see
OPACITY = (0.45, 0.75)


@dataclass
class Trajectory:
    """Per-frame state of the shape (pixels, radians, opacity), for tests and inspection."""

    centers: np.ndarray  # (T, 2) x, y
    scales: np.ndarray  # (T,)
    angles: np.ndarray  # (T,)
    alphas: np.ndarray  # (T,)


def _trajectory(label: str, num_frames: int, size: int, rng: np.random.Generator, motion: float = 1.0,
                opacity: tuple[float, float] = OPACITY, direction_spread: float = 0.0) -> Trajectory:
    """Linear ramps around a shared middle state; only the ramped quantity differs by class.
    motion scales every ramp (travel, growth, turn, fade): > 1 makes the change easier to see;
    opacity is the range of the shape's mid-clip opacity; direction_spread (degrees) turns a move
    class's direction of travel by an angle drawn uniformly in [-spread, spread]."""
    ramp = np.linspace(-0.5, 0.5, num_frames)
    center = rng.uniform(0.35, 0.65, size=2) * size
    scale = rng.uniform(0.14, 0.2) * size
    angle = rng.uniform(0, 2 * np.pi)
    alpha = rng.uniform(*opacity)
    centers = np.repeat(center[None], num_frames, 0)
    scales, angles, alphas = np.full(num_frames, scale), np.full(num_frames, angle), np.full(num_frames, alpha)
    travel = rng.uniform(0.25, 0.4) * size * motion
    direction = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}
    if label in direction:
        dx, dy = direction[label]
        if direction_spread:  # drawn only when asked: the default clips keep their draws
            turn = np.deg2rad(rng.uniform(-direction_spread, direction_spread))
            dx, dy = dx * np.cos(turn) - dy * np.sin(turn), dx * np.sin(turn) + dy * np.cos(turn)
        centers = center[None] + np.outer(ramp, (dx, dy)) * travel
    elif label in ("approach", "recede"):
        growth = rng.uniform(0.5, 0.8) * motion * (1 if label == "approach" else -1)
        scales = scale * np.exp(ramp * 2 * growth)
    elif label in ("rotate_clockwise", "rotate_anticlockwise"):
        turn = rng.uniform(0.5, 1.0) * np.pi * motion * (1 if label == "rotate_clockwise" else -1)
        angles = angle + ramp * turn  # image y points down: increasing angle turns clockwise on screen
    elif label in ("appear", "vanish"):
        alphas = np.clip(alpha + ramp * (1 if label == "appear" else -1) * rng.uniform(1.4, 1.8) * motion, 0, 1)
    else:
        raise ValueError(f"label: unknown class {label!r}; known: {CLASSES}")
    return Trajectory(centers, scales, angles, alphas)


def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, scale: float, angle: float) -> np.ndarray:
    """Soft (anti-aliased) mask of a shape centred at the origin of (xx, yy), rotated by `angle`."""
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * xx + s * yy) / scale, (-s * xx + c * yy) / scale  # shape coordinates
    if shape == "triangle":  # isosceles: base at u = -0.6 (half-width 0.8), apex at u = 1
        inside = np.minimum(u + 0.6, (1.0 - u) * 0.5 - np.abs(v))
    elif shape == "bar":  # long bar with a knob at one end
        inside = np.maximum(np.minimum(1.0 - np.abs(u), 0.3 - np.abs(v)), 0.45 - np.hypot(u - 0.9, v))
    else:  # "ell"
        inside = np.maximum(np.minimum(1.0 - np.abs(u), 0.25 - np.abs(v + 0.75)), np.minimum(0.25 - np.abs(u + 0.75), 1.0 - np.abs(v)))
    return np.clip(inside * scale + 0.5, 0.0, 1.0)  # one-pixel soft edge


def _texture(size: int, rng: np.random.Generator, base: np.ndarray, strength: float = 0.3) -> np.ndarray:
    """A colour field: stripes or smooth noise (amplitude `strength`) around `base`, (H, W, 3) in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    if rng.random() < 0.5:
        freq, theta = rng.uniform(3, 9), rng.uniform(0, np.pi)
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(theta) * xx + np.sin(theta) * yy))
    else:
        coarse = rng.random((5, 5))
        pattern = np.kron(coarse, np.ones((size // 5 + 1, size // 5 + 1)))[:size, :size]
    tint = rng.uniform(0.6, 1.0, size=3)
    return np.clip(base[None, None] * (1 - strength + strength * pattern[..., None]) * tint, 0, 1)


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Background and foreground base colours whose brightness differs by at least 0.35: the shape
    is always visible, whatever its colours."""
    background = rng.uniform(0.1, 0.9, size=3)
    brightness = background.mean()
    target = brightness + (0.35 + rng.uniform(0, 0.2)) * (1 if brightness < 0.5 else -1)
    foreground = rng.uniform(0.1, 0.9, size=3)
    foreground = np.clip(foreground - foreground.mean() + target, 0.02, 0.98)
    return background, foreground


def _opacity_range(opacity) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in opacity)
    except (TypeError, ValueError):
        raise ValueError(f"opacity: expected a (low, high) pair of numbers, got {opacity!r}") from None
    if not 0 < low <= high <= 1:
        raise ValueError(f"opacity: expected 0 < low <= high <= 1, got {opacity!r}")
    return low, high


def _real(name: str, value, ok, expected: str) -> float:
    """`value` as a float if it is a finite real number (not a bool) that `ok` accepts; else a ValueError
    naming the argument and what it expects."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return float(value)


def _direction_spread(direction_spread) -> float:
    return _real("direction_spread", direction_spread, lambda v: 0 <= v <= 45,
                 "degrees in [0, 45] (45: neighbouring directions meet)")


def _appearance(camera_jitter, clutter, motion) -> tuple[float, float, float]:
    """The three difficulty knobs checked: a negative jitter or clutter would fail deep inside numpy or
    be clipped away, and motion <= 0 would freeze or reverse every class (labels silently wrong)."""
    return (_real("camera_jitter", camera_jitter, lambda v: v >= 0, "a number >= 0 (pixels at size 64)"),
            _real("clutter", clutter, lambda v: 0 <= v <= 1, "a number in [0, 1] (the background texture's amplitude)"),
            _real("motion", motion, lambda v: v > 0, "a number > 0 (1: the default amount of change)"))


def render_clip(
    label: str, num_frames: int = 16, size: int = 64, seed: int = 0, camera_jitter: float = 0.8, clutter: float = 0.3,
    motion: float = 1.0, opacity: tuple[float, float] = OPACITY, direction_spread: float = 0.0,
) -> tuple[np.ndarray, Trajectory]:
    """One clip of class `label`: uint8 frames (T, size, size, 3) and the shape's trajectory.
    camera_jitter: per-frame step (pixels at size 64, scaled with size) of the drifting camera;
    clutter: amplitude of the background texture (0: a flat colour); motion: scale of the class's
    change over the clip; opacity: (low, high) range of the shape's mid-clip opacity, in (0, 1]. All
    four set how hard the data is. direction_spread: a move class travels up to this many degrees
    off its axis (uniformly drawn; 0: along the axis, 45: the four directions cover the circle), so
    that how left a clip moves is a matter of degree, which a teacher's soft output can tell."""
    if size % 16:
        raise ValueError(f"size: must be a multiple of 16 (decodable by decord), got {size}")
    if num_frames < 2:
        raise ValueError(f"num_frames: a class needs at least 2 frames to show, got {num_frames}")
    low, high = _opacity_range(opacity)
    camera_jitter, clutter, motion = _appearance(camera_jitter, clutter, motion)
    rng = np.random.default_rng(seed)
    trajectory = _trajectory(label, num_frames, size, rng, motion, (low, high), _direction_spread(direction_spread))
    background_colour, foreground_colour = _contrasting_colours(rng)
    background = _texture(size, rng, background_colour, clutter)
    foreground = _texture(size, rng, foreground_colour)
    shape = SHAPES[rng.integers(len(SHAPES))]
    jitter = rng.normal(0, camera_jitter * size / 64, size=(num_frames, 2)).cumsum(0)  # a drifting hand-held camera
    jitter -= jitter.mean(0)
    noise = rng.uniform(0.01, 0.04)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for t in range(num_frames):
        cx, cy = trajectory.centers[t] + jitter[t]
        mask = _shape_mask(shape, xx - cx, yy - cy, trajectory.scales[t], trajectory.angles[t]) * trajectory.alphas[t]
        shifted = np.roll(background, (int(round(jitter[t, 1])), int(round(jitter[t, 0]))), axis=(0, 1))
        image = shifted * (1 - mask[..., None]) + foreground * mask[..., None]
        image = image + rng.normal(0, noise, image.shape)
        frames[t] = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    return frames, trajectory


@dataclass
class SyntheticDataset:
    root: str
    train_csv: str
    val_csv: str
    labels_csv: str
    classes: tuple[str, ...]


def _csv_text(rows) -> str:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


def generate_dataset(
    root: str | os.PathLike,
    train_per_class: int = 40,
    val_per_class: int = 10,
    num_frames: int = 16,
    size: int = 64,
    classes: tuple[str, ...] = CLASSES,
    fps: int = 12,
    seed: int = 0,
    camera_jitter: float = 0.8,
    clutter: float = 0.3,
    motion: float = 1.0,
    opacity: tuple[float, float] = OPACITY,
    direction_spread: float = 0.0,
    overwrite: bool = False,
) -> SyntheticDataset:
    """Write the dataset under `root` (videos/<split>/<class>/<n>.mp4 and the CSVs). CSVs already in
    `root` are refused unless `overwrite` (they may be the user's own). Every argument is checked
    before anything is created."""
    root = os.fspath(root)
    opacity = _opacity_range(opacity)
    direction_spread = _direction_spread(direction_spread)
    _appearance(camera_jitter, clutter, motion)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    for name, value in (("train_per_class", train_per_class), ("val_per_class", val_per_class), ("fps", fps)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 16 or size % 16:
        raise ValueError(f"size: expected a multiple of 16 pixels, at least 16 (H.264 frames that decord reads back), got {size!r}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, numbers.Integral) or num_frames < 2:
        raise ValueError(f"num_frames: expected an integer >= 2 (the classes are changes over time), got {num_frames!r}")
    existing = [os.path.join(root, n) for n in ("train.csv", "val.csv", "labels.csv") if os.path.exists(os.path.join(root, n))]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist; refusing to overwrite them (--overwrite replaces them)")
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        raise ValueError(f"classes: unknown {unknown}; known: {CLASSES}")
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes: expected distinct class names, at least one, got {list(classes)}")
    rows: dict[str, list[tuple[str, int]]] = {"train": [], "val": []}
    for split, per_class, split_seed in (("train", train_per_class, 0), ("val", val_per_class, 1)):
        for label, name in enumerate(classes):
            folder = os.path.join(root, "videos", split, name)
            os.makedirs(folder, exist_ok=True)
            for n in range(per_class):
                # one independent stream per (seed, split, class, clip): reproducible and order-free
                clip_seed = int(np.random.SeedSequence([seed, split_seed, label, n]).generate_state(1)[0])
                frames, _ = render_clip(name, num_frames, size, clip_seed, camera_jitter, clutter, motion, opacity,
                                        direction_spread)
                relative = os.path.join("videos", split, name, f"{n:05d}.mp4")
                write_video(os.path.join(root, relative), frames, fps=fps)
                rows[split].append((relative, label))
    paths = {}
    for split, split_rows in rows.items():
        paths[split] = os.path.join(root, f"{split}.csv")
        write_text(_csv_text(split_rows), paths[split])
    labels_csv = os.path.join(root, "labels.csv")
    write_text(_csv_text([("id", "name"), *enumerate(classes)]), labels_csv)
    return SyntheticDataset(root, paths["train"], paths["val"], labels_csv, tuple(classes))
