# spikebridge: two set-up commands.
#   make demo   creates the environments if missing, then runs the demo pipeline
#   make test   creates the environments if missing, then runs the whole test suite
#   make setup  creates the environments and nothing else
#
# .venv       Python 3.11 (python3): torch (CPU build), nir, onnx, onnxruntime, ...
# .venv-lava  Python 3.10: lava-nc 0.10.0 (Lava runs only there, in a worker process), built by
#             `spikebridge setup-lava --venv .venv-lava` (a pip install runs the same command
#             without --venv; docs/lava.md)

PY ?= python3
VENV := .venv
LAVA_VENV := .venv-lava
# The CPU build of torch. On this machine kind pip finds it on disk; elsewhere
# pass e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu".
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.spikebridge-stamp
LAVA_STAMP := $(LAVA_VENV)/.spikebridge-stamp
LAVA_REQ := hardware/lava/requirements.txt
PYTEST_ARGS ?=

.PHONY: setup demo test datasets clean-env

setup: $(STAMP) $(LAVA_STAMP) datasets

$(STAMP): pyproject.toml
	@echo "[setup] main environment $(VENV) ($$($(PY) --version))"
	@test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	@$(VENV)/bin/python -c "import torch" 2>/dev/null || $(VENV)/bin/pip install -q $(TORCH_SPEC)
	@$(VENV)/bin/pip install -q -e '.[test]'
	@touch $@

# The same command a pip install uses (`spikebridge setup-lava`), pointed at .venv-lava,
# which the Lava backend looks for in a source checkout.
$(LAVA_STAMP): $(LAVA_REQ) | $(STAMP)
	@echo "[setup] Lava environment $(LAVA_VENV)"
	@$(VENV)/bin/python -m spikebridge setup-lava --venv $(LAVA_VENV) --force >/dev/null
	@touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist where apt is usable as root;
# elsewhere the loader downloads it on first use.
datasets:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	   echo "[setup] installing Debian package dataset-fashion-mnist"; \
	   (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	     || echo "[setup] warning: could not install dataset-fashion-mnist (digits still works)"; \
	 fi

demo: setup
	$(VENV)/bin/spikebridge demo --out runs/demo

test: setup
	$(VENV)/bin/python -m pytest -q -rs $(PYTEST_ARGS)

clean-env:
	rm -rf $(VENV) $(LAVA_VENV)
