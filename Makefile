# Every target sets itself up (virtual environment, dependencies, data) on a fresh machine.
PY := .venv/bin/python

.PHONY: setup test lint train-lenet clean

setup:
	./scripts/setup.sh

# Tests spread over the CPUs by pytest-xdist, one test file (or group of files that share
# costly state: conftest.py's SHARED_GROUPS) per worker at a time, the slow groups first (a
# group's fixtures are built once); plain `.venv/bin/python -m pytest` runs them in one process.
test: setup
	$(PY) -m ruff check jaxcnn torch_ref parity_tests tests
	$(PY) -m pytest -n auto --dist loadfile --no-loadscope-reorder

lint: setup
	$(PY) -m ruff check jaxcnn torch_ref parity_tests tests

train-lenet: setup
	.venv/bin/jaxcnn train --preset lenet

clean:
	rm -rf .venv .pytest_cache .ruff_cache *.egg-info
