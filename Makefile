# Two entry points (see README): `make demo` runs the main job, `make test` runs the tests.
# Both create the virtual environment first if it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The interop tests' torch, installed before the extras so that pip takes this release (where the machine keeps
# a CPU build of it, that one) instead of the newest: override with `make test TORCH=torch==X.Y`.
TORCH ?= torch==2.13.0
# The extra the tests install; `make test TEST_EXTRA=test-lean TORCH=` leaves out torch, TransformerLens and UMAP
# (their tests skip), as .ci/run does on a machine whose disk is too short for them.
TEST_EXTRA ?= test

.PHONY: setup setup-test demo test bench device-prep clean

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-$(TEST_EXTRA)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[runners]"
	touch $@

# (one marker per extra: a lean environment is not taken for the full one)
$(VENV)/.installed-test $(VENV)/.installed-test-lean: $(VENV)/.installed
	$(if $(TORCH),$(PY) -m pip install --quiet "$(TORCH)")
	$(PY) -m pip install --quiet -e ".[$(TEST_EXTRA)]"
	touch $@

demo: setup
	$(PY) -m experiments.sweep
	$(PY) -m experiments.per_token
	$(PY) -m experiments.analyze

# Two pytest workers, each taking whole test files (module fixtures built once): on 2 cores the suite takes
# ≈ 7 min instead of ≈ 11. `make test PYTEST_WORKERS=0` runs it in one process.
PYTEST_WORKERS ?= 2

test: setup-test
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

bench: setup-test
	$(PY) -m benchmarks.draw_cost
	$(PY) -m benchmarks.memory_vs_draws
	$(PY) -m benchmarks.error_bar_calibration
	$(PY) -m benchmarks.error_bars_on_demo
	$(PY) -m benchmarks.structure_calibration
	$(PY) -m benchmarks.additivity_calibration
	$(PY) -m benchmarks.totals_calibration
	$(PY) -m benchmarks.per_token_cost
	$(PY) -m benchmarks.restricted_gradients
	$(PY) -m benchmarks.scaling
	$(PY) -m benchmarks.paper_memory
	$(PY) -m benchmarks.devinterp_side_by_side

# What a lent accelerator's one call carries (benchmarks/device_session.py): the demo weights and devinterp's
# wheels for the H200 image's Python 3.12 (benchmarks/devinterp_wheels_h200.txt), in .whl/ (ignored by git),
# and the side by side's contexts from the demo's corpora (.whl/contexts: the machine has no corpora).
# Training is skipped when runs/demo/train is complete (and resumed when it is not).
WHEEL_PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64

device-prep: setup
	$(PY) -m experiments.train
	mkdir -p .whl
	grep -v -e '^#' -e stream-generator benchmarks/devinterp_wheels_h200.txt > .whl/requirements.txt
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  $(WHEEL_PLATFORMS) -d .whl -r .whl/requirements.txt
	$(PY) -m pip wheel --quiet --no-deps -w .whl $$(grep -v '^#' benchmarks/devinterp_wheels_h200.txt | grep stream-generator)
	ls .whl/*.whl | wc -l
	$(PY) -m benchmarks.devinterp_side_by_side --run_dir=runs/demo/train --write_contexts=.whl/contexts

# What the demo and the benchmarks write; never runs/ as a whole (converted checkpoints and long sweeps live there).
clean:
	rm -rf runs/demo runs/devinterp_side_by_side runs/accelerator_figures runs/precision_on_demo .pytest_cache
