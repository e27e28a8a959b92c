# Two entry points (see README): `make demo` runs the main job, `make test` runs the tests.
# Both create the virtual environment first if it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: setup
	$(PY) -m experiments.sweep
	$(PY) -m experiments.per_token
	$(PY) -m experiments.analyze

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m benchmarks.draw_cost
	$(PY) -m benchmarks.memory_vs_draws
	$(PY) -m benchmarks.error_bar_calibration
	$(PY) -m benchmarks.per_token_cost

clean:
	rm -rf runs .pytest_cache
