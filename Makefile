# labkit: two commands on a fresh machine.
#   make run   - create .venv (if needed), install labkit, run the main job
#   make test  - create .venv (if needed), install labkit + test tools, run the whole test suite
# Python: 3.12 preferred (jax 0.12); 3.11 works (jax 0.10.2). Override with `make PYTHON=/path/to/python3.x`.

PYTHON ?= $(shell for p in python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) \
            /usr/local/bin/python3.12 python3.11 python3; do \
            $$p -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: setup run test info clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "labkit needs Python >= 3.11 (3.12 preferred); set PYTHON=..."; exit 1; }
	@echo "labkit: creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version))"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/labkit info
	$(VENV)/bin/labkit demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

info: $(STAMP)
	$(VENV)/bin/labkit info

clean:
	rm -rf $(VENV) runs .pytest_cache
