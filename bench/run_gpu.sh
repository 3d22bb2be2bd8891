#!/usr/bin/env bash
# One offline command for a lent GPU machine (docs/gpu.md): build dvfl_kernels._C with CUDA for sm_90
# against the machine's own torch, validate every GPU op against float64, run the test suite's GPU
# share, time the three GPU goals, and keep everything in one folder of at most 8 files.
#
#   bash bench/run_gpu.sh [--dry-run] [OUT_DIR]
#
# OUT_DIR defaults to $OUT when set (the device tool's folder), else bench/results/gpu-<UTC stamp>/.
# It never reaches a package registry: it uses the machine's python3 and torch, and installs only the
# wheels carried in .whl/ (bench/gpu_wheels.sh fills it) with --no-index. --dry-run prints the plan and
# checks every prerequisite, creating nothing; a plain run without a CUDA device stops at the check,
# creating nothing. It stops at the first failing step, after keeping that step's output.
set -uo pipefail
caller=$PWD  # a relative OUT_DIR is the caller's, not the repository's
cd "$(dirname "$0")/.."
root=$PWD
export PYTHONDONTWRITEBYTECODE=1  # the checks and the dry run leave no __pycache__ behind

dry_run=0
out_arg=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "run_gpu.sh: unknown option '$arg' (expected --dry-run or an output folder)" >&2; exit 2 ;;
    *) [ -z "$out_arg" ] || { echo "run_gpu.sh: one output folder, got '$out_arg' and '$arg'" >&2; exit 2; }
       out_arg=$arg ;;
  esac
done

