# One entry point for people and CI. `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EXTRAS ?= train,cpu,dev
RUN ?= runs/digits-mlp
REPO ?= models
MODEL ?= vae
DATA_DIR ?=
MNIST_EPOCHS ?= 10
PIP_ARGS ?=
NEED_DATA_DIR = @test -n "$(DATA_DIR)" || { echo "error: set DATA_DIR to the folder with the MNIST IDX files (docs/training.md says where to get them)"; exit 2; }
# The default MNIST model (docs/training.md): sub-pixel decoder, one-cycle learning rate.
MNIST_ARGS = --dataset mnist --data-dir $(DATA_DIR) --arch subpixel --latent-dim 32 \
  --hidden-dim 512 --channels 16 --decoder-layers 1,3 --lr 3e-3 --lr-schedule onecycle \
  --batch-size 128 --epochs $(MNIST_EPOCHS)

.PHONY: help install tools train train-mnist train-mnist-denoise export serve test lint proto clean

help:  ## list the targets and the variables they read
	@echo "targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 22 | sed 's/^/  /'
	@echo "variables (make TARGET NAME=value), with their values now:"
	@printf '  %-26s %s\n' "RUN=$(RUN)" "run folder that train writes and export reads"
	@printf '  %-26s %s\n' "REPO=$(REPO)" "model repository that export writes and serve reads"
	@printf '  %-26s %s\n' "MODEL=$(MODEL)" "model name inside the repository"
	@printf '  %-26s %s\n' "DATA_DIR=$(DATA_DIR)" "folder with the MNIST IDX files, for train-mnist"
	@printf '  %-26s %s\n' "MNIST_EPOCHS=$(MNIST_EPOCHS)" "epochs of train-mnist and train-mnist-denoise"
	@printf '  %-26s %s\n' "PYTHON=$(PYTHON)" "interpreter that creates .venv"
	@printf '  %-26s %s\n' "EXTRAS=$(EXTRAS)" "extras installed into .venv"
	@printf '  %-26s %s\n' "PIP_ARGS=$(PIP_ARGS)" "extra pip options, e.g. --extra-index-url for the CPU-only torch"

# A stamp is only trusted while .venv's python still runs: otherwise the install runs again.
ifneq ($(shell $(BIN)/python -c pass 2>/dev/null && echo ok),ok)
$(shell rm -f $(STAMP))
endif

# A .venv whose python cannot run pip (a venv module without ensurepip, an interrupted
# create, a removed base interpreter) is rebuilt, never reused. pip's output goes to
# $(VENV)/install.log; on failure its explanation is printed.
$(STAMP): pyproject.toml constraints.txt
	@if [ -e $(VENV) ] && ! $(BIN)/python -m pip --version >/dev/null 2>&1; then \
	  echo "$(VENV) is incomplete (its python cannot run pip): removing it and creating it again"; \
	  rm -rf $(VENV); \
	fi
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "error: $(PYTHON) not found; pass an interpreter of Python 3.11-3.13, e.g. make PYTHON=python3.12"; exit 1; }
	@if [ ! -e $(VENV) ]; then \
	  echo "creating $(VENV) with $$($(PYTHON) --version 2>&1)"; \
	  $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	    echo "error: '$(PYTHON) -m venv' failed. On Debian/Ubuntu install the venv module"; \
	    echo "       (apt-get install python3-venv, or python3.X-venv for your version), then run make again."; \
	    exit 1; }; \
	fi
	@echo "installing vae-serve[$(EXTRAS)] with the pins of constraints.txt (log: $(VENV)/install.log)"
	@$(BIN)/python -m pip install --progress-bar off --constraint constraints.txt $(PIP_ARGS) \
	    --editable '.[$(EXTRAS)]' > $(VENV)/install.log 2>&1 || { \
	  echo "error: pip could not install the project; its last lines:"; \
	  grep -v '^\(Requirement already\|Collecting\|Downloading\|Using cached\)' $(VENV)/install.log | tail -25; \
	  echo "full log: $(VENV)/install.log"; exit 1; }
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project with its pinned dependencies

train: $(STAMP)  ## train the digits model into RUN and write its report
	$(BIN)/vae-train --dataset digits --arch mlp --latent-dim 16 --hidden-dim 256 --beta 0.1 \
	  --epochs 150 --batch-size 32 --noise gaussian:0.2 --out $(RUN)
	@echo "report: $(RUN)/report.md"

train-mnist: $(STAMP)  ## train the default MNIST model from DATA_DIR into runs/mnist
	$(NEED_DATA_DIR)
	$(BIN)/vae-train $(MNIST_ARGS) --out runs/mnist
	@echo "report: runs/mnist/report.md"

train-mnist-denoise: $(STAMP)  ## the same model trained to denoise (Gaussian 0.3) into runs/mnist-denoise
	$(NEED_DATA_DIR)
	$(BIN)/vae-train $(MNIST_ARGS) --noise gaussian:0.3 --out runs/mnist-denoise
	@echo "report: runs/mnist-denoise/report.md"

export: $(STAMP)  ## publish RUN as the next version of REPO/MODEL
	$(BIN)/vae-export $(RUN) --repo $(REPO) --model $(MODEL)

serve: $(STAMP)  ## serve REPO/MODEL on 127.0.0.1:50051 (trains and exports digits first if empty)
	@if ! ls -d $(REPO)/$(MODEL)/[0-9]* >/dev/null 2>&1; then \
	  test -f $(RUN)/model.pt || $(MAKE) --no-print-directory train; \
	  $(MAKE) --no-print-directory export; \
	fi
	$(BIN)/vae-serve --model-repo $(REPO) --model-name $(MODEL)

proto: $(STAMP)  ## regenerate service/vae/v1 and service/inference from proto/ (a test fails when stale)
	$(BIN)/python -m service.proto_gen

lint: $(STAMP)  ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

tools:  ## install the deploy checkers (kubectl+kustomize, kubernetes-validate, checkov, hadolint) into .venv-tools
	PYTHON=$(PYTHON) deploy/tools/install.sh .venv-tools

test: lint tools  ## ruff, mypy and the default test suite
	$(BIN)/pytest -q

clean:  ## remove the virtual environment and caches (keeps runs/ and models/)
	rm -rf $(VENV) .venv-tools .mypy_cache .ruff_cache .pytest_cache
