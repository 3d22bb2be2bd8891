"""Every CUDA source compiles for Hopper (sm_90) and Ampere (sm_80, the A100), so a broken .cu cannot
land unnoticed on machines without a GPU. The .cu files include no torch headers: each compiles in
seconds."""
import shutil
import subprocess
from pathlib import Path

import pytest

CUDA_SOURCES = sorted((Path(__file__).resolve().parents[2] / "csrc").rglob("*.cu"))
NVCC = shutil.which("nvcc") or ("/usr/local/bin/nvcc" if Path("/usr/local/bin/nvcc").exists() else None)


def test_there_are_cuda_sources():
    assert CUDA_SOURCES, "csrc/ has no .cu files"


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles(source, arch, tmp_path):
    result = subprocess.run(
        [NVCC, f"-arch={arch}", "-O3", "-std=c++17", "-Werror", "all-warnings", "-c", str(source), "-o", str(tmp_path / "out.o")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
