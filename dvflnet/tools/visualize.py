"""What the model attends to: the spatial and temporal modulators over the frames (the Video-FocalNets
paper's figures), as a PNG grid and an animated GIF.

    from dvflnet.tools.predict import Predictor
    from dvflnet.tools.visualize import visualize
    files = visualize(Predictor.from_checkpoint("best.pt"), "clip.mp4", "out/")

For each chosen layer (default: the last block of every stage) the map is the channel mean of
|h(A_s)| (spatial) and |h_t(A_t)| (temporal) at every position of every frame, upsampled to the
frame and scaled to [0, 1] per layer and kind over the whole clip (so frames compare).
"""
from __future__ import annotations

import io
import os

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import save_figure, write_bytes
from ..data.dataset import test_views
from ..data.transforms import MEAN, STD
from ..models import capture_modulators


def default_layers(model: torch.nn.Module) -> list[str]:
    """The last block's modulation of every stage."""
    return [f"layers.{i}.blocks.{len(layer.blocks) - 1}.modulation" for i, layer in enumerate(model.layers)]


def modulator_maps(predictor, path: str, layers: list[str] | None = None) -> tuple[np.ndarray, dict, dict]:
    """(frames uint8 (T, H, W, 3), {layer: {"spatial", "temporal"}: maps (T, H, W) in [0, 1]}, top-1)
    for the centre view of the video."""
    model = predictor.model
    layers = layers or default_layers(model)
    known = [n for n, _ in model.named_modules() if n.endswith("modulation")]
    unknown = [n for n in layers if n not in known]
    if unknown:
        raise ValueError(f"layers: no focal modulation named {unknown}; known: {', '.join(known)}")
    clip = test_views(path, predictor.num_frames, predictor.frame_interval, 1, 1, predictor.size, predictor.short_side)
    with torch.inference_mode(), capture_modulators(model) as mods:
        probs = model(clip.to(predictor.device)).float().softmax(-1)[0].cpu()
    frames = (clip[0].permute(0, 2, 3, 1) * torch.tensor(STD) + torch.tensor(MEAN)).clamp(0, 255).to(torch.uint8)
    size = frames.shape[1:3]
    maps = {}
    for name in layers:
        maps[name] = {}
        for kind in ("spatial", "temporal"):
            magnitude = mods[name][kind].float().abs().mean(-1)  # (T', h, w)
            # a tubelet stem folds T / T' frames into each map: each map stands for all of them
            magnitude = magnitude.repeat_interleave(len(frames) // magnitude.shape[0], dim=0)
            up = F.interpolate(magnitude[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
            up = (up - up.min()) / (up.max() - up.min()).clamp_min(1e-12)
            maps[name][kind] = up.cpu().numpy()
    label = int(probs.argmax())
    return frames.numpy(), maps, {"label": label, "name": predictor.name_of(label), "prob": float(probs[label])}


def _overlay(frame: np.ndarray, heat: np.ndarray, colormap) -> np.ndarray:
    colored = colormap(heat)[..., :3] * 255.0
    return (0.5 * frame + 0.5 * colored).astype(np.uint8)


def visualize(predictor, path: str, out_dir: str, layers: list[str] | None = None, gif_ms: int = 250) -> dict:
    """Write <out_dir>/<video name>_modulators.png (rows: the frames, then per layer its spatial and its
    temporal maps; columns: frames) and <video name>_modulators.gif (one frame per video frame: the
    frame and every layer's spatial and temporal overlays side by side). Returns the paths and top-1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    frames, maps, top = modulator_maps(predictor, path, layers)
    colormap = plt.get_cmap("inferno")
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(path))[0]
    title = f"{os.path.basename(path)}: {top['name']} ({top['prob'] * 100:.1f}%)"
    rows = [("frames", frames)] + [(f"{name.removesuffix('.modulation')}\n{kind}",
                                    np.stack([_overlay(f, m, colormap) for f, m in zip(frames, maps[name][kind])]))
                                   for name in maps for kind in ("spatial", "temporal")]
    count = len(frames)
    figure, axes = plt.subplots(len(rows), count, figsize=(1.6 * count, 1.6 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(count):
            axes[r][c].imshow(images[c])
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
        axes[r][0].set_ylabel(label, fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.subplots_adjust(left=0.08, right=0.99, bottom=0.01, top=1 - 0.35 / len(rows), wspace=0.05, hspace=0.05)
    png = os.path.join(out_dir, f"{stem}_modulators.png")
    save_figure(figure, png)
    plt.close(figure)

    strips = [np.concatenate([images[t] for _, images in rows], axis=1) for t in range(count)]
    gif = os.path.join(out_dir, f"{stem}_modulators.gif")
    pictures = [Image.fromarray(strip) for strip in strips]
    animation = io.BytesIO()
    pictures[0].save(animation, format="GIF", save_all=True, append_images=pictures[1:], duration=gif_ms, loop=0)
    write_bytes(animation.getvalue(), gif)
    return {"png": png, "gif": gif, "layers": list(maps), "frames": count, **top}