py=${PYTHON:-python3}
jobs=$(nproc 2>/dev/null || echo 4)
out=${out_arg:-${OUT:-$root/bench/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}}
case "$out" in /*) ;; *) out=$caller/$out ;; esac
site=${TMPDIR:-/tmp}/dvfl-gpu-site
# A hard stop for the whole run (the device tool ends a command at 10 minutes): each step's timeout is
# the smaller of 1.5x its budget and what is left of this.
deadline_s=${DVFL_GPU_DEADLINE_S:-540}
if ! [[ "$deadline_s" =~ ^[1-9][0-9]*$ ]]; then
  echo "run_gpu.sh: DVFL_GPU_DEADLINE_S: expected a positive number of seconds, got '$deadline_s'" >&2; exit 2
fi
if [ -e "$out" ] && [ ! -d "$out" ]; then
  echo "run_gpu.sh: OUT_DIR: $out is a file; expected a folder (new or existing)" >&2; exit 2
fi
if ! command -v "$py" >/dev/null; then
  echo "run_gpu.sh: MISSING python: PYTHON=$py is not a command here" >&2; exit 1
fi
# The steps' commands read these from the environment, quoted: a folder with a space or a ';' in its
# name stays one argument and never runs as a command.
export DVFL_GPU_PY=$py DVFL_GPU_OUT=$out DVFL_GPU_SITE=$site
xdist=""
if command -v "$py" >/dev/null && "$py" -c "import xdist" 2>/dev/null; then xdist="-n 8"; fi

# The benchmark cases that answer the three goals (bench/gpu_goals.py reads them), nothing else.
bench_cases=()
for dtype in fp32 bf16; do
  for impl in eager compiled triton cuda; do
    bench_cases+=("'bench/test_bench_focal.py::test_focal_op[fwd+bwd-$dtype-stage1-C96-spatial_context-$impl]'")
  done
done
for case in eager-reference eager-triton eager-cuda compiled-reference; do
  bench_cases+=("'bench/test_bench_focal.py::test_model[nano-train-step-$case]'")
done
for impl in eager compiled triton cuda; do
  bench_cases+=("'bench/test_bench_kd_loss.py::test_kd_ce_loss[fwd+bwd-B64-K400-$impl]'")
done

# name | budget in seconds | command. Budgets are estimates for a 16-core H100/H200 host (docs/gpu.md:
# how each was sized); their sum is the 8 minutes the run must fit in.
steps=(
  "wheels|10|if ls .whl/*.whl >/dev/null 2>&1; then \"\$DVFL_GPU_PY\" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target \"\$DVFL_GPU_SITE\" .whl/*.whl; else echo 'no wheels carried in .whl/'; fi"
  "build|90|FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=$jobs \"\$DVFL_GPU_PY\" setup.py -q build_ext --inplace"
  "validate|120|\"\$DVFL_GPU_PY\" bench/validate_gpu.py \"\$DVFL_GPU_OUT/validate.json\""
  "tests|90|DVFL_TRITON_AUTOTUNE=off \"\$DVFL_GPU_PY\" -m pytest -q -m gpu $xdist -p no:cacheprovider tests"
  "bench|150|\"\$DVFL_GPU_PY\" -m pytest -q -p no:cacheprovider --benchmark-only \"--benchmark-json=\$DVFL_GPU_OUT/bench.json\" ${bench_cases[*]}"
  "goals|20|\"\$DVFL_GPU_PY\" bench/gpu_goals.py \"\$DVFL_GPU_OUT/bench.json\" \"\$DVFL_GPU_OUT/validate.json\" \"\$DVFL_GPU_OUT/goals.json\""
)

print_plan() {
  local total=0 entry name budget command
  echo "plan (output folder: $out; hard stop after ${deadline_s} s):"
  for entry in "${steps[@]}"; do
    IFS='|' read -r name budget command <<<"$entry"
    total=$((total + budget))
    printf '  %-9s budget %4d s  %s\n' "$name" "$budget" "$command"
  done
  printf '  %-9s budget %4d s  (%d min %02d s)\n' total "$total" $((total / 60)) $((total % 60))
}

echo "run_gpu.sh: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), $jobs cores"
print_plan
echo "prerequisites:"
"$py" bench/gpu_preflight.py --wheels .whl
ready=$?
if [ "$dry_run" = 1 ]; then
  if [ "$ready" = 0 ]; then echo "dry run: ready; nothing was created"; exit 0; fi
  echo "dry run: NOT ready (see MISSING above); nothing was created"
  exit 1
fi
if [ "$ready" != 0 ]; then
  echo "run_gpu.sh: stopped before any work: a prerequisite is missing (above); nothing was created" >&2
  exit 1
fi

mkdir -p "$out"
summary=$out/summary.txt
{ echo "run_gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"; print_plan; "$py" bench/gpu_preflight.py --wheels .whl
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1; } > "$summary"
export PYTHONPATH="$site:$root${PYTHONPATH:+:$PYTHONPATH}"
start=$SECONDS
for entry in "${steps[@]}"; do
  IFS='|' read -r name budget command <<<"$entry"
  left=$((deadline_s - (SECONDS - start)))
  limit=$((budget * 3 / 2 < left ? budget * 3 / 2 : left))
  if [ "$limit" -le 0 ]; then
    echo "run_gpu.sh: stopped before '$name': the ${deadline_s} s deadline is spent" | tee -a "$summary" >&2
    exit 1
  fi
  echo "== $name (budget $budget s, stops at $limit s): $command"
  step_start=$SECONDS
  # the wheels' and goals' few lines go to the summary: the folder stays at 8 files
  case "$name" in wheels|goals) log=$summary; tee_flags=-a ;; *) log=$out/$name.log; tee_flags= ;; esac
  timeout --signal=INT --kill-after=10 "$limit" bash -c "$command" 2>&1 | tee $tee_flags "$log"
  status=${PIPESTATUS[0]}
  took=$((SECONDS - step_start))
  printf '%-9s %4d s (budget %d s) exit %d\n' "$name" "$took" "$budget" "$status" | tee -a "$summary"
  if [ "$status" != 0 ]; then
    [ "$status" = 124 ] && why="ran past its $limit s limit" || why="exited with status $status"
    echo "run_gpu.sh: step '$name' failed ($why); its output is in $log; later steps not run" | tee -a "$summary" >&2
    exit 1
  fi
done
echo "run_gpu.sh: done in $((SECONDS - start)) s; results in $out: $(ls "$out" | tr '\n' ' ')" | tee -a "$summary"
