"""Clip transforms on tensors (no torchvision). A clip is uint8 or float (T, H, W, 3) RGB in 0-255;
every random choice is made once per clip, so all frames get the same crop, flip and colours.

Train: short side 256, random resized crop (area 0.08-1, aspect 3/4-4/3) to 224, horizontal flip,
colour jitter with probability 0.8 (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, in random
order), grayscale with probability 0.2, normalisation. Test: short side then centre crop, or three
crops (left / centre / right, or top / centre / bottom for portrait frames).

Training draws every random choice of a clip first (``draw_train``), then ``train_batch`` applies the
draws of a whole batch: the resizes per clip, the colour jitter, greyscale and normalisation as
batched tensor ops (``VideoCSVDataset.__getitems__``, what a DataLoader calls per batch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def resize_short_side(clip: torch.Tensor, short: int) -> torch.Tensor:
    """(T, H, W, 3) -> float (T, H', W', 3) with min(H', W') = short (bilinear, antialiased)."""
    t, h, w, _ = clip.shape
    scale = short / min(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return _resize(clip, size)


def _resize(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, H, W, 3) -> float (T, *size, 3), bilinear, antialiased where it shrinks. Enlarging, the
    antialiased filter is plain bilinear's (support 1, the same weights, rounding aside), which runs
    on the channels-last frames 3-5x faster; shrinking, the antialiased kernel on contiguous frames."""
    x = clip.permute(0, 3, 1, 2).float()
    shrinks = size[0] < x.shape[2] or size[1] < x.shape[3]
    x = F.interpolate(x.contiguous() if shrinks else x, size=size, mode="bilinear", align_corners=False, antialias=shrinks)
    return x.permute(0, 2, 3, 1)


def _draw_box(h: int, w: int, generator: torch.Generator, area=(0.08, 1.0), aspect=(3 / 4, 4 / 3)):
    """(y0, x0, height, width) of a random box of `area` x the frame and aspect ratio in `aspect`
    (log-uniform); after 10 misses, the central square."""
    for _ in range(10):
        target = (area[0] + (area[1] - area[0]) * torch.rand((), generator=generator).item()) * h * w
        log_ratio = math.log(aspect[0]) + (math.log(aspect[1]) - math.log(aspect[0])) * torch.rand((), generator=generator).item()
        ratio = math.exp(log_ratio)
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            y0 = int(torch.randint(0, h - ch + 1, (), generator=generator))
            x0 = int(torch.randint(0, w - cw + 1, (), generator=generator))
            return y0, x0, ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def center_crop(clip: torch.Tensor, size: int) -> torch.Tensor:
    _, h, w, _ = clip.shape
    y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return clip[:, y0 : y0 + size, x0 : x0 + size]


def three_crops(clip: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Left / centre / right square crops along the long side (top / centre / bottom if portrait)."""
    _, h, w, _ = clip.shape
    if w >= h:
        starts = (0, (w - size) // 2, w - size)
        return [clip[:, (h - size) // 2 : (h - size) // 2 + size, x : x + size] for x in starts]
    starts = (0, (h - size) // 2, h - size)
    return [clip[:, y : y + size, (w - size) // 2 : (w - size) // 2 + size] for y in starts]


_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
_FROM_YIQ = torch.linalg.inv(_TO_YIQ)


def _grey(planes: torch.Tensor) -> torch.Tensor:
    """Luma (B, 1, P) of planar pixels (B, 3, P)."""
    return torch.bmm(_LUMA.to(planes.dtype).expand(len(planes), 1, 3), planes)


JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


def _draw_jitter(generator: torch.Generator, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1):
    """((op, factor), ...) in the order they apply: a random order, then each op's factor."""
    ranges = ((1 - brightness, 1 + brightness), (1 - contrast, 1 + contrast), (1 - saturation, 1 + saturation), (-hue, hue))
    draws = []
    for op in torch.randperm(len(JITTER_OPS), generator=generator).tolist():
        lo, hi = ranges[op]
        draws.append((op, lo + (hi - lo) * torch.rand((), generator=generator).item()))
    return tuple(draws)


def _color_matrix(op: int, factor: float) -> torch.Tensor:
    """The 3x3 colour map (rows: input channel) of a jitter op; contrast's is the scaling only (its
    offset towards the mean grey depends on the clip)."""
    if JITTER_OPS[op] in ("brightness", "contrast"):
        return torch.eye(3, dtype=torch.float64) * factor
    if JITTER_OPS[op] == "saturation":  # lerp(grey, x, f) = f x + (1 - f) grey
        return torch.eye(3, dtype=torch.float64) * factor + (1 - factor) * _LUMA.double()[:, None].expand(3, 3)
    c, s = math.cos(2 * math.pi * factor), math.sin(2 * math.pi * factor)
    rotate = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)
    return (_FROM_YIQ @ rotate @ _TO_YIQ).T


