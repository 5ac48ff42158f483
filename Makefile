# Two commands for students: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test unit notebooks lab bench clean test-oldest

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[notebooks,test]'
	touch $(STAMP)

install: $(STAMP)

# Builds the Shapes data, trains a model briefly, writes sample grids and prints where they are.
demo: $(STAMP)
	$(PY) -m t2i_helpers demo

# Unit tests, then every notebook under nbval (smoke mode: tiny models, CPU, about a minute each).
test: unit notebooks

unit: $(STAMP)
	$(PY) -m pytest tests -q

notebooks: $(STAMP)
	T2I_SMOKE=1 MPLBACKEND=Agg $(PY) -m pytest --nbval --nbval-current-env notebooks -q -p no:cacheprovider

# The oldest versions pyproject.toml allows (its lower bounds, pinned in constraints-oldest.txt), in a
# venv of their own, with the oldest Python it allows: the unit tests. Not part of `make test` or CI
# (a second install of several GB); run it when a lower bound, or code that needs a newer API, changes.
OLDEST_PYTHON ?= python3.10
OLDEST ?= .venv-oldest
test-oldest:
	test -x $(OLDEST)/bin/python || $(OLDEST_PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install -q -c constraints-oldest.txt -e '.[test]' ipywidgets
	$(OLDEST)/bin/python -m pytest tests -q -p no:cacheprovider

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks

bench: $(STAMP)
	$(PY) -m t2i_helpers bench data

clean:
	rm -rf runs figures data/cache data/shapes*
