"""What bench/run_gpu.sh needs from the machine, checked without creating anything.

Prints one line per prerequisite, `ok` or `MISSING` with what it found, and exits 1 when anything
needed is missing. Packages that the image lacks but that travel as wheels in `.whl/` count as
present (run_gpu.sh installs them first).

    python3 bench/gpu_preflight.py [--wheels .whl]
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

# The torch / Triton range the project is tested on: torch 2.13 + Triton 3.9 here (CPU), torch 2.11 +
# Triton 3.6 on the GPU image (docs/gpu.md: the compatibility audit).
TORCH_RANGE = ((2, 11), (2, 13))
TRITON_RANGE = ((3, 6), (3, 9))
# Modules the GPU run imports beyond torch and triton (tests -m gpu, bench/test_bench_focal.py and
# test_bench_kd_loss.py, validate_gpu.py, gpu_goals.py), with their distribution names.
MODULES = {"numpy": "numpy", "yaml": "pyyaml", "tqdm": "tqdm", "pytest": "pytest",
           "pytest_benchmark": "pytest-benchmark", "hypothesis": "hypothesis", "setuptools": "setuptools"}


def _version(text: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", text).groups()
    return int(major), int(minor)


def _in_range(version: str, bounds) -> bool:
    return bounds[0] <= _version(version) <= bounds[1]


def _wheel_names(folder: Path) -> set[str]:
    names = set()
    for wheel in folder.glob("*.whl"):
        names.add(wheel.name.split("-")[0].lower().replace("_", "-"))
    return names


def checks(wheels: Path) -> list[tuple[str, bool, str]]:
    rows = [("python3", sys.version_info >= (3, 10), sys.version.split()[0])]
    carried = _wheel_names(wheels) if wheels.is_dir() else set()
    rows.append(("wheels carried in " + str(wheels), True, ", ".join(sorted(carried)) or "none"))
    try:
        import torch
    except ImportError as error:
        return rows + [("torch", False, f"not importable ({error})")]
    low, high = (".".join(map(str, v)) for v in TORCH_RANGE)
    rows.append(("torch", _in_range(torch.__version__, TORCH_RANGE), f"{torch.__version__} (supported {low}-{high})"))
    rows.append(("torch built with CUDA", torch.version.cuda is not None, f"CUDA {torch.version.cuda}"))
    try:
        import triton

        low, high = (".".join(map(str, v)) for v in TRITON_RANGE)
        rows.append(("triton", _in_range(triton.__version__, TRITON_RANGE), f"{triton.__version__} (supported {low}-{high})"))
    except ImportError as error:
        rows.append(("triton", False, f"not importable ({error})"))
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = shutil.which("nvcc") or (str(Path(CUDA_HOME) / "bin" / "nvcc") if CUDA_HOME else None)
    if nvcc and Path(nvcc).exists():
        release = re.search(r"release ([\d.]+)", subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout)
        rows.append(("nvcc", True, f"{nvcc} ({release.group(1) if release else 'version unknown'})"))
    else:
        rows.append(("nvcc", False, "not on PATH and no CUDA_HOME"))
    rows.append(("ninja (parallel build)", shutil.which("ninja") is not None or importlib.util.find_spec("ninja") is not None,
                 shutil.which("ninja") or "python module"))
    for module, dist in MODULES.items():
        found = importlib.util.find_spec(module) is not None
        rows.append((f"python package {dist}", found or dist in carried,
                     "installed" if found else ("in the wheels" if dist in carried else "not installed, no wheel carried")))
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        major, minor = torch.cuda.get_device_capability()
        rows.append(("CUDA device", True, f"{name} (sm_{major}{minor}, {torch.cuda.device_count()} visible)"))
    else:
        rows.append(("CUDA device", False, "torch sees no CUDA device (no GPU, or no driver)"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=Path(".whl"))
    args = parser.parse_args()
    rows = checks(args.wheels)
    for what, ok, detail in rows:
        print(f"  {'ok     ' if ok else 'MISSING'} {what}: {detail}")
    missing = [what for what, ok, _ in rows if not ok]
    if missing:
        print(f"  missing: {', '.join(missing)}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
