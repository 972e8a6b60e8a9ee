# Quick start: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DSAC_SOURCES := $(wildcard dsacstar/*.cpp dsacstar/*.h dsacstar/*.hpp) dsacstar/setup.py

.PHONY: venv test test-fast demo clean benchmark bench-reconstruction

venv: $(VENV)/.deps $(VENV)/.dsacstar

$(VENV)/.deps: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, alone: it comes from the local CPU wheel; anything else asking for it is then satisfied.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	touch $@

$(VENV)/.dsacstar: $(VENV)/.deps $(DSAC_SOURCES)
	$(PIP) install -q --no-build-isolation ./dsacstar
	touch $@

# Two workers, one test file each at a time (module fixtures are built once); one OpenMP thread per worker, so
# that the two do not fight over two cores (2 cores: 14 min against 19 serially). TEST_WORKERS=N for N workers.
TEST_WORKERS ?= 2
test: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

# The unit tests without the slow ones (training, rendering, end-to-end runs): at most 2 minutes.
test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

demo: venv
	$(PY) scripts/run_demo.py

benchmark: venv
	$(PY) benchmarks/bench_ransac.py

# ACE0 against COLMAP (pycolmap, optional) on DATA=folder with images/ and poses/: make bench-reconstruction DATA=...
bench-reconstruction: venv
	@test -n "$(DATA)" || { echo "usage: make bench-reconstruction DATA=folder [BENCH_ARGS='--colmap sequential']"; exit 2; }
	$(PIP) install -q -r requirements-bench.txt
	$(PY) benchmarks/bench_reconstruction.py $(DATA) --profile $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dsacstar/build dsacstar/*.egg-info
