"""The three GPU goals as ratios, from one bench/run_gpu.sh run (reported, never asserted).

Reads the run's pytest-benchmark JSON (medians) and validate_gpu.py's JSON (the copy bandwidth), and
counts the kernel launches of one fused KD loss call with the profiler. Prints a table and writes a
JSON file; a goal whose cases did not run is reported as missing.

    python bench/gpu_goals.py OUT/bench.json OUT/validate.json OUT/goals.json

Goals (issue 30):
- spatial_context fwd+bwd at stage 1: >= 4x eager, >= 1.5x torch.compile, >= 60% of copy bandwidth;
- nano training step: >= 1.5x eager, >= 1.2x compiled, peak memory <= 0.6x eager;
- KD loss (B=64, K=400, fwd+bwd): >= 3x eager, >= 1.5x compiled, one launch.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

FUSED = ("triton", "cuda")


def _medians(bench: dict) -> dict[str, dict]:
    return {case["name"]: {"median": case["stats"]["median"], **case["extra_info"]} for case in bench.get("benchmarks", [])}


def _ratio(slow: dict | None, fast: dict | None) -> float | None:
    return None if slow is None or fast is None else slow["median"] / fast["median"]


def _goal(name: str, value: float | None, target: float, higher_is_better: bool = True) -> dict:
    met = None if value is None else (value >= target if higher_is_better else value <= target)
    return {"goal": name, "value": value, "target": (">=" if higher_is_better else "<=") + f" {target:g}", "met": met}


def spatial_goals(cases: dict, copy_gbps: float | None) -> list[dict]:
    rows = []
    for dtype in ("fp32", "bf16"):
        case = lambda impl: cases.get(f"test_focal_op[fwd+bwd-{dtype}-stage1-C96-spatial_context-{impl}]")  # noqa: E731
        for impl in FUSED:
            fast = case(impl)
            rows.append(_goal(f"spatial_context stage 1 fwd+bwd {dtype} {impl}: x eager", _ratio(case("eager"), fast), 4.0))
            rows.append(_goal(f"spatial_context stage 1 fwd+bwd {dtype} {impl}: x compiled", _ratio(case("compiled"), fast), 1.5))
            share = None if fast is None or not copy_gbps else fast["achieved_GBps"] / copy_gbps
            rows.append(_goal(f"spatial_context stage 1 fwd+bwd {dtype} {impl}: share of copy bandwidth", share, 0.6))
    return rows


def training_goals(cases: dict) -> list[dict]:
    case = lambda mode, backend: cases.get(f"test_model[nano-train-step-{mode}-{backend}]")  # noqa: E731
    eager, compiled = case("eager", "reference"), case("compiled", "reference")
    rows = []
    for impl in FUSED:
        fast = case("eager", impl)
        rows.append(_goal(f"nano train step {impl}: x eager", _ratio(eager, fast), 1.5))
        rows.append(_goal(f"nano train step {impl}: x compiled reference", _ratio(compiled, fast), 1.2))
        memory = None if fast is None or eager is None else fast["peak_bytes"] / eager["peak_bytes"]
        rows.append(_goal(f"nano train step {impl}: peak memory / eager", memory, 0.6, higher_is_better=False))
    return rows


def kd_launches() -> dict[str, int]:
    """CUDA kernels launched by one forward of each fused KD backend (B=64, K=400, integer targets)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import dvfl_kernels

    if not torch.cuda.is_available():
        return {}
    student = torch.randn(64, 400, device="cuda")
    teacher = torch.randn(64, 400, device="cuda")
    target = torch.randint(0, 400, (64,), device="cuda")
    launches = {}
    for backend in FUSED:
        if backend not in dvfl_kernels.available_backends("kd_ce_loss"):
            continue
        dvfl_kernels.kd_ce_loss(student, teacher, target, 0.3, 10.0, backend=backend)  # JIT / warm-up
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            dvfl_kernels.kd_ce_loss(student, teacher, target, 0.3, 10.0, backend=backend)
            torch.cuda.synchronize()
        launches[backend] = sum(1 for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA)
    return launches


def kd_goals(cases: dict, launches: dict[str, int]) -> list[dict]:
    case = lambda impl: cases.get(f"test_kd_ce_loss[fwd+bwd-B64-K400-{impl}]")  # noqa: E731
    rows = []
    for impl in FUSED:
        rows.append(_goal(f"kd loss B64 K400 fwd+bwd {impl}: x eager", _ratio(case("eager"), case(impl)), 3.0))
        rows.append(_goal(f"kd loss B64 K400 fwd+bwd {impl}: x compiled", _ratio(case("compiled"), case(impl)), 1.5))
        rows.append(_goal(f"kd loss {impl}: kernel launches per forward", launches.get(impl), 1, higher_is_better=False))
    return rows


def main(bench_path: str, validate_path: str, out_path: str) -> int:
    cases = _medians(json.loads(Path(bench_path).read_text()))
    validate = json.loads(Path(validate_path).read_text()) if Path(validate_path).is_file() else {}
    rows = spatial_goals(cases, validate.get("copy_GBps")) + training_goals(cases) + kd_goals(cases, kd_launches())
    for row in rows:
        value = "missing" if row["value"] is None else f"{row['value']:.2f}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[row["met"]]
        print(f"{row['goal']:<62} {value:>8}  (goal {row['target']})  {verdict}")
    Path(out_path).write_text(json.dumps({"device": validate.get("device"), "copy_GBps": validate.get("copy_GBps"),
                                          "goals": rows}, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
