# labkit: two commands on a fresh machine.
#   make run   - create .venv (if needed), install labkit, run the main job: the full training notebook
#                (notebooks/04_train.ipynb on digits) with papermill into runs/<name>/, then print its summary
#   make test  - create .venv (if needed), install labkit + test tools, run the whole test suite
#                (pytest on tests/, and nbval on every notebook)
#   make lab   - create .venv (if needed) and open the notebooks in JupyterLab (http://127.0.0.1:8888/lab)
# Python: 3.12 preferred (jax 0.12); 3.11 works (jax 0.10.2). Override with `make PYTHON=/path/to/python3.x`.

PYTHON ?= $(shell for p in python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) \
            /usr/local/bin/python3.12 python3.11 python3; do \
            $$p -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: setup run demo test info clean chromium lab fashion-mnist

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "labkit needs Python >= 3.11 (3.12 preferred); set PYTHON=..."; exit 1; }
	@echo "labkit: creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version))"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,lab]'
	@touch $@

setup: $(STAMP)

run: $(STAMP) fashion-mnist
	$(VENV)/bin/labkit info
	$(VENV)/bin/labkit run

demo: $(STAMP)
	$(VENV)/bin/labkit demo

# JupyterLab on this machine only, opened at the notebooks (LAB_ARGS adds options, e.g. LAB_ARGS=--no-browser).
LAB_PORT ?= 8888
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --port $(LAB_PORT) --notebook-dir notebooks $(LAB_ARGS)

# The dashboard's browser tests drive Debian's Chromium through Playwright (never a downloaded browser).
CHROMIUM ?= /usr/bin/chromium
chromium:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "labkit: installing Debian's chromium for the dashboard browser tests (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	    || echo "labkit: apt-get install chromium failed: the dashboard browser tests will be skipped"; \
	else \
	  echo "labkit: $(CHROMIUM) is missing and this is not root with apt-get: the dashboard browser tests" \
	       "will be skipped (install it with: sudo apt-get install chromium)"; \
	fi

# Fashion-MNIST (the bundled `fashion_mnist` data set, notebook 06's experiments) comes from Debian's package:
# the four original IDX files under /usr/share/datasets/fashion-mnist (MIT licence). On Colab: keras.datasets.
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
fashion-mnist:
	@if [ -f "$(FASHION_MNIST)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "labkit: installing Debian's dataset-fashion-mnist for the fashion_mnist data set (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null \
	    || echo "labkit: apt-get install dataset-fashion-mnist failed: the fashion_mnist data set and its tests" \
	            "are unavailable"; \
	else \
	  echo "labkit: $(FASHION_MNIST) is missing and this is not root with apt-get: the fashion_mnist data set" \
	       "and its tests are unavailable (install it with: sudo apt-get install dataset-fashion-mnist)"; \
	fi

NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval-sanitize.cfg --nbval-cell-timeout 900

test: $(STAMP) chromium fashion-mnist
	$(VENV)/bin/python -m pytest tests notebooks $(NBVAL) --durations=25

info: $(STAMP)
	$(VENV)/bin/labkit info

clean:
	rm -rf $(VENV) runs .pytest_cache
