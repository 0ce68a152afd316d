# make run: set up if needed, then the main job on the embedded default. make test: the test suite.
# make test-fast: the tier without a Ray cluster (pytest -m "not integration", about 2 minutes).
# make rehearse: both paper GPU configs run end to end on this CPU (--rehearse, about 9 minutes).
# make check-install: what pip resolves today for the GPU extras, on Python 3.10 and 3.11 (about 2 minutes).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedsafe-setup
CONFIG ?= configs/quickstart.yaml

.PHONY: setup run test test-fast check-install rehearse clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints-cpu.txt scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

run: setup
	$(PY) launch.py --config $(CONFIG)

test: setup
	$(PY) -m pytest -m "not rehearsal and not registry"

test-fast: setup
	$(PY) -m pytest -m "not integration and not rehearsal"

check-install: setup
	$(PY) -m pytest -m registry

rehearse: setup
	$(PY) -m pytest -m rehearsal

clean:
	rm -rf $(VENV) runs .pytest_cache
