# Two commands on a fresh machine with Python 3.11:  make reproduce   and   make test
PYTHON ?= python3.11
VENV   ?= .venv
PROFILE ?= quick
DEVICE ?= cpu
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install reproduce test bench lab clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# torch first, pinned, so pip takes the wheels on local disk instead of downloading a newer CUDA build
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e ".[offline]"
	touch $(STAMP)

install: $(STAMP)

reproduce: $(STAMP)
	$(BIN)/tbpr reproduce --profile $(PROFILE) --device $(DEVICE)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/tbpr bench all

# JupyterLab from the project's environment (LAB_ARGS="--port 8899 --no-browser" etc.; root needs --allow-root)
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(LAB_ARGS)

clean:
	rm -rf $(VENV) .tbpr_cache
