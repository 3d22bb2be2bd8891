"""Clip transforms on tensors (no torchvision). A clip is uint8 or float (T, H, W, 3) RGB in 0-255;
every random choice is made once per clip, so all frames get the same crop, flip and colours.

Train: short side 256, random resized crop (area 0.08-1, aspect 3/4-4/3) to 224, horizontal flip,
colour jitter with probability 0.8 (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, in random
order), grayscale with probability 0.2, normalisation. Test: short side then centre crop, or three
crops (left / centre / right, or top / centre / bottom for portrait frames).
"""
from __future__ import annotations

import math

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
    x = clip.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1)


def random_resized_crop(
    clip: torch.Tensor, size: int, generator: torch.Generator, area=(0.08, 1.0), aspect=(3 / 4, 4 / 3)
) -> torch.Tensor:
    """Crop a random box of `area` x the frame and aspect ratio in `aspect` (log-uniform), resize to size."""
    _, h, w, _ = clip.shape
    for _ in range(10):
        target = (area[0] + (area[1] - area[0]) * torch.rand((), generator=generator).item()) * h * w
        log_ratio = math.log(aspect[0]) + (math.log(aspect[1]) - math.log(aspect[0])) * torch.rand((), generator=generator).item()
        ratio = math.exp(log_ratio)
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            y0 = int(torch.randint(0, h - ch + 1, (), generator=generator))
            x0 = int(torch.randint(0, w - cw + 1, (), generator=generator))
            return _resize(clip[:, y0 : y0 + ch, x0 : x0 + cw], (size, size))
    side = min(h, w)  # fallback: the central square
    return _resize(center_crop(clip, side), (size, size))


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


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (x @ _LUMA.to(x.dtype)).unsqueeze(-1)


def _rotate_hue(x: torch.Tensor, turns: float) -> torch.Tensor:
    """Rotate the chroma plane (YIQ) by `turns` of a full circle; luma is unchanged."""
    c, s = math.cos(2 * math.pi * turns), math.sin(2 * math.pi * turns)
    rotate = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)
    return x @ (_FROM_YIQ @ rotate @ _TO_YIQ).T.to(x.dtype)


def color_jitter(
    clip: torch.Tensor, generator: torch.Generator, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1
) -> torch.Tensor:
    """Brightness, contrast, saturation and hue changes in a random order (float 0-255 in and out).
    Contrast and saturation blend towards the mean grey / the pixel's grey (one lerp each): the
    clip transforms are a third of a small model's training epoch on CPU."""

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand((), generator=generator).item()

    ops = [
        lambda x: x * uniform(1 - brightness, 1 + brightness),
        lambda x: torch.lerp(_gray(x).mean().expand_as(x), x, uniform(1 - contrast, 1 + contrast)),
        lambda x: torch.lerp(_gray(x).expand_as(x), x, uniform(1 - saturation, 1 + saturation)),
        lambda x: _rotate_hue(x, uniform(-hue, hue)),
    ]
    for i in torch.randperm(len(ops), generator=generator).tolist():
        clip = ops[i](clip).clamp_(0, 255)
    return clip


def normalize(clip: torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) 0-255 -> float (T, 3, H, W) normalised with the recipe's mean / std."""
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    return ((clip.float() - mean) / std).permute(0, 3, 1, 2).contiguous()


def train_transform(
    clip: torch.Tensor, generator: torch.Generator, size: int = 224, short_side: int = 256, flip: float = 0.5,
    jitter: float = 0.8, grayscale: float = 0.2, crop_area: tuple[float, float] = (0.08, 1.0),
) -> torch.Tensor:
    """The recipe's training augmentation; returns normalised (T, 3, size, size)."""
    x = random_resized_crop(resize_short_side(clip, short_side), size, generator, area=crop_area)
    if torch.rand((), generator=generator).item() < flip:
        x = x.flip(2)
    if torch.rand((), generator=generator).item() < jitter:
        x = color_jitter(x, generator)
    if torch.rand((), generator=generator).item() < grayscale:
        x = _gray(x).expand_as(x)
    return normalize(x)


def eval_views(clip: torch.Tensor, size: int = 224, num_crops: int = 1, short_side: int = 256) -> list[torch.Tensor]:
    """1 crop: short side `short_side`, centre crop. 3 crops: short side `size`, three crops."""
    if num_crops == 1:
        return [normalize(center_crop(resize_short_side(clip, short_side), size))]
    if num_crops == 3:
        return [normalize(c) for c in three_crops(resize_short_side(clip, size), size)]
    raise ValueError(f"num_crops: expected 1 or 3, got {num_crops}")
