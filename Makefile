# make demo: install if needed (into .venv), then run the whole pipeline offline.
PYTHON ?= python3
VENV ?= .venv

.PHONY: demo test

demo: $(VENV)/.installed
	$(VENV)/bin/python -m gpt2_tf.demo

test: $(VENV)/.installed-test
	. $(VENV)/bin/activate && ruff check . && python -m pytest

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $@
