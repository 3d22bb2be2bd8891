import os
import sys

import torch

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors. It must be chosen
# before any kernel is defined, so before dvfl_kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The CPU engine's measured choices are not read from or written to the user's cache: each test
# process measures (tests/kernels/test_probe.py covers the file).
os.environ["DVFL_PROBE_CACHE"] = "off"

sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# A fixed thread count, as a user's DVFL_THREADS: bit-exactness tests (a resumed run equals the straight
# one) must not depend on whether the machine was busy when a step ran (the one-thread switch of
# dvfl_kernels.cpu_threads.shared_core_guard) or on a thread probe's near-tie. The tests of the
# switching and the probing unset it themselves (tests/kernels/test_cpu_threads.py, the demo's).
os.environ.setdefault("DVFL_THREADS", str(torch.get_num_threads()))


import pytest  # noqa: E402

from dvfl_kernels.backends import REGISTRY  # noqa: E402  (after TRITON_INTERPRET is chosen)

_GPU_BACKENDS = {name for name, backend in REGISTRY.items() if backend.gpu}


def pytest_collection_modifyitems(items):
    """Mark every case parametrised on the CUDA or Triton backend (or a CUDA device) `gpu`: on a GPU
    machine they run there, and `pytest -m gpu` is the GPU share of the suite (bench/run_gpu.sh).
    Without a GPU the Triton ones still run, interpreted, and the CUDA ones skip."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if any(isinstance(v, str) and v.split(":")[0] in _GPU_BACKENDS for v in params.values()):
            item.add_marker(pytest.mark.gpu)


@pytest.fixture
def golden_modulation():
    """The public code's SpatioTemporalFocalModulation golden fixture: (layer, fixture dict), a fresh
    layer for each test; each call of the layer names its backend (``layer(x, backend=...)``)."""
    from helpers import GOLDEN_DIR

    from dvflnet.models import SpatioTemporalFocalModulation

    fixture = torch.load(GOLDEN_DIR / "focal_modulation_layer.pt", weights_only=True)
    cfg = fixture["config"]
    layer = SpatioTemporalFocalModulation(
        cfg["dim"], cfg["focal_window"], cfg["focal_level"], cfg["focal_factor"],
        use_postln_in_modulation=cfg["use_postln_in_modulation"], normalize_modulator=cfg["normalize_modulator"],
        num_frames=cfg["num_frames"],
    )
    layer.load_state_dict(fixture["state_dict"], strict=True)
    return layer, fixture
