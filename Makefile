# dopamine_tff: `make demo` and `make test` are all a new user needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python

.PHONY: env demo test test-e2e test-all lint format clean

# (Re)creates the environment only when it is missing or a requirements file
# changed since the last install.
$(STAMP): requirements.txt requirements-nodeps.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "dopamine_tff needs Python 3.11 (TFF 0.87 supports < 3.12)"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.run_experiment --setting=fscdp --dataset=synthetic \
	  --num_examples=3000 --image_size=32 --num_hospitals=10 --rounds=400 \
	  --sampling_prob=0.05 --noise_multiplier=0.8 --l2_norm_clip=1.0 \
	  --learning_rate=0.1 --eval_every=50 --output_dir=runs/demo --overwrite

# The fast suite: unit and in-process tests (a small run of every setting
# included); the tests that start binaries or workers are marked e2e.
test: $(STAMP)
	$(PY) -m pytest -q tests

# The end-to-end tests (binaries, workers, faults, resume), without the slow ones.
test-e2e: $(STAMP)
	$(PY) -m pytest -q -m "e2e and not slow" tests

# Everything, including the slow paper-scale tests.
test-all: $(STAMP)
	$(PY) -m pytest -q -m "" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check dopamine_tff experiments tests
	$(VENV)/bin/ruff format --check dopamine_tff experiments tests

format: $(STAMP)
	$(VENV)/bin/ruff format dopamine_tff experiments tests
	$(VENV)/bin/ruff check --fix dopamine_tff experiments tests

clean:
	rm -rf $(VENV) runs .pytest_cache
