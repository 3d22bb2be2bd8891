"""``dvflnet quantize``: an int8 checkpoint of a trained model, calibrated on clips of a CSV.

    dvflnet quantize --checkpoint runs/ucf101_nano_kd/best.pt --calib train.csv --clips 64 -o nano-int8.pt
    dvflnet predict --checkpoint nano-int8.pt clip.mp4

The checkpoint keeps the float weights, the run's config and an "int8" section (the calibration
ranges, the variant's shape): ``model_from_checkpoint`` / ``Predictor.from_checkpoint`` rebuild the
int8 model from it (the weights quantize the same way every time).
"""
from __future__ import annotations

import os
import time

import torch

from ..atomic import save_torch
from ..data.dataset import VideoCSVDataset
from ..models import Int8Model, calibrate, read_checkpoint
from ..models.int8 import DEFAULT_FLOAT_PARTS, PARTS, select_parts
from ..models.weights import extract_state_dict

# Calibration clips by default: enough for stable per-tensor ranges on the demo's students and the
# nano (the NNCF comparison used 8; a few hundred at most is the usual advice).
DEFAULT_CLIPS = 64


def calibration_batches(csv: str, root: str, data: dict, clips: int, batch_size: int = 4) -> list:
    """Lazy batches (B, T, 3, H, W) of min(`clips`, videos) videos spread evenly over `csv` (so a CSV
    sorted by class gives every class), each its centre clip and crop, as evaluation reads them:
    deterministic. A video that cannot be read raises VideoReadError naming it."""
    dataset = VideoCSVDataset(root, csv, data["num_frames"], data["frame_interval"], "test", size=data["size"],
                              short_side=data["test_short_side"], num_classes=data["num_classes"])
    count = min(clips, len(dataset))
    if count == 0:
        raise ValueError(f"--calib {csv}: lists no videos")
    indices = [i * len(dataset) // count for i in range(count)]
    chunks = [indices[start: start + batch_size] for start in range(0, count, batch_size)]
    return [_Batch(dataset, chunk) for chunk in chunks]


class _Batch:
    """One calibration batch, decoded when iterated (so only one batch is in memory at a time)."""

    def __init__(self, dataset: VideoCSVDataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def load(self) -> torch.Tensor:
        return torch.cat([self.dataset[i][0] for i in self.indices])


def quantize_checkpoint(checkpoint: str, calib: str, output: str, root: str | None = None, clips: int = DEFAULT_CLIPS,
                        config: str | None = None, float_parts=DEFAULT_FLOAT_PARTS) -> dict:
    """Calibrate the model of `checkpoint` on `clips` videos of `calib` and write the int8 checkpoint to
    `output`, `float_parts` (``PARTS``) kept in float. Returns {"output", "clips", "gemms",
    "temporal_taps", "seconds"}."""
    from .predict import model_from_checkpoint

    if isinstance(clips, bool) or not isinstance(clips, int) or clips < 1:
        raise ValueError(f"--clips: expected an integer >= 1, got {clips!r}")
    if os.path.abspath(output) == os.path.abspath(checkpoint):
        raise ValueError(f"-o {output}: is the source checkpoint; write the int8 checkpoint elsewhere")
    int8_parts = [p for p in PARTS if p not in set(float_parts)]
    select_parts({"gemms": {}, "temporal_taps": {}}, float_parts)  # unknown part names fail before any work
    start = time.perf_counter()
    model, data, _ = model_from_checkpoint(checkpoint, config)
    if isinstance(model, Int8Model):
        raise ValueError(f"--checkpoint {checkpoint}: is already an int8 checkpoint; give the float one")
    root = data["root"] if root is None else root
    batches = calibration_batches(calib, root, data, clips)
    ranges = select_parts(calibrate(model, (batch.load() for batch in batches), clips), int8_parts)
    int8 = Int8Model(model, ranges)
    obj = read_checkpoint(checkpoint)
    _, saved = extract_state_dict(obj)
    used = sum(len(batch.indices) for batch in batches)
    payload = {"model": model.state_dict(), "int8": dict(int8.int8_state(), calibration={"csv": calib, "clips": used})}
    if saved is not None:
        payload["config"] = saved
    save_torch(payload, output)
    return {"output": output, "clips": used,
            "gemms": len(ranges["gemms"]), "temporal_taps": len(ranges["temporal_taps"]),
            "seconds": time.perf_counter() - start}
