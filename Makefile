# make demo: install if needed (into .venv), then run the whole pipeline offline.
# make test: install with the test tools if needed, then ruff and the tests; make test-slow: the slow tests.
PYTHON ?= python3
VENV ?= .venv
# PyTorch for the tests' transformers client; the CPU build is enough (README.md, "Tests").
TORCH ?= torch

.PHONY: demo test test-slow

demo: $(VENV)/.installed
	$(VENV)/bin/python -m gpt2_tf.cli.demo

test: $(VENV)/.installed-test
	. $(VENV)/bin/activate && ruff check . && python -m pytest

# pytest's status 5 means that no test is marked slow: nothing failed.
test-slow: $(VENV)/.installed-test
	. $(VENV)/bin/activate && { python -m pytest -m slow || [ $$? -eq 5 ]; }

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(VENV)/bin/python -m pip install --quiet $(TORCH)
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $@
