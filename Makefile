# `make demo` and `make test` are all a fresh machine needs: each creates/updates .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sinq-ao-installed

.PHONY: demo test env clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# CPU machines: pin the local CPU build of torch; keep any torch that is already importable (e.g. CUDA).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,gguf]"
	touch $@

demo: $(STAMP)
	$(PY) -m sinq_ao.demo

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
