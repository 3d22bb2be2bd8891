# Two commands for a fresh machine:  make demo  |  make test
# Both create (once) and reuse a virtual environment in $(VENV) with torch==2.13.0 (the CPU wheel
# here; never an unpinned torch, which would download a multi-GB CUDA build).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.dvfl-installed

.PHONY: install demo test bench clean

$(STAMP): setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel ninja
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-build-isolation -e ".[test,export]"
	# thop (the public get_flops.py's counter) for the drop-in test; --no-deps: it lists an unpinned torch
	$(PIP) install -q --no-deps thop==0.1.1.post2209072238
	@if $(PIP) list 2>/dev/null | grep -i nvidia; then echo "error: CUDA packages were pulled into $(VENV)"; exit 1; fi
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dvflnet demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m pytest bench/ --benchmark-only

clean:
	rm -rf build *.egg-info dvfl_kernels/_C*.so
