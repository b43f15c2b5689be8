# Two entry points for a fresh machine:
#   make demo   install, then show what hasten gives here on the embedded digits model: AB-Cache on one device,
#               CHORDS on every device under torchrun, round speedups labelled as what K devices would give
#   make test   install, then run the tests (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
REPORT ?= report

.PHONY: demo test test-timing install clean

$(BIN)/hasten: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[bench,serve,test]"
	touch $@

install: $(BIN)/hasten

demo: install
	$(BIN)/hasten demo --out $(REPORT)

test: install
	$(BIN)/python -m pytest -q

# wall-clock checks of hasten tune's predictor (opt-in: timing on a shared machine is not a correctness test)
test-timing: install
	$(BIN)/python -m pytest -q -m timing tests/test_tune.py

clean:
	rm -rf $(VENV) $(REPORT) build src/*.egg-info
