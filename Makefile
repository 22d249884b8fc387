# The two commands of the README. Both create .venv on first use and reinstall when
# pyproject.toml changes.
VENV ?= .venv
PY := $(VENV)/bin/python
export RAY_AUTH_MODE ?= disabled

.PHONY: demo test bench lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/dplbench demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(VENV)/bin/dplbench bench model

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check dpl dplbench tests tools

clean:
	rm -rf $(VENV) .pytest_cache
