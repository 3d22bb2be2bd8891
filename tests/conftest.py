import os
import sys

import torch

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors. It must be chosen
# before any kernel is defined, so before dvfl_kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
