"""What the bf16 dense-row copy costs the C++ temporal kernel on CPU (`python bench/bf16_row_copy.py`).

torch 2.13's bf16 CPU GEMM reads past C within a row's leading dimension for some C, so
`csrc/focal/focal.cpp` `as_rows` copies bf16 rows dense when z is a slice of a wider projection (as
in the model). This times the forward at the nano's four stage shapes (8 frames, 224x224 input) with
z as such a slice and with z already dense; the difference is the copy and its fresh allocation.
"""
import time

import torch

from dvfl_kernels import ops

FOCAL_LEVEL = 2
NANO_STAGES = ((56, 96), (28, 192), (14, 384), (7, 768))  # (H = W, C)


def median_ms(fn, rounds: int = 30) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[rounds // 2] * 1e3


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; temporal_context forward, bf16, backend cpu, ms")
    print("| H = W | C | z a slice (copied dense) | z dense | difference |")
    print("|---|---|---|---|---|")
    for size, channels in NANO_STAGES:
        # z and the gates side by side in one projection output, as the model's f_t produces them
        wide = torch.randn(8, size, size, channels + FOCAL_LEVEL + 1, dtype=torch.bfloat16)
        z_slice, gates = wide[..., :channels], wide[..., channels:]
        z_dense = z_slice.contiguous()
        weights = [torch.randn(channels, channels, 2 * level + 3, dtype=torch.bfloat16) * 0.05 for level in range(1, FOCAL_LEVEL + 1)]
        with torch.inference_mode():
            dense = median_ms(lambda: ops.temporal_context(z_dense, gates, weights, 8, False, backend="cpu"))
            sliced = median_ms(lambda: ops.temporal_context(z_slice, gates, weights, 8, False, backend="cpu"))
            dense = min(dense, median_ms(lambda: ops.temporal_context(z_dense, gates, weights, 8, False, backend="cpu")))
        print(f"| {size} | {channels} | {sliced:.2f} | {dense:.2f} | {sliced - dense:+.2f} |")


if __name__ == "__main__":
    main()
