# Two commands on a fresh machine (see README):  make run   |   make test
# The virtual environment is made once; torch/torchvision are pinned to the builds this project is tested with.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

.PHONY: install run test report clean
install: $(BIN)/.installed

run: $(BIN)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES)

test: $(BIN)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

report: $(BIN)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) --report report.zip

clean:
	rm -rf results logs benchmarks .snakemake data report.zip data_manifests/*.csv
