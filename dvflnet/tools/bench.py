"""`dvflnet bench`: median inference time of one clip of a model variant on this machine, per
backend and precision (a quick check on a user's CPU; the benchmark suite proper is bench/)."""
from __future__ import annotations

import statistics
import time

import torch

from ..models import create_model


def time_inference(model_name: str, backends: list[str], dtypes: list[str], frames: int = 8, size: int = 224,
                   classes: int = 400, rounds: int = 7, warmup: int = 2, threads: int = 0) -> str:
    """A table of median / min milliseconds per (backend, dtype): fp32, bf16-autocast, bf16-weights."""
    if threads:
        torch.set_num_threads(threads)
    clip = torch.randn(1, frames, 3, size, size)
    rows = []
    for backend in backends:
        for dtype in dtypes:
            model = create_model(model_name, num_classes=classes, backend=backend).eval()
            x = clip
            if dtype == "bf16-weights":
                model, x = model.to(torch.bfloat16), clip.to(torch.bfloat16)
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16-autocast")
            times = []
            with torch.inference_mode(), autocast:
                for i in range(warmup + rounds):
                    start = time.perf_counter()
                    model(x)
                    if i >= warmup:
                        times.append(time.perf_counter() - start)
            rows.append((backend, dtype, statistics.median(times) * 1e3, min(times) * 1e3))
    lines = [f"{model_name}, one clip 1x{frames}x3x{size}x{size}, {torch.get_num_threads()} threads, "
             f"{rounds} rounds (median / min ms)"]
    lines += [f"  {backend:<10} {dtype:<14} {median:9.1f} {best:9.1f}" for backend, dtype, median, best in rows]
    return "\n".join(lines)
