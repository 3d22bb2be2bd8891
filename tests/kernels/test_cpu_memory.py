"""dvfl_kernels.keep_freed_memory (dvfl_kernels/cpu_memory.py): freed activations stay mapped, so a
model's steady-state calls stop faulting their pages in again."""
import os
import subprocess
import sys

import pytest

import dvfl_kernels

STEADY_STATE_FAULTS = """
import resource, sys, torch
import dvfl_kernels
torch.set_num_threads(1)
from dvflnet.models import create_model
model = create_model("vfl_net_nano", num_classes=10).eval()
clip = torch.randn(1, 8, 3, 224, 224)
with torch.inference_mode():
    model(clip); model(clip)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(clip); model(clip)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) // 2)
"""


def _faults(mode: str) -> int:
    """Minor page faults per steady-state nano clip in a fresh process: "keep" as every dvfl process
    runs (the setting made at the first forward, nothing called), "default" with it turned off."""
    env = {**os.environ, "DVFL_KEEP_FREED_MEMORY": "1" if mode == "keep" else "0"}
    done = subprocess.run([sys.executable, "-c", STEADY_STATE_FAULTS], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_steady_state_calls_fault_far_fewer_pages_in():
    default, kept = _faults("default"), _faults("keep")
    assert kept < 0.6 * default, (kept, default)  # measured here: about 11.8k against 30.6k per nano clip


def test_it_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("DVFL_KEEP_FREED_MEMORY", "0")
    assert dvfl_kernels.keep_freed_memory() == {}
