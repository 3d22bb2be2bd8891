#!/usr/bin/env bash
# One command for a GPU machine: build with CUDA kernels, validate the GPU focal kernels (Triton and CUDA C++) at the
# real stage shapes against float64, run the whole test suite (every backend, Triton compiled for
# real), then every benchmark, and write the raw results under bench/results/.
#   bash bench/run_gpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results}"
mkdir -p "$out"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
python3 -m venv .venv-gpu
py=.venv-gpu/bin/python
$py -m pip install -q --upgrade pip setuptools wheel ninja
# the machine's CUDA torch if present, else the pinned one
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
  && $py -m pip install -q "torch==$(python3 -c 'import torch; print(torch.__version__.split("+")[0])')" \
  || $py -m pip install -q torch==2.13.0
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="9.0" $py -m pip install -q --no-build-isolation -e ".[test]"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu-$stamp.txt" || true
$py -c "import dvfl_kernels as k; print({op: k.available_backends(op) for op in ('kd_ce_loss', 'spatial_context', 'temporal_context', 'modulate')})" | tee -a "$out/gpu-$stamp.txt"
set -o pipefail
# validate first (real stage shapes vs float64, poisoned memory), then test, then time
$py bench/validate_gpu.py "$out/validate-gpu-$stamp.json" 2>&1 | tee "$out/validate-gpu-$stamp.log"
$py -m pytest -q tests 2>&1 | tee "$out/tests-gpu-$stamp.log"
$py -m pytest bench/ --benchmark-only -q --benchmark-json="$out/bench-gpu-$stamp.json" 2>&1 | tee "$out/bench-gpu-$stamp.log"