def _apply_jitters(planes: torch.Tensor, jitters: list[tuple]) -> torch.Tensor:
    """Clips as planar pixels (B, 3, P), float 0-255, each with its own jitter draws (() for none): at
    each of the four positions one batched 3x3 colour map (plus contrast's offset towards the clip's
    mean grey), then the clamp. Planar, so each map is a (3, 3) x (3, P) product (channels-last
    pixels made it a tall-skinny one, 4x slower)."""
    if not any(jitters):
        return planes
    # clips without jitter get the identity map; their clamp only trims a resize's rounding past 0-255
    for position in range(len(JITTER_OPS)):
        maps = torch.stack([_color_matrix(*j[position]) if j else torch.eye(3, dtype=torch.float64) for j in jitters])
        contrast = [j[position][1] if j and JITTER_OPS[j[position][0]] == "contrast" else None for j in jitters]
        out = torch.bmm(maps.transpose(1, 2).to(planes.dtype), planes)
        if any(f is not None for f in contrast):  # towards the clip's mean grey
            shift = torch.tensor([0.0 if f is None else 1 - f for f in contrast], dtype=planes.dtype)
            out += (shift[:, None] * _grey(planes).mean(-1))[:, :, None]
        planes = out.clamp_(0, 255)
    return planes


def color_jitter(
    clip: torch.Tensor, generator: torch.Generator, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1
) -> torch.Tensor:
    """Brightness, contrast (towards the mean grey), saturation (towards each pixel's grey) and hue
    (a YIQ chroma rotation) in a random order, clamped to 0-255 after each (float (T, H, W, 3) in and out)."""
    planes = clip.float().permute(3, 0, 1, 2).reshape(1, 3, -1)
    out = _apply_jitters(planes, [_draw_jitter(generator, brightness, contrast, saturation, hue)])
    return out.view(3, *clip.shape[:3]).permute(1, 2, 3, 0)


def normalize(clip: torch.Tensor) -> torch.Tensor:
    """(..., T, H, W, 3) 0-255 -> float (..., T, 3, H, W) normalised with the recipe's mean / std."""
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    return ((clip.float() - mean) / std).movedim(-1, -3).contiguous()


@dataclass(frozen=True)
class TrainDraw:
    """Every random choice train_transform makes for one clip, in the order it draws them."""
    box: tuple[int, int, int, int]  # y0, x0, height, width in the short-side-resized frame
    flip: bool
    jitter: tuple  # ((op, factor), ...) in application order; () when not jittered
    gray: bool


def draw_train(
    shape: tuple[int, int], generator: torch.Generator, short_side: int = 256, flip: float = 0.5, jitter: float = 0.8,
    grayscale: float = 0.2, crop_area: tuple[float, float] = (0.08, 1.0),
) -> TrainDraw:
    """The random choices for a clip whose frames are `shape` = (H, W) as decoded."""
    scale = short_side / min(shape)
    h, w = max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))
    box = _draw_box(h, w, generator, area=crop_area)
    flipped = torch.rand((), generator=generator).item() < flip
    jitters = _draw_jitter(generator) if torch.rand((), generator=generator).item() < jitter else ()
    return TrainDraw(box, flipped, jitters, torch.rand((), generator=generator).item() < grayscale)


def train_batch(clips: list[torch.Tensor], draws: list[TrainDraw], size: int = 224, short_side: int = 256) -> torch.Tensor:
    """The recipe's training augmentation of clips (T, H, W, 3) of one length T with their draws: normalised
    (B, T, 3, size, size). Geometry per clip (the antialiased resizes, clips of one shape in one call),
    colour for the whole batch at once (the clip transforms were a third of a small model's epoch)."""
    resized: list[torch.Tensor] = [None] * len(clips)
    by_shape: dict[tuple, list[int]] = {}
    for i, clip in enumerate(clips):
        by_shape.setdefault(tuple(clip.shape), []).append(i)
    for indices in by_shape.values():
        group = resize_short_side(torch.cat([clips[i] for i in indices]), short_side).split(len(clips[indices[0]]))
        for i, clip in zip(indices, group):
            resized[i] = clip
    crops = []
    for clip, draw in zip(resized, draws):
        y0, x0, ch, cw = draw.box
        crop = _resize(clip[:, y0 : y0 + ch, x0 : x0 + cw], (size, size))
        crops.append(crop.flip(2) if draw.flip else crop)
    x = torch.stack(crops)  # (B, T, size, size, 3)
    planes = _apply_jitters(x.permute(0, 4, 1, 2, 3).contiguous().view(len(x), 3, -1), [draw.jitter for draw in draws])
    gray = torch.tensor([draw.gray for draw in draws])
    if gray.any():
        planes = torch.where(gray[:, None, None], _grey(planes).expand_as(planes), planes)
    mean, std = torch.tensor(MEAN)[:, None], torch.tensor(STD)[:, None]
    return ((planes - mean) / std).view(len(x), 3, *x.shape[1:4]).transpose(1, 2).contiguous()


def train_transform(
    clip: torch.Tensor, generator: torch.Generator, size: int = 224, short_side: int = 256, flip: float = 0.5,
    jitter: float = 0.8, grayscale: float = 0.2, crop_area: tuple[float, float] = (0.08, 1.0),
) -> torch.Tensor:
    """The recipe's training augmentation of one clip; returns normalised (T, 3, size, size)."""
    draw = draw_train(tuple(clip.shape[1:3]), generator, short_side, flip, jitter, grayscale, crop_area)
    return train_batch([clip], [draw], size, short_side)[0]


def eval_views(clip: torch.Tensor, size: int = 224, num_crops: int = 1, short_side: int = 256) -> list[torch.Tensor]:
    """1 crop: short side `short_side`, centre crop. 3 crops: short side `size`, three crops."""
    if num_crops == 1:
        return [normalize(center_crop(resize_short_side(clip, short_side), size))]
    if num_crops == 3:
        return [normalize(c) for c in three_crops(resize_short_side(clip, size), size)]
    raise ValueError(f"num_crops: expected 1 or 3, got {num_crops}")
