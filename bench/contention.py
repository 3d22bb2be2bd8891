"""Threads and contention, in one run: the demo teacher's training step and the nano's inference clip
at 1 thread, at all usable cores, and at the count dvfl chooses, alone and beside one busy process
(`python -c "while True: pass"`, what a shared CI runner or a container neighbour looks like).

    python bench/contention.py [--rounds 5] [--json bench/results/contention-cpu.json]

Cases are interleaved round by round with a pause between them (no runtime's spinning threads
steal the next case's cores); medians and ranges per case; the ratio that matters is each case's
speed beside the busy process over its speed alone (the issue's goal: >= 60% for training).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from nano_interleaved import cpu_model

PAUSE_S = 0.5  # between cases: OpenMP's spinning threads of the last case go to sleep first


def demo_teacher_step() -> tuple[callable, int]:
    """(one training step of the demo's teacher on a batch of 16 random clips, clips per step)."""
    from dvflnet.engine.builders import build_model
    from dvflnet.engine.optim import build_optimizer
    from dvflnet.experiments.demo import DEMO_CONFIG, load_demo_config, run_configs

    cfg = run_configs(load_demo_config(DEMO_CONFIG), "unused").teacher
    data, train = cfg.data, cfg.train
    model = build_model(cfg.model, data).train()
    optimizer = build_optimizer(model, 1e-4, train.weight_decay, train.momentum, train.optimizer, train.weight_decay_on)
    clips = torch.randn(train.batch_size, data.num_frames, 3, data.size, data.size)
    targets = torch.randint(0, data.num_classes, (train.batch_size,))

    def step() -> None:
        from dvfl_kernels import cpu_threads

        with cpu_threads.shared_core_guard(clips, training=True):  # as the training loop does
            F.cross_entropy(model(clips), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, train.batch_size


def nano_clip(dtype: torch.dtype) -> callable:
    from dvflnet.models import create_model

    model = create_model("vfl_net_nano", num_classes=400, backend="auto").eval()
    clip = torch.randn(1, 8, 3, 224, 224)

    def infer() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            model(clip)

    return infer


def timed(fn: callable, threads: int | None, seconds: float) -> float:
    """Calls per second of fn over about `seconds` (after one warm-up call): at a fixed count of
    `threads` (as a user's DVFL_THREADS: nothing adapts), or None: as dvfl runs it (all usable
    cores, one thread while the cores are shared)."""
    from dvfl_kernels import cpu_threads

    with (cpu_threads.pinned(threads) if threads else contextlib.nullcontext()):
        fn()
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn()
            calls += 1
        return calls / (time.perf_counter() - start)


def _label(threads: int | None) -> str:
    return "dvfl's choice" if threads is None else f"{threads} thread{'s' if threads > 1 else ''} fixed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="per case and round")
    parser.add_argument("--json", help="write the medians, ranges and machine facts here")
    args = parser.parse_args()
    import dvfl_kernels

    dvfl_kernels.apply_process_settings()
    cores = dvfl_kernels.usable_cores()
    step, clips_per_step = demo_teacher_step()
    chosen = dvfl_kernels.choose_training_threads(("bench demo teacher",), step)  # what a run of it would take
    workloads = {"demo teacher training (clips/s)": (step, clips_per_step),
                 "nano inference fp32 (clips/s)": (nano_clip(torch.float32), 1),
                 "nano inference bf16 (clips/s)": (nano_clip(torch.bfloat16), 1)}
    counts = sorted({1, cores}) + [None]  # None: as dvfl runs it
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for busy in (False, True):
            dvfl_kernels.cpu_threads.forget_contention()  # each phase as a process that never met the other
            neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                time.sleep(PAUSE_S)
                for name, (fn, per_call) in workloads.items():
                    for threads in counts:
                        case = f"{name} | {_label(threads)} | {'busy neighbour' if busy else 'alone'}"
                        results.setdefault(case, []).append(timed(fn, threads, args.seconds) * per_call)
                        time.sleep(PAUSE_S)
            finally:
                if neighbour is not None:
                    neighbour.kill()
                    neighbour.wait()
    table = {case: {"median": statistics.median(v), "min": min(v), "max": max(v)} for case, v in results.items()}
    print(f"{cpu_model()}; {cores} usable cores; training threads chosen: {chosen}; {args.rounds} rounds")
    for case, row in table.items():
        print(f"{case:<75} {row['median']:8.1f} ({row['min']:.1f}-{row['max']:.1f})")
    for name in workloads:
        for threads in counts:
            alone = table[f"{name} | {_label(threads)} | alone"]["median"]
            busy = table[f"{name} | {_label(threads)} | busy neighbour"]["median"]
            print(f"{name}, {_label(threads)}: beside a busy process {busy / alone:.0%} of alone")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "usable_cores": cores, "training_threads_chosen": chosen,
                       "torch": torch.__version__, "rounds": args.rounds, "cases": table}, f, indent=1)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
