"""bench/run_gpu.sh, the one offline command for a lent GPU machine, checked without a GPU: its dry run,
its stop without a CUDA device, that it never reaches a package registry, that what it runs imports
nothing the GPU image lacks, and that the goals it reports read the cases it times."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "run_gpu.sh"
sys.path.insert(0, str(ROOT / "bench"))


def _run(args, tmp_path, timeout=120, **env):
    environment = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path / "tmp"), **env}
    environment.pop("OUT", None)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout)


def _tree_state() -> str:
    # ignored folders collapse to one line (.venv/), so this stays fast
    return subprocess.run(["git", "status", "--porcelain", "--ignored=matching"], cwd=ROOT, capture_output=True, text=True).stdout


def _step_commands(output: str) -> dict[str, str]:
    steps = re.findall(r"^  (\w+)\s+budget\s+(\d+) s  (.*)$", output, re.M)
    return {name: command for name, _, command in steps}


def test_dry_run_prints_the_plan_and_checks_without_creating_anything(tmp_path):
    before = _tree_state()
    result = _run(["--dry-run"], tmp_path)
    assert result.returncode == (0 if torch.cuda.is_available() else 1), result.stderr  # "NOT ready" is a failure
    steps = _step_commands(result.stdout)
    assert list(steps) == ["wheels", "build", "validate", "tests", "bench", "goals", "total"]
    assert "TORCH_CUDA_ARCH_LIST=9.0" in steps["build"] and "build_ext --inplace" in steps["build"]
    assert "-m gpu" in steps["tests"] and "DVFL_TRITON_AUTOTUNE=off" in steps["tests"]
    assert re.search(r"total\s+budget\s+(\d+) s", result.stdout).group(1) == "480"  # the 8 minutes
    for prerequisite in ("torch:", "torch built with CUDA", "triton:", "nvcc", "CUDA device", "wheels carried"):
        assert prerequisite in result.stdout
    if not torch.cuda.is_available():
        assert "MISSING CUDA device" in result.stdout and "NOT ready" in result.stdout
    assert _tree_state() == before
    assert not any((tmp_path / "tmp").iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="the stop without a GPU is checked where there is none")
def test_a_plain_run_without_a_gpu_stops_fast_naming_it_and_creates_nothing(tmp_path):
    before = _tree_state()
    start = time.monotonic()
    result = _run([str(tmp_path / "out")], tmp_path)
    assert time.monotonic() - start < 30
    assert result.returncode == 1
    assert "MISSING CUDA device" in result.stdout and "nothing was created" in result.stderr
    assert not (tmp_path / "out").exists() and not any((tmp_path / "tmp").iterdir())
    assert _tree_state() == before


@pytest.mark.parametrize("args", [["--dry-rum"], ["a", "b"]], ids=["unknown-option", "two-folders"])
def test_bad_arguments_are_named(tmp_path, args):
    result = _run(args, tmp_path)
    assert result.returncode == 2 and "run_gpu.sh:" in result.stderr and args[-1] in result.stderr


@pytest.mark.parametrize("script", ["run_gpu.sh", "gpu_preflight.py", "gpu_goals.py", "validate_gpu.py"])
def test_the_gpu_run_never_reaches_a_registry(script):
    text = (ROOT / "bench" / script).read_text()
    for line in text.splitlines():
        if re.search(r"\bpip(3)?\b.*\binstall\b", line):
            assert "--no-index" in line, f"{script}: a pip install that could reach a registry: {line.strip()}"
    assert not re.search(r"\b(pip(3)?\s+download|venv|curl|wget|uv\s+pip|conda\s+install|apt-get)\b", text), script


def test_what_the_gpu_run_imports_is_on_the_gpu_image(tmp_path):
    """The project's dependencies that the GPU image lacks (fvcore, decord, av, openvino, thop) are
    made unimportable; the GPU share of the tests, the timed cases and the two scripts must still load."""
    image = {line.strip().lower() for line in (ROOT / "bench" / "gpu_image_packages.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    names = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in requirements} | {"thop"}
    blocked = sorted(name.replace("-", "_") for name in names - image)
    assert {"fvcore", "decord", "av", "openvino", "thop"} <= set(blocked)
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        f"BLOCKED = {set(blocked)!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError('not on the GPU image: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}:{ROOT / 'bench'}"}
    command = [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider"]
    tests = subprocess.run(command + ["-m", "gpu", "tests"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0 and re.search(r"\d+/\d+ tests collected", tests.stdout), tests.stdout[-3000:]
    bench = subprocess.run(command + _bench_cases(), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bench.returncode == 0, bench.stdout[-3000:]
    assert f"{len(_bench_cases())} tests collected" in bench.stdout, bench.stdout[-3000:]
    scripts = subprocess.run([sys.executable, "-c", "import fvcore"], env=env, capture_output=True, text=True)
    assert scripts.returncode != 0  # the block holds
    scripts = subprocess.run([sys.executable, "-c", "import validate_gpu, gpu_goals, gpu_preflight"], cwd=ROOT / "bench",
                             env=env, capture_output=True, text=True)
    assert scripts.returncode == 0, scripts.stderr


def _bench_cases() -> list[str]:
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env={**os.environ, "PYTHON": sys.executable},
                            capture_output=True, text=True, timeout=120)
    return re.findall(r"'(bench/[^']+)'", _step_commands(result.stdout)["bench"])


def test_the_goals_read_the_cases_the_run_times(tmp_path):
    """Every case gpu_goals.py looks up is one run_gpu.sh times, and the ratios come out of the medians."""
    import gpu_goals

    cases = {case.split("::")[1]: case for case in _bench_cases()}
    medians = {"eager": 8.0, "compiled": 3.0, "triton": 1.0, "cuda": 2.0, "eager-reference": 6.0,
               "compiled-reference": 2.4, "eager-triton": 2.0, "eager-cuda": 4.0}
    benchmarks = []
    for name in cases:
        impl = re.search(r"-(eager|compiled|triton|cuda|eager-reference|compiled-reference|eager-triton|eager-cuda)\]$", name)
        key = name.split("step-")[1][:-1] if "train-step" in name else impl.group(1)
        benchmarks.append({"name": name, "stats": {"median": medians[key]},
                           "extra_info": {"achieved_GBps": 1000.0, "peak_bytes": 100 if key == "eager-reference" else 50}})
    (tmp_path / "bench.json").write_text(json.dumps({"benchmarks": benchmarks}))
    (tmp_path / "validate.json").write_text(json.dumps({"device": "test", "copy_GBps": 4000.0}))
    assert gpu_goals.main(str(tmp_path / "bench.json"), str(tmp_path / "validate.json"), str(tmp_path / "goals.json")) == 0
    goals = {row["goal"]: row for row in json.loads((tmp_path / "goals.json").read_text())["goals"]}
    assert goals["spatial_context stage 1 fwd+bwd fp32 triton: x eager"]["value"] == 8.0
    assert goals["spatial_context stage 1 fwd+bwd bf16 cuda: x compiled"]["value"] == 1.5
    assert goals["spatial_context stage 1 fwd+bwd fp32 triton: share of copy bandwidth"]["value"] == 0.25
    assert goals["nano train step triton: x eager"]["value"] == 3.0 and goals["nano train step triton: x eager"]["met"]
    assert goals["nano train step cuda: x compiled reference"]["value"] == 0.6
    assert not goals["nano train step cuda: x compiled reference"]["met"]
    assert goals["nano train step cuda: peak memory / eager"]["value"] == 0.5
    assert goals["kd loss B64 K400 fwd+bwd triton: x eager"]["value"] == 8.0
    # every looked-up goal found its case: only the launch counts (profiled on a GPU) are missing here
    missing = [name for name, row in goals.items() if row["value"] is None]
    assert all("launches" in name for name in missing) and (missing or torch.cuda.is_available())


def test_the_wheel_script_fills_only_what_the_image_lacks_and_sizes_the_tree(tmp_path):
    environment = {**os.environ, "PYTHON": sys.executable, "WHEEL_DIR": str(tmp_path / "wheels")}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_wheels.sh")], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    carried = sorted(p.name for p in (tmp_path / "wheels").glob("*.whl"))
    if carried:
        for wheel in carried:
            assert wheel in result.stdout
    else:
        assert "nothing to carry" in result.stdout
    size = re.search(r"with the wheels: ([\d.]+) MiB of 64 MiB", result.stdout)
    assert size and float(size.group(1)) < 64


def test_a_hostile_output_folder_stays_one_argument_and_runs_nothing(tmp_path):
    """The steps read the folder from the environment, quoted: a space or a ';' in its name is data."""
    hostile = tmp_path / "out dir; touch PWNED"
    result = _run(["--dry-run", str(hostile)], tmp_path)
    assert f"output folder: {hostile}" in result.stdout
    steps = _step_commands(result.stdout)
    assert all(str(hostile) not in command for command in steps.values())
    printer = tmp_path / "print-args"
    printer.write_text("#!/bin/sh\nfor a in \"$@\"; do echo \"ARG<$a>\"; done\n")
    printer.chmod(0o755)
    for step in ("validate", "goals"):
        ran = subprocess.run(["bash", "-c", steps[step]], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "DVFL_GPU_PY": str(printer), "DVFL_GPU_OUT": str(hostile)})
        assert f"ARG<{hostile}/validate.json>" in ran.stdout, ran.stdout + ran.stderr
    assert not (tmp_path / "PWNED").exists() and not (ROOT / "PWNED").exists()


def test_a_relative_output_folder_is_the_callers(tmp_path):
    caller = tmp_path / "here"
    caller.mkdir()
    environment = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    environment.pop("OUT", None)
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run", "results"], cwd=caller, env=environment,
                            capture_output=True, text=True, timeout=120)
    assert f"output folder: {caller / 'results'}" in result.stdout


@pytest.mark.parametrize("case", ["out-is-a-file", "deadline-not-a-number", "python-missing"])
def test_bad_settings_are_named_before_anything_runs(tmp_path, case):
    before = _tree_state()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    if case == "out-is-a-file":
        result, message, code = _run([str(blocker)], tmp_path), f"OUT_DIR: {blocker} is a file", 2
    elif case == "deadline-not-a-number":
        result = _run([str(tmp_path / "out")], tmp_path, DVFL_GPU_DEADLINE_S="abc")
        message, code = "DVFL_GPU_DEADLINE_S: expected a positive number of seconds, got 'abc'", 2
    else:
        result = _run([str(tmp_path / "out")], tmp_path, PYTHON="/nonexistent")
        message, code = "MISSING python: PYTHON=/nonexistent is not a command here", 1
    assert result.returncode == code and message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists() and _tree_state() == before
