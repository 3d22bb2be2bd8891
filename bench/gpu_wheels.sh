#!/usr/bin/env bash
# Fill .whl/ with exactly the wheels that bench/run_gpu.sh needs and the GPU image lacks, for CPython
# 3.12 manylinux x86-64, with their own dependencies, at the versions installed here (what the project
# is tested with). Run it here, where the package registry is reachable; the GPU machine reaches none.
#
#   bash bench/gpu_wheels.sh          (WHEEL_DIR=... to fill another folder)
#
# What the run needs: bench/gpu_preflight.py's MODULES (beyond torch and triton, which the image has).
# What the image has: bench/gpu_image_packages.txt. It prints the wheels, their total size and the
# size of the tree that travels to the GPU machine (tracked plus untracked-not-ignored files plus the
# wheels), against the device tool's 64 MiB limit.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
wheels=${WHEEL_DIR:-.whl}
mkdir -p "$wheels"
grep -qx '.whl/' .gitignore || { echo "gpu_wheels.sh: .whl/ must be in .gitignore (it never belongs in a commit)" >&2; exit 1; }

"$py" - "$wheels" <<'PY'
import importlib.metadata as metadata
import re
import subprocess
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, "bench")
from gpu_preflight import MODULES  # noqa: E402

from packaging.markers import Marker  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402

folder = Path(sys.argv[1])
canon = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
image = {canon(line.strip()) for line in Path("bench/gpu_image_packages.txt").read_text().splitlines()
         if line.strip() and not line.startswith("#")}
# the GPU machine's interpreter, for the dependencies' environment markers
environment = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
               "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
               "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + ["--platform=manylinux2014_x86_64", "--platform=manylinux1_x86_64"]
todo = [canon(dist) for dist in MODULES.values()]
done: set[str] = set()
carried = []
while todo:
    dist = todo.pop()
    if dist in done or dist in image:
        continue
    done.add(dist)
    version = metadata.version(dist)  # what the project is tested with here
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version=3.12",
                    "--implementation=cp", *platforms, "-d", str(folder), f"{dist}=={version}"], check=True)
    wheel = next(w for w in folder.glob("*.whl") if canon(w.name.split("-")[0]) == dist)
    carried.append(wheel)
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        for line in archive.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:"):
                requirement = Requirement(line.split(":", 1)[1].strip())
                if requirement.marker is None or Marker(str(requirement.marker)).evaluate(environment):
                    todo.append(canon(requirement.name))
if carried:
    for wheel in carried:
        print(f"  {wheel.name}  {wheel.stat().st_size / 2**20:.1f} MiB")
else:
    print(f"  nothing to carry: the image has every package the GPU run imports ({', '.join(sorted(MODULES.values()))})")
PY

size_of() { du -cb "$@" 2>/dev/null | tail -n 1 | cut -f1; }
wheel_bytes=$(find "$wheels" -maxdepth 1 -name "*.whl" -printf "%s\n" | awk "{ s += \$1 } END { print s + 0 }")
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -n 1 | cut -f1)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "wheels in $wheels: $(mib "$wheel_bytes")"
echo "tree that travels (tracked + untracked-not-ignored files): $(mib "$tree_bytes"); with the wheels: $(mib $((tree_bytes + wheel_bytes))) of 64 MiB"
