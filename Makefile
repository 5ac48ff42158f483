# Two commands for students: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test unit notebooks notebooks-other-cpu notebooks-colab store-notebooks lab bench figures browser-deps clean test-oldest

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[notebooks,test]'
	touch $(STAMP)

install: $(STAMP)

# Builds the Shapes data, trains a model briefly, writes sample grids and prints where they are.
demo: $(STAMP)
	$(PY) -m t2i_helpers demo

# Unit tests, and every notebook in smoke mode checked three ways (docs/notebooks.md): in this
# checkout, as on another CPU, and as on Colab (installed package, no checkout). Two at a time, one
# torch thread each, every log printed whole when its check ends (tools/run_checks.py). Each starts
# from empty data/run folders in /tmp, so leftovers of `make demo` change nothing.
test: $(STAMP)
	$(PY) tools/run_checks.py --jobs 2 unit notebooks-colab notebooks notebooks-other-cpu

unit: $(STAMP)
	$(PY) -m pytest tests -q -p no:cacheprovider

notebooks: $(STAMP)
	$(PY) tools/check_notebooks.py here

notebooks-other-cpu: $(STAMP)
	$(PY) tools/check_notebooks.py other-cpu

notebooks-colab: $(STAMP)
	$(PY) tools/check_notebooks.py colab

# Re-execute every notebook in place (smoke mode, or T2I_TIER=cpu): what the stored outputs come from.
# The stored outputs: 00-02 from smoke mode, 03-08 from the cpu tier (its shipped checkpoints).
store-notebooks: $(STAMP)
	$(PY) tools/check_notebooks.py store 00 01 02
	T2I_TIER=cpu $(PY) tools/check_notebooks.py store 03 04 05 06 07 08

# Every figure (PNG + PDF) and table (Markdown + LaTeX) the notebooks make, with figures/INDEX.md
# (docs/figures.md). The cpu tier uses the shipped checkpoints.
figures: $(STAMP)
	$(PY) -m t2i_helpers figures --tier cpu --out figures

# Debian's Chromium and its driver, for the browser test of notebook 07 (tests/test_browser.py skips
# without them, except under CI=true). Needs root or sudo.
browser-deps:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq chromium chromium-driver >/dev/null; }

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
