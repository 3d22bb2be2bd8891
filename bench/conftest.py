"""Benchmarks: `pytest bench/ --benchmark-only` (CPU here; the same cases on a GPU when there is one).

Each case records device, versions, shape and peak memory in pytest-benchmark's extra_info, so
`--benchmark-json FILE` keeps everything needed to compare runs (see bench/results/).
"""
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # lets the Triton backend load; its cases skip on CPU
sys.path.insert(0, os.path.dirname(__file__))

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":  # the process settings every dvfl process makes at its first CPU forward, made now for all cases
    import dvfl_kernels

    dvfl_kernels.apply_process_settings()


def pytest_benchmark_update_machine_info(config, machine_info):
    from nano_interleaved import cpu_model

    machine_info["torch"] = torch.__version__
    machine_info["cpu_model"] = cpu_model()
    machine_info["device"] = torch.cuda.get_device_name() if DEVICE == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    try:
        import triton

        machine_info["triton"] = triton.__version__
    except ImportError:
        pass


@pytest.fixture
def device():
    return DEVICE
