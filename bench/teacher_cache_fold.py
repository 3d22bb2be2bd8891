"""How far the teacher cache's top-k fold (kd.cache_topk) moves the KD loss and its gradient.

    python bench/teacher_cache_fold.py

Teacher logits: Gaussian with the given spread plus one confident class (3 spreads above); student
logits: standard Gaussian; 256 rows. Prints the relative error of the KD loss and of its gradient to
the student logits (L2 over the batch), folded vs exact, in float64: the fold's own error (the fp16
rounding of the kept logits is far smaller).
"""
from __future__ import annotations

import torch

from dvflnet.engine.teacher_cache import compress, expand
from dvflnet.losses import DistillationLoss


def fold_errors(classes: int, topk: int, spread: float, temperature: float, rows: int = 256, seed: int = 0) -> tuple[float, float]:
    """(loss relative error, gradient relative error) of the fold at one setting."""
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(rows, classes, generator=generator, dtype=torch.float64) * spread
    teacher[torch.arange(rows), torch.randint(0, classes, (rows,), generator=generator)] += 3 * spread
    student = torch.randn(rows, classes, generator=generator, dtype=torch.float64)
    folded = expand(compress(teacher, topk), classes, temperature).double()
    loss = DistillationLoss(alpha=1.0, temperature=temperature, backend="reference")
    target = torch.zeros(rows, dtype=torch.long)
    results = []
    for logits in (teacher, folded):
        s = student.clone().requires_grad_()
        value = loss(s, logits, target)
        value.backward()
        results.append((value.detach(), s.grad))
    (exact, grad), (approx, approx_grad) = results
    return ((approx - exact).abs() / exact).item(), ((approx_grad - grad).norm() / grad.norm()).item()


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Prints one markdown table; no options.").parse_args()
    print("| classes | top-k | teacher spread | T | loss error | gradient error |")
    print("|---|---|---|---|---|---|")
    for classes, topk in ((400, 64), (1000, 256)):
        for spread in (2.0, 4.0):
            for temperature in (1.0, 5.0, 10.0):
                loss_error, grad_error = fold_errors(classes, topk, spread, temperature)
                print(f"| {classes} | {topk} | {spread:g} | {temperature:g} | {loss_error:.1%} | {grad_error:.1%} |")
