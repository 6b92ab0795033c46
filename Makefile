# Set-up and entry points. `make demo` and `make test` work on a fresh machine (Python 3.10+).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo-out

.PHONY: setup demo test test-fast bench scatter clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch torchvision
	$(BIN)/pip install -q -c constraints.txt -e '.[test,video,tensorboard,clip]'
	touch $@

demo: setup
	$(BIN)/hoitool demo --out $(DEMO_OUT)

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# torch-scatter only ships as source (about 6 minutes to compile on 2 cores); only the benchmark uses it.
scatter: setup
	FORCE_ONLY_CPU=1 $(BIN)/pip install -q --no-build-isolation -c constraints.txt torch-scatter

bench: setup
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/train.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
