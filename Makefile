# make run: set up if needed, then the main job on the embedded default. make test: the test suite.
# make rehearse: both paper GPU configs run end to end on this CPU (--rehearse, about 9 minutes).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedsafe-setup
CONFIG ?= configs/quickstart.yaml

.PHONY: setup run test rehearse clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints-cpu.txt scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

run: setup
	$(PY) launch.py --config $(CONFIG)

test: setup
	$(PY) -m pytest -m "not rehearsal"

rehearse: setup
	$(PY) -m pytest -m rehearsal

clean:
	rm -rf $(VENV) runs .pytest_cache
