# Two commands for a fresh machine:  make demo  |  make test
# Both create (once) and reuse a virtual environment in $(VENV) with torch==2.13.0: whichever build of
# it pip resolves here (the CPU wheel where one is at hand, the CUDA build on an ordinary Linux or GPU
# machine, which a GPU needs). On a CPU-only machine that would otherwise download the CUDA build, name
# the CPU wheels' index: make test TORCH_INDEX=<the CPU index URL of pytorch.org's install selector>.
VENV ?= .venv
TORCH_INDEX ?=
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.dvfl-installed

.PHONY: install demo test bench clean

$(STAMP): setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel ninja
	$(PIP) install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q --no-build-isolation -e ".[test,export,tensorboard]"
	# thop (the public get_flops.py's counter) for the drop-in test; --no-deps: it lists an unpinned torch
	$(PIP) install -q --no-deps thop==0.1.1.post2209072238
	@$(PY) -c "import torch; print('torch', torch.__version__, '(CUDA ' + torch.version.cuda + ' build)' if torch.version.cuda else '(CPU build)')"
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
