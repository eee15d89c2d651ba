# The two commands of the README: `make search` (set up + the default search) and
# `make test` (set up + the test suite). Both create .venv and install everything into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision only serve converters/ and the PyTorch baselines; these releases install
# from this project's CI machines' disk, elsewhere pip downloads them.
TORCH ?= torch==2.14.1 torchvision==0.29.1
CONFIG ?= cifar10_resnet
OUT ?= runs/cifar10_resnet
# The config names its data (TFDS cifar10) and weights (download cache); ../shared beside the
# checkout holds both, and then the search reads them from there. The paths stay relative, so
# the run folder's config.json is the same from a clone anywhere (a resumed run compares it).
SHARED ?= ../shared
SHARED_DATA := $(wildcard $(SHARED)/data/cifar10-jpeg)
SHARED_WEIGHTS := $(wildcard $(SHARED)/weights/cifar-resnet)
LOCAL := $(if $(SHARED_DATA),data.source=$(SHARED_DATA)) \
         $(if $(SHARED_WEIGHTS),"knowledge.weights_dirs=('$(SHARED_WEIGHTS)',)")

.PHONY: setup search test clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

search: setup
	$(BIN)/modulenet search --config $(CONFIG) --out $(OUT) $(if $(strip $(LOCAL)),--set $(LOCAL))

# Two workers (pytest-xdist): XLA compiles on one core, so two test processes keep both cores
# busy; `--dist loadgroup` runs the tests of one `xdist_group` mark on one worker, so a costly
# module fixture is built once; compiled programs persist in .jax_cache between runs (tests/conftest.py).
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

clean:
	rm -rf $(VENV) runs .pytest_cache .jax_cache
